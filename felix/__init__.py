"""Felix: programs this host's dataplane (routes, iptables, ipsets) from etcd."""
