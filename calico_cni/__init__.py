"""The CNI plugins `calico` and `calico-ipam`: how container runtimes (podman, kubelet) reach the node.

A runtime execs a plugin once per container and command, with the command
and container in `CNI_*` environment variables and the network config on
stdin; the plugin answers with one JSON document on stdout.  Start-up cost is
therefore paid per container: modules here import only the standard library
at load time, and libcalico (etcd client, models) only once a command needs
the datastore.

Map:
- `spec`: the CNI protocol itself (versions, result shapes per version, error
  objects, the environment), with no Calico in it.
- `config`: the network config keys (the real calico-cni plugin's names), each
  refused with a message naming the key.
- `ipam`: the `calico-ipam` plugin, also called in-process by `calico` (one
  exec instead of two per container).
- `plugin`: the `calico` plugin (ADD, DEL, CHECK, VERSION, STATUS, GC); the
  wiring itself is `libcalico.workload_attach`, shared with calicoctl and the
  libnetwork driver.
- `install`: copy the executables and a default conflist into a runtime's
  directories (what the classic `install-cni` did).
"""
