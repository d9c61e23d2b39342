"""An external BGP router for system tests: plain BIRD in its own namespace on the fabric.

With peers in its own AS it acts as a route reflector (like a ToR in a Calico
AS-per-rack design); with peers in another AS it is a plain eBGP neighbour.
"""

from __future__ import annotations

import os
import subprocess

from calico_testing.netns import Netns


class BgpRouter:
    def __init__(self, cluster, host: int, asn: int, peers: list[tuple[str, int]], announce: str | None = None):
        self.ns: Netns = cluster._ns("rtr")
        cluster._attach(self.ns, 1, host)
        self.ip = f"10.99.1.{host}"
        self.dir = os.path.join(cluster.tmp, f"router{host}")
        os.makedirs(self.dir, exist_ok=True)
        self.ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        conf = [f"router id {self.ip};", "protocol device { scan time 2; }",
                "protocol kernel { export all; scan time 2; }"]
        if announce:
            conf.append(f"protocol static {{ route {announce} blackhole; }}")
        for ip, peer_as in peers:
            rr = " rr client;" if peer_as == asn else " next hop keep;"
            conf.append(f"protocol bgp p_{ip.replace('.', '_')} {{ local as {asn}; neighbor {ip} as {peer_as};"
                        f" import all; export all;{rr} }}")
        self.conf = os.path.join(self.dir, "bird.cfg")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.ctl = os.path.join(self.dir, "bird.ctl")
        self.proc = self.ns.popen(["bird", "-f", "-c", self.conf, "-s", self.ctl],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
