"""Felix: programs this host's dataplane (routes, iptables, ipsets, tunnels) from etcd.

A map: where does X happen?

Start-up and wiring.  `__main__` reads the bootstrap config (env + file,
`config.Config.bootstrap`), sets up logging and runs the loop until a signal
(exit 0) or an exit code.  `wiring.build_felix` builds every part and hands
each its collaborators: the datastore client and syncer, the ConfigStore, the
UpdateRouter, the status board and its read-only view, the health and metrics
servers, and factories for what needs the datastore's config first (the
calculators, the Dataplane, the etcd status reporters, the interface monitor).

The loop.  `daemon.Felix` is one queue and one consumer: syncer batches,
interface events, refresh and retry timers, resolved names.  Its state is a
`status.FelixState` (WAIT_FOR_READY -> PROGRAMMING -> IN_SYNC / FAILED ->
STOPPING).  At the first in-sync it resolves the config, builds the
calculators and the Dataplane, programs everything once and only then removes
stale objects.  `policy_apply.ApplyPolicy` decides what a failed apply means
(backoff, retry, exit 1 after MAX_APPLY_FAILURES); a non-live config change
exits EXIT_CONFIG_CHANGED (`config_store.ConfigStore.reload`).

Input.  The syncer parses with `parse.parse_key_value`: plain workload
endpoint values go straight to Felix's `Endpoint` (`calc.model.endpoint_from_json`),
everything else through libcalico's models.  `router.UpdateRouter` takes each
syncer update once, with the key the syncer parsed: config keys to the ConfigStore (this host's and the global
layer; `config.py` types and sources every parameter), overlay/NAT kinds to
those calculators, the rest to the core calculator with its create revision.
`addons.OverlayNatSettings` turns the Config into the overlay and NAT configs,
resolving host names (MetadataAddr, etcd endpoints) off the loop.

Calculation (pure, no I/O).  `calc.calculator.Calculator` turns endpoints,
profiles, tiers and host endpoints into filter chains, ipsets and routes
(`calc.policy`, `calc.labels`, `calc.hostendpoints`, `calc.rules` render rules;
`calc.model` parses endpoints), and ranks endpoints that claim the same
address or interface by create revision.  `calc.overlay` computes VXLAN/IPIP
state, `calc.nat` the nat table (1:1 NAT, NAT-outgoing, metadata DNAT),
`calc.nodes` every node's own addresses (which no workload may claim).
Their output is plain data from `desired.py` (DesiredState, OverlayState,
NatState), and every chain and ipset name comes from `names.py`: the
calculators and the writers both import those two, never each other.

Dataplane.  `dataplane_facade.Dataplane` owns every writer and their order
(ipsets -> filter tables -> ipset deletes -> routes -> conntrack deletes of
released addresses, then nat tables and the overlay devices); the daemon
applies nothing else.  `driver.DataplaneDriver`
diffs the core desired state into the filter writers.  The writers live in
`dataplane/`: each keeps the `dataplane.writer.Writer` protocol (model calls,
then `apply`/`refresh`/`cleanup_stale`, `stats`) — `iptables` (one table of one
family, atomic restore, drift read-back), `ipsets`, `routes` (+ `rtnl`, raw
netlink batches), `overlay` (vxlan.calico / tunl0), `sysctl`, `conntrack`
(deletes the flows of addresses a local endpoint gave up), `interfaces`
(the netlink monitor), `backend` (legacy or nft), `cmd` (the one door to child
processes, netns-aware).  `hostaddrs` reads this host's addresses.

Reporting.  `status.FelixStatus` is the read-only view that `health` (the
/liveness and /readiness endpoints: `health.felix_readiness`) and `metrics`
(Prometheus felix_* series) read; `status.StatusReporter` and
`EndpointStatusReporter` write Felix's and each endpoint's status to etcd.
"""
