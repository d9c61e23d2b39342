"""Many simulated hosts on one kernel: every node still resolves every other node's address.

The kernel keeps ONE neighbour (ARP) table for all network namespaces, sized for one host
(gc_thresh3 = 1024 entries by default, gc_thresh2 = 512 before forced eviction).  N nodes on one
bridge need about N * N entries together; past the limits the kernel refuses new entries or evicts
resolved ones, connects fail with "No route to host" and BGP sessions sit in Connect for minutes
(a 50-node full mesh never completed).  36 nodes need more than the defaults allow, so this fails
on a machine where the harness does not size the table for the cluster.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from calico_testing.cluster import Cluster
from calico_testing.netns import wait_for

pytestmark = pytest.mark.slow

N_NODES = 36  # 36 * 35 node-to-node entries > the kernel's default 1024

# One datagram to each address makes the kernel resolve it (the discard port; nothing need listen).
_SEND = ("import socket, sys\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "for a in sys.argv[1:]:\n"
         "    try:\n"
         "        s.sendto(b'x', (a, 9))\n"
         "    except OSError:\n"
         "        pass\n")


def _resolved(node) -> set[str]:
    out = node.ns.run("ip", "-4", "neigh", "show", "dev", "eth0").stdout
    return {ln.split()[0] for ln in out.splitlines() if "lladdr" in ln}


def test_every_node_resolves_every_other_node():
    with Cluster(n_nodes=N_NODES, start=False) as c:
        others = {n.name: {m.ip for m in c.nodes if m is not n} for n in c.nodes}

        def all_resolved() -> bool:
            missing = {n.name: others[n.name] - _resolved(n) for n in c.nodes}
            procs = [n.ns.popen([sys.executable, "-c", _SEND, *sorted(missing[n.name])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for n in c.nodes if missing[n.name]]
            for p in procs:
                p.wait(30)
            return not procs

        # Neighbours resolve in milliseconds; the bound only covers a busy machine.
        wait_for(all_resolved, timeout=30, interval=0.5,
                 what=f"each of {N_NODES} nodes to hold a resolved neighbour entry for every other node")
