"""Felix deletes the conntrack entries of an address its workload gave up, on the real kernel.

The bug this guards: the filter chains accept ESTABLISHED traffic before
policy, so a ping that policy allowed towards one workload kept flowing into
the next workload given the same address, whose policy denies it.  Real
calico-felix, real etcd, workloads in namespaces (tests/integration/felix_topology.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests.integration.felix_topology import FelixHost, always, eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

class PingLog:
    """A running `ping -O -i 0.2` whose output lines are collected as they come."""

    def __init__(self, ns, dst: str):
        self.proc = ns.popen(["ping", "-n", "-O", "-i", "0.2", "-W", "1", dst],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def replies(self) -> int:
        return sum(1 for line in list(self.lines) if " bytes from " in line)

    def unanswered_tail(self) -> int:
        """How many of the latest sequence numbers went unanswered in a row."""
        n = 0
        for line in reversed(list(self.lines)):
            if line.startswith("no answer yet"):
                n += 1
            elif " bytes from " in line:
                break
        return n

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


# One TCP connection; each input line sends a byte and prints what came back within 1 s.
_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("connected", flush=True)
for _ in sys.stdin:
    try:
        s.sendall(b"x"); s.settimeout(1.0)
        print("echo" if s.recv(64) else "closed", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    except OSError:
        print("reset", flush=True)
"""


class TcpProbe:
    """An established TCP connection from a workload; `probe()` -> 'echo' | 'timeout' | 'reset' | 'closed'."""

    def __init__(self, ns, dst: str, port: int):
        self.proc = ns.popen([sys.executable, "-c", _CLIENT, dst, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "connected"
        self.seen: list[str] = []

    def probe(self) -> str:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.seen.append(self.proc.stdout.readline().strip())
        return self.seen[-1]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def entries(fh: FelixHost, *filt: str) -> list[str]:
    """The host's conntrack entries matching a `conntrack -L` filter (both families asked for v4)."""
    r = fh.host.run("conntrack", "-L", *filt, check=False)
    return [line for line in r.stdout.splitlines() if line.strip()]


def test_reused_address_stops_the_old_flow_and_leaves_no_entry(netns_factory):
    fh = FelixHost(netns_factory, n_workloads=3)
    try:
        _reuse_and_change(fh)
    finally:
        fh.close()


def _reuse_and_change(fh: FelixHost) -> None:
    w1, w2, w3 = fh.workloads
    allow = [{"action": "allow"}]
    fh.put("/calico/v1/Ready", "true")
    fh.put_profile("open", allow, allow)
    fh.put_profile("closed", [], allow)              # no inbound rule: w1 is denied
    fh.put_endpoint(w1, ["open"], ipv4_nets=[f"{w1.ip4}/32", "10.65.0.101/32"])
    fh.put_endpoint(w2, ["open"])
    fh.start_felix()
    fh.wait_programmed(w1)
    fh.wait_programmed(w2)

    fh.serve(w2, 7777)
    ping = PingLog(w1.ns, w2.ip4)
    tcp = TcpProbe(w1.ns, w2.ip4, 7777)
    try:
        eventually(lambda: ping.replies() >= 3, 15, f"w1 pings w2; felix log:\n{fh.log()[-2000:]}")
        assert tcp.probe() == "echo"
        eventually(lambda: entries(fh, "-d", w2.ip4, "-p", "tcp"), 5, "an entry for the connection")

        # the Docker case: w2's endpoint goes and its address goes to w3, whose policy denies w1
        w2.ns.run("ip", "addr", "del", f"{w2.ip4}/32", "dev", "eth0")
        w3.ns.run("ip", "addr", "add", f"{w2.ip4}/32", "dev", "eth0")
        fh.delete(fh.ep_key(w2))
        eventually(lambda: w2.ifname not in fh.routes(4), 15, "w2's route gone")
        # released: the flow's entry goes; while nobody owns the address, pings follow the
        # default route and leave only unreplied entries (policy still judges each packet)
        eventually(lambda: all("[UNREPLIED]" in e for e in entries(fh, "-d", w2.ip4)), 10,
                   "no replied entry for the released address")
        fh.put_endpoint(w3, ["closed"], ipv4_nets=[f"{w2.ip4}/32"])
        eventually(lambda: f"{w2.ip4} dev {w3.ifname}" in fh.routes(4), 15,
                   f"the address routed to w3; felix log:\n{fh.log()[-2000:]}")
        at_move = ping.replies()

        eventually(lambda: ping.unanswered_tail() >= 8, 15,
                   "w1's ping to the reused address stops")
        late = ping.replies() - at_move
        assert late <= 5, f"{late} replies came through after the address moved"
        stopped_at = ping.replies()
        always(lambda: ping.replies() == stopped_at, 1.5, "the old flow stays stopped")
        # the connection's packets no longer reach anyone: w3 would have answered them with a reset
        assert [tcp.probe(), tcp.probe()] == ["timeout", "timeout"], tcp.seen
        assert not entries(fh, "-d", w2.ip4), "no entry towards the reused address"
        assert not entries(fh, "-s", w2.ip4), "no entry from the reused address"
    finally:
        ping.stop()
        tcp.stop()

    # an address change: only the removed address loses its entries
    for src, port in (("10.65.0.101", "1101"), (w1.ip4, "1001")):
        fh.host.run("conntrack", "-I", "-p", "tcp", "-s", src, "-d", "10.65.0.200", "--sport", port,
                    "--dport", "80", "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED", "-t", "600")
    assert entries(fh, "-s", "10.65.0.101") and entries(fh, "-s", w1.ip4, "-p", "tcp")
    fh.put_endpoint(w1, ["open"])                         # 10.65.0.101 removed
    eventually(lambda: not entries(fh, "-s", "10.65.0.101"), 15,
               f"the removed address's entry is deleted; felix log:\n{fh.log()[-2000:]}")
    assert entries(fh, "-s", w1.ip4, "-p", "tcp"), "the kept address's entry stays"
    assert fh.felix_alive()


def test_workload_removed_while_felix_was_down_loses_its_flows(netns_factory):
    """A restarted Felix removes the stale route of a workload deleted meanwhile, and its entries."""
    fh = FelixHost(netns_factory, n_workloads=2)
    w1, w2 = fh.workloads
    allow = [{"action": "allow"}]
    try:
        fh.put("/calico/v1/Ready", "true")
        fh.put_profile("open", allow, allow)
        for w in (w1, w2):
            fh.put_endpoint(w, ["open"])
        fh.start_felix()
        fh.wait_programmed(w2)
        fh.host.run("conntrack", "-I", "-p", "tcp", "-s", w1.ip4, "-d", w2.ip4, "--sport", "40000",
                    "--dport", "80", "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED", "-t", "600")
        assert entries(fh, "-d", w2.ip4)
        fh.kill_felix()
        fh.delete(fh.ep_key(w2))
        fh.start_felix()
        eventually(lambda: w2.ifname not in fh.routes(4), 20, f"stale route removed; felix log:\n{fh.log()[-2000:]}")
        eventually(lambda: not entries(fh, "-d", w2.ip4), 10, "the removed workload's entry is deleted")
        assert entries(fh, "-s", w1.ip4) == [], "w1's only entry was the one to w2"
        assert fh.felix_alive()
    finally:
        fh.close()
