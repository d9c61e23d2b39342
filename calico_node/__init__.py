"""calico/node runtime: the container entrypoint.

`calico-node` prepares the host (datastore defaults, host registration, pools,
tunnel addresses, IP forwarding) and then becomes supervisord, which runs
Felix, confd and BIRD with per-service rotated logs.  `calico-node -ready` /
`-live` answer the container health checks.
"""
