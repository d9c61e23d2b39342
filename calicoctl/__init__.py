"""calicoctl: the command-line tool that edits Calico's datastore (etcd) with the classic grammar."""
