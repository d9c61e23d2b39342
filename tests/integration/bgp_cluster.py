"""A small BGP test fabric: etcd and node namespaces on one bridge, real BIRD and confd.

Everything lives in namespaces this module creates (`ct<pid>-...`) and removes;
nothing is addressed outside them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

from bird_control.protocol import BirdProtocol, parse_line, parse_protocols
from calico_testing.etcd import EtcdServer
from calico_testing.netns import Netns, veth, wait_for

SUBNET4 = "10.99.0"
SUBNET6 = "fd00:99::"


class Fabric:
    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="bgpfab-")
        self.nss: list[Netns] = []
        self.procs: list[subprocess.Popen] = []
        self.f = self._ns("fab")
        self.f.run("ip", "link", "add", "br0", "type", "bridge")
        self.f.run("ip", "addr", "add", f"{SUBNET4}.254/24", "dev", "br0")
        self.f.run("ip", "-6", "addr", "add", f"{SUBNET6}254/64", "dev", "br0", "nodad")
        self.f.run("ip", "link", "set", "br0", "up")
        self.etcd = EtcdServer(host=f"{SUBNET4}.254", netns=self.f.name).start()
        self.n = 0

    def _ns(self, tag: str) -> Netns:
        ns = Netns(tag)
        self.nss.append(ns)
        return ns

    def attach(self, tag: str, n: int) -> Netns:
        """A namespace on the bridge as 10.99.0.N and fd00:99::N."""
        ns = self._ns(tag)
        port = f"p{os.getpid() % 1000}x{n}"
        veth(self.f, port, ns, "eth0")
        self.f.run("ip", "link", "set", port, "master", "br0")
        ns.run("ip", "addr", "add", f"{SUBNET4}.{n}/24", "dev", "eth0")
        ns.run("ip", "-6", "addr", "add", f"{SUBNET6}{n}/64", "dev", "eth0", "nodad")
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        return ns

    def put(self, key: str, value: str) -> None:
        self.etcd.put(key, value)

    def delete(self, key: str) -> None:
        self.etcd.delete(key)

    def spawn(self, ns: Netns, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        out = open(os.path.join(self.tmp, log), "ab")
        full_env = dict(os.environ, **env)
        p = ns.popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.tmp, name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.etcd.close()
        for ns in reversed(self.nss):
            ns.close()
        subprocess.run(["rm", "-rf", self.tmp])


class Node:
    """One calico node: calico-confd + calico-bird (+ --ipv6) in its own namespace."""

    def __init__(self, fab: Fabric, name: str, n: int, ipv6: bool = True):
        self.fab, self.name, self.n = fab, name, n
        self.ns = fab.attach(name[:6], n)
        self.ip4 = f"{SUBNET4}.{n}"
        self.ip6 = f"{SUBNET6}{n}" if ipv6 else None
        self.run_dir = os.path.join(fab.tmp, name, "run")
        self.conf_dir = os.path.join(fab.tmp, name, "conf")
        os.makedirs(self.run_dir)
        os.makedirs(self.conf_dir)
        self.env = {"HOSTNAME": name, "NODENAME": name, "IP": self.ip4, "CALICO_RUN_DIR": self.run_dir,
                    "CALICO_CONF_DIR": self.conf_dir, "ETCD_ENDPOINTS": fab.etcd.endpoint}
        if self.ip6:
            self.env["IP6"] = self.ip6
        self.procs: dict[str, subprocess.Popen] = {}

    def register(self) -> None:
        self.fab.put(f"/calico/bgp/v1/host/{self.name}/ip_addr_v4", self.ip4)
        self.fab.put(f"/calico/bgp/v1/host/{self.name}/ip_addr_v6", self.ip6 or "")

    def start(self, which: tuple[str, ...] = ("confd", "bird", "bird6")) -> None:
        argvs = {"confd": ["calico-confd"], "bird": ["calico-bird"], "bird6": ["calico-bird", "--ipv6"]}
        for w in which:
            if w == "bird6" and not self.ip6:
                continue
            self.procs[w] = self.fab.spawn(self.ns, argvs[w], self.env, f"{self.name}-{w}.log")

    def log(self, which: str) -> str:
        return self.fab.log(f"{self.name}-{which}.log")

    def sock(self, v6: bool = False) -> str:
        return os.path.join(self.run_dir, "bird6.ctl" if v6 else "bird.ctl")

    def birdc(self, cmd: str, v6: bool = False) -> list:
        """Run a command on the control socket inside the namespace; returns parsed reply lines."""
        script = ("import socket,sys\ns=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);f=s.makefile('rwb')\n"
                  "f.readline();f.write(sys.argv[2].encode()+b'\\n');f.flush()\n"
                  "while True:\n l=f.readline()\n sys.stdout.write(l.decode())\n"
                  " if not l or (l[:4].isdigit() and l[4:5]==b' '): break\n")
        out = self.ns.run("python3", "-c", script, self.sock(v6), cmd).stdout
        lines, prev = [], None
        for raw in out.splitlines():
            line, _ = parse_line(raw, prev)
            lines.append(line)
            prev = line.code
        return lines

    def protocols(self, v6: bool = False) -> dict[str, BirdProtocol]:
        return {p.name: p for p in parse_protocols(self.birdc("show protocols all", v6))}

    def established(self, name: str, v6: bool = False) -> bool:
        p = self.protocols(v6).get(name)
        return bool(p and p.established)

    def routes(self, v6: bool = False) -> str:
        return self.ns.run("ip", "-6" if v6 else "-4", "route").stdout

    def bird_pid(self, v6: bool = False) -> int | None:
        out = subprocess.run(["pgrep", "-f", f"^bird6? -f -R -s {self.sock(v6)} "], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        return pids[0] if pids else None

    def config(self, v6: bool = False) -> str:
        with open(os.path.join(self.conf_dir, "bird6.cfg" if v6 else "bird.cfg")) as f:
            return f.read()

    def cmd(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        """A command in the node's namespace with the node's environment."""
        return self.ns.run("env", *(f"{k}={v}" for k, v in self.env.items()), *argv, check=check)

    def confd_ready(self) -> tuple[bool, str]:
        r = self.cmd("calico-confd", "--check-ready")
        return r.returncode == 0, r.stdout.strip()

    def wait_established(self, name: str, v6: bool = False, timeout: float = 40) -> None:
        wait_for(lambda: self.established(name, v6), timeout,
                 what=f"{name} Established on {self.name} (v{6 if v6 else 4})")


def plain_bird_router(fab: Fabric, n: int, asn: int, peers: list[tuple[str, int]], announce: str) -> Netns:
    """A standard BGP router (plain BIRD, our own config) in its own namespace, announcing `announce`."""
    ns = fab.attach("rtr", n)
    cfg = os.path.join(fab.tmp, "router.cfg")
    lines = [f"router id {SUBNET4}.{n};", "log stderr all;", "protocol device { scan time 2; }",
             f"protocol static announced {{ route {announce} blackhole; }}"]
    for ip, peer_as in peers:
        pid = ip.replace(".", "_")
        lines.append(f"protocol bgp peer_{pid} {{ local as {asn}; neighbor {ip} as {peer_as}; "
                     "import all; export where proto = \"announced\"; }")
    with open(cfg, "w") as f:
        f.write("\n".join(lines) + "\n")
    fab.spawn(ns, ["bird", "-f", "-s", os.path.join(fab.tmp, "router.ctl"), "-c", cfg], {}, "router.log")
    return ns
