"""A Felix host in network namespaces, for the Felix integration tests and the benchmark.

Shape (as /work/shared/acceptance/lib.sh `felix_host`): a host namespace with
an uplink veth and a default route out of it (so proxy ARP answers for the
workloads' gateway 169.254.1.1), etcd on the host namespace's loopback, and
workload namespaces whose veth host ends are `cali...`.  Workloads get
10.65.0.N/32 and fd00:65::N/128 (nodad) with the host as gateway: IPv4 via
169.254.1.1 (proxy ARP), IPv6 via the host end's link-local address.
Everything is removed by the `netns_factory` fixture and `close()`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from calico_testing.etcd import EtcdServer
from calico_testing.netns import Netns, veth, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FELIX = os.path.join(ROOT, ".venv", "bin", "calico-felix")

# Listens on every given TCP port (dual stack) and echoes; one process per workload.
_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for p in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", p)); s.listen(64); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, "listen")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "listen":
            c, _ = key.fileobj.accept(); c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, "conn")
        else:
            try:
                d = key.fileobj.recv(4096)
            except OSError:
                d = b""
            if d:
                key.fileobj.send(d)
            else:
                sel.unregister(key.fileobj); key.fileobj.close()
"""


class Workload:
    def __init__(self, ns: Netns, index: int, ifname: str):
        self.ns = ns
        self.index = index
        self.ifname = ifname
        self.ip4 = f"10.65.0.{index}"
        self.ip6 = f"fd00:65::{index}"
        self.mac = ns.run("cat", "/sys/class/net/eth0/address").stdout.strip()

    def ip(self, version: int) -> str:
        return self.ip4 if version == 4 else self.ip6

    def endpoint(self, profiles: list[str], state: str = "active", mac: bool | str = False, **extra) -> dict:
        """The endpoint JSON; mac=True uses the workload's real MAC, a string that MAC."""
        doc = {"state": state, "name": self.ifname, "profile_ids": profiles,
               "ipv4_nets": [f"{self.ip4}/32"], "ipv6_nets": [f"{self.ip6}/128"]}
        if mac:
            doc["mac"] = self.mac if mac is True else mac
        doc.update(extra)
        return doc

    def ping(self, dst: str, timeout: int = 1) -> bool:
        r = self.ns.run("ping", "-c1", f"-W{timeout}", dst, check=False)
        return r.returncode == 0

    def tcp(self, dst: str, port: int, timeout: float = 1.0) -> bool:
        code = (f"import socket;socket.create_connection(({dst!r},{port}),timeout={timeout}).close()")
        r = self.ns.run(sys.executable, "-c", code, check=False)
        return r.returncode == 0


class FelixHost:
    """Host namespace + etcd + workloads; `start_felix()` runs the real calico-felix inside it."""

    def __init__(self, netns_factory, n_workloads: int = 3, hostname: str = "felixhost"):
        self.hostname = hostname
        self.host = netns_factory("fh")
        h = self.host
        h.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        h.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        h.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
        h.run("ip", "link", "set", "uplink0", "up")
        h.run("ip", "link", "set", "uplink1", "up")
        h.run("ip", "route", "add", "default", "dev", "uplink0")
        self.tmp = tempfile.mkdtemp(prefix="felix-it-")
        self.etcd = EtcdServer(netns=h.name).start()
        self.workloads: list[Workload] = []
        for i in range(1, n_workloads + 1):
            self.add_workload(netns_factory, i)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.tmp, "felix.log")
        self.servers: list[subprocess.Popen] = []

    def add_workload(self, netns_factory, i: int) -> Workload:
        ns = netns_factory(f"w{i}")
        ifname = f"cali{os.getpid() % 100000}w{i}"[:15]
        veth(self.host, ifname, ns, "eth0")
        ns.run("ip", "addr", "add", f"10.65.0.{i}/32", "dev", "eth0")
        ns.run("ip", "-6", "addr", "add", f"fd00:65::{i}/128", "dev", "eth0", "nodad")
        ns.run("ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        ns.run("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        ll = self.link_local(ifname)
        ns.run("ip", "-6", "route", "add", "default", "via", ll, "dev", "eth0")
        w = Workload(ns, i, ifname)
        self.workloads.append(w)
        return w

    def link_local(self, ifname: str) -> str:
        def find():
            out = self.host.run("ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link").stdout
            return out.split()[3].split("/")[0] if out.strip() else None
        return wait_for(find, 10, what=f"link-local address on {ifname}")

    # ---- etcd ----
    def put(self, key: str, value) -> None:
        self.etcd.put(key, value if isinstance(value, str) else json.dumps(value))

    def delete(self, key: str, prefix: bool = False) -> None:
        self.etcd.delete(key, prefix=prefix)

    def ep_key(self, w: Workload) -> str:
        return f"/calico/v1/host/{self.hostname}/workload/test/w{w.index}/endpoint/e{w.index}"

    def put_endpoint(self, w: Workload, profiles: list[str], **kw) -> None:
        self.put(self.ep_key(w), w.endpoint(profiles, **kw))

    def put_profile(self, pid: str, inbound: list | None = None, outbound: list | None = None,
                    tags: list[str] | None = None) -> None:
        self.put(f"/calico/v1/policy/profile/{pid}/rules",
                 {"inbound_rules": inbound or [], "outbound_rules": outbound or []})
        if tags is not None:
            self.put(f"/calico/v1/policy/profile/{pid}/tags", tags)

    # ---- felix ----
    def start_felix(self, **env: str) -> subprocess.Popen:
        full = dict(os.environ, FELIX_FELIXHOSTNAME=self.hostname, FELIX_ETCDENDPOINTS=self.etcd.endpoint,
                    FELIX_LOGSEVERITYSCREEN="info", PYTHONUNBUFFERED="1")
        full.update(env)
        log = open(self.log_path, "ab")
        self.proc = self.host.popen([FELIX], env=full, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.proc

    def kill_felix(self, sig: int = signal.SIGKILL) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def felix_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def serve(self, w: Workload, *ports: int) -> None:
        p = w.ns.popen([sys.executable, "-c", _SERVER, *map(str, ports)], stdout=subprocess.PIPE)
        self.servers.append(p)
        assert p.stdout.readline().strip() == b"ready"

    # ---- kernel views ----
    def iptables_save(self, version: int = 4) -> str:
        tool = "iptables" if version == 4 else "ip6tables"
        out = ""
        for backend in ("nft", "legacy"):
            out += self.host.run(f"{tool}-{backend}-save", check=False).stdout
        return out

    def felix_chains(self, version: int = 4) -> set[str]:
        return {line[1:].split()[0] for line in self.iptables_save(version).splitlines()
                if line.startswith(":felix-")}

    def felix_ipsets(self) -> set[str]:
        out = self.host.run("ipset", "list", "-n").stdout.split()
        return {n for n in out if n.startswith("felix-")}

    def routes(self, version: int = 4) -> str:
        return self.host.run("ip", f"-{version}", "route", "show", "proto", "80").stdout

    def neighbours(self, ifname: str) -> str:
        return self.host.run("ip", "neigh", "show", "dev", ifname, "nud", "permanent", check=False).stdout

    def close(self) -> None:
        for p in self.servers:
            p.kill()
            p.wait()
        self.kill_felix(signal.SIGTERM)
        self.etcd.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def wait_programmed(self, w: Workload, timeout: float = 30) -> None:
        wait_for(lambda: f"{w.ip4} dev {w.ifname}" in self.routes(4), timeout,
                 what=f"route to {w.ip4}; felix log:\n{self.log()[-3000:]}")


def eventually(pred, timeout: float = 10.0, what: str = "condition") -> None:
    wait_for(pred, timeout, interval=0.2, what=what)


def always(pred, duration: float = 1.5, what: str = "condition") -> None:
    """pred must hold for `duration` (used after `eventually` to prove a state is stable)."""
    end = time.monotonic() + duration
    while time.monotonic() < end:
        assert pred(), f"{what} stopped holding"
        time.sleep(0.2)
