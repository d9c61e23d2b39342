"""calico-confd: renders BIRD configs from etcd and reloads BIRD through its control socket."""
