"""Calico's Docker libnetwork driver: the `calico` network driver and the `calico-ipam` IPAM driver.

protocol: Docker's remote plugin HTTP+JSON on a unix socket; ipam_driver: IpamDriver over
libcalico.ipam; network_driver: NetworkDriver over libcalico.workload_attach; docker_api: the
network's name and labels from the calling dockerd; records: the driver's state in etcd;
__main__: the program (`calico-libnetwork`), run by calico-node's supervisord.
"""
