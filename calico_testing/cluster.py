"""A multi-host Calico cluster on one machine, built from network namespaces.

Shape (everything lives in namespaces this harness creates; nothing outside is
ever addressed):

    fabric ns: bridge br1 (10.99.1.254/24) [+ bridge br2 (10.99.2.254/24) when
               `two_subnets`], forwarding on; it is the nodes' default gateway
               and, with two subnets, the router between them that knows nothing
               of the IP pools.
    etcd ns:   10.99.1.253 on br1, runs etcd.
    node ns:   eth0 on br1 (or br2), 10.99.<subnet>.<n>, runs the real
               `calico-node` with its own run/log/conf dirs.
    workload:  an empty namespace given to `calicoctl container add`.

Used by tests/system, bench/ and `make demo`. `close()` removes every namespace
and process, and is safe to call twice.

Scale: any number of nodes up to 250 per subnet (`Cluster(n_nodes=50)`); the
helpers below that watch many nodes read BIRD's control sockets and /proc
directly instead of running a calicoctl per node, so watching 50 nodes costs
the machine little; the kernel's one neighbour table, shared by all namespaces,
is raised to fit them (`size_neighbour_tables`).  Route reflectors:
`use_route_reflectors(...)` turns the mesh off, marks reflector nodes and makes
them every node's global peers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from calico_testing.etcd import EtcdServer
from calico_testing.netns import Netns, sh, veth, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".venv", "bin")


def _bin(name: str) -> str:
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


_SEQ = re.compile(r"icmp_seq=(\d+)")

_NEIGH_THRESH = "/proc/sys/net/{family}/neigh/default/gc_thresh{level}"


def neighbour_entries(n_nodes: int) -> int:
    """Neighbour entries to allow for a cluster of `n_nodes`, all its namespaces together.

    Each node resolves every other node, the gateway and etcd on its bridge, and the fabric every
    node: about (n + 3)^2.  Doubled, for workloads and for other clusters on the same machine.
    """
    return 2 * (n_nodes + 3) ** 2


def size_neighbour_tables(n_nodes: int) -> None:
    """Make the kernel's neighbour tables big enough for `n_nodes` simulated hosts.

    The kernel keeps ONE ARP and ONE NDP table for all network namespaces (its limits can only be
    set from the initial namespace), sized for one host: 1024 entries, with resolved entries
    evicted above 512.  A 50-node mesh needs ~2,500, so without this the kernel logs "neighbor
    table overflow", a node's connect to a peer fails with "No route to host" and BGP sessions
    sit in Connect for minutes -- a fault of the harness, not of calico-node (real hosts each have
    their own table).  Limits are only raised, never lowered: another cluster may be running.
    """
    need = neighbour_entries(n_nodes)
    for family in ("ipv4", "ipv6"):
        for level, want in ((2, need), (3, 2 * need)):
            path = _NEIGH_THRESH.format(family=family, level=level)
            try:
                with open(path) as f:
                    if int(f.read()) >= want:
                        continue
            except FileNotFoundError:
                continue  # no IPv6 in this kernel
            try:
                with open(path, "w") as f:
                    f.write(str(want))
            except OSError as e:
                raise RuntimeError(f"{n_nodes} nodes need {path} >= {want} and it cannot be raised: {e}") from e


class Pinger(threading.Thread):
    """A continuous ping (10/s); records the longest run of lost replies and all lost replies, counted
    by icmp_seq (not by the clock, which a busy machine stretches)."""

    def __init__(self, src, ip: str):
        super().__init__(daemon=True)
        self.proc = src.popen(["ping", "-i", "0.1", "-W", "1", "-O", ip], stdout=subprocess.PIPE, text=True)
        self.most_lost = 0
        self.lost = 0
        self.received = 0

    def run(self) -> None:
        last_seq = None
        for line in self.proc.stdout:
            m = _SEQ.search(line)
            if m is None or "bytes from" not in line:
                continue
            seq = int(m.group(1))
            self.received += 1
            if last_seq is not None and seq > last_seq:
                self.most_lost = max(self.most_lost, seq - last_seq - 1)
                self.lost += seq - last_seq - 1
            last_seq = seq if last_seq is None else max(last_seq, seq)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        self.join(5)
        return self.most_lost


@dataclass
class Node:
    name: str
    ns: Netns
    ip: str
    ip6: str | None
    dirs: dict
    env: dict
    proc: subprocess.Popen | None = None
    workloads: list = field(default_factory=list)

    def ctl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        """Run calicoctl inside this node's namespace, as an operator on that host would."""
        env_args = [f"{k}={v}" for k, v in self.env.items()]
        return sh("env", *env_args, _bin("calicoctl"), *args, ns=self.ns.name, check=check,
                  input=input, timeout=timeout)

    def supervisorctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        conf = os.path.join(self.dirs["run"], "supervisord.conf")
        return sh(_bin("supervisorctl"), "-c", conf, *args, ns=self.ns.name, check=check)

    @property
    def bird_socket(self) -> str:
        return os.path.join(self.dirs["run"], "bird.ctl")

    def bgp_sessions(self) -> dict[str, str]:
        """{BIRD protocol name: BGP state} of this node's BGP sessions; {} when BIRD does not answer.

        Read straight from the control socket (a unix socket is reachable from any
        namespace), so polling many nodes costs no calicoctl process per poll.
        """
        from bird_control.reply import BirdError, BirdUnavailable, parse_protocols, query_sync

        try:
            protos = parse_protocols(query_sync(self.bird_socket, "show protocols all", timeout=3.0))
        except (BirdUnavailable, BirdError, OSError):
            return {}
        return {p.name: ("Established" if p.established else (p.bgp_state or p.state))
                for p in protos if p.proto == "BGP"}

    def established(self) -> int:
        return sum(1 for s in self.bgp_sessions().values() if s == "Established")

    def usage(self) -> tuple[int, int, int]:
        """(resident memory in kB, CPU clock ticks used, process count) of every process in the node's
        namespace: calico-node's programs and BIRD (the node is its namespace)."""
        rss = ticks = n = 0
        for pid in self.ns.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    rss += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
                n += 1
            except (OSError, StopIteration, ValueError, IndexError):
                continue  # exited meanwhile, or a kernel thread without VmRSS
        return rss, ticks, n

    def log(self, service: str) -> str:
        path = os.path.join(self.dirs["log"], service, "current")
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Cluster:
    def __init__(self, n_nodes: int = 2, two_subnets: bool = False, ipv6: bool = False,
                 node_env: dict | None = None, start: bool = True):
        self.tmp = tempfile.mkdtemp(prefix="calico-cluster-")
        self.namespaces: list[Netns] = []
        self.nodes: list[Node] = []
        self.two_subnets = two_subnets
        self.ipv6 = ipv6
        self.etcd: EtcdServer | None = None
        try:
            self._build_fabric()
            for _ in range(n_nodes):
                self.add_node(env=node_env, start=False)
            if start:
                for node in self.nodes:
                    self.start_node(node)
        except BaseException:
            self.close()
            raise

    # ---- topology ------------------------------------------------------------
    def _ns(self, tag: str) -> Netns:
        ns = Netns(tag)
        self.namespaces.append(ns)
        return ns

    def _build_fabric(self) -> None:
        self.fabric = self._ns("fab")
        f = self.fabric
        f.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        f.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        subnets = [1, 2] if self.two_subnets else [1]
        for s in subnets:
            f.run("ip", "link", "add", f"br{s}", "type", "bridge")
            f.run("ip", "addr", "add", f"10.99.{s}.254/24", "dev", f"br{s}")
            if self.ipv6:
                f.run("ip", "addr", "add", f"fd99:{s}::fe/64", "dev", f"br{s}", "nodad")
            f.run("ip", "link", "set", f"br{s}", "up")
        self.etcd_ns = self._ns("etcd")
        self._attach(self.etcd_ns, 1, 253)
        self.etcd = EtcdServer(host="10.99.1.253", port=2379, netns=self.etcd_ns.name,
                               data_dir=os.path.join(self.tmp, "etcd")).start()
        self.etcd_endpoints = self.etcd.endpoint

    def _attach(self, ns: Netns, subnet: int, host: int) -> None:
        port = f"p{len(self.namespaces)}x{host}"
        veth(self.fabric, port, ns, "eth0")
        self.fabric.run("ip", "link", "set", port, "master", f"br{subnet}")
        ns.run("ip", "addr", "add", f"10.99.{subnet}.{host}/24", "dev", "eth0")
        ns.run("ip", "route", "add", "default", "via", f"10.99.{subnet}.254")
        if self.ipv6:
            ns.run("ip", "addr", "add", f"fd99:{subnet}::{host:x}/64", "dev", "eth0", "nodad")
            ns.run("ip", "-6", "route", "add", "default", "via", f"fd99:{subnet}::fe")

    def add_node(self, env: dict | None = None, start: bool = True) -> Node:
        n = len(self.nodes) + 1
        size_neighbour_tables(n)
        subnet = 2 if (self.two_subnets and n % 2 == 0) else 1
        ns = self._ns(f"n{n}")
        self._attach(ns, subnet, n)
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        name = f"node{n}-{os.getpid()}"
        dirs = {d: os.path.join(self.tmp, name, d) for d in ("run", "log", "conf")}
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
        ip = f"10.99.{subnet}.{n}"
        ip6 = f"fd99:{subnet}::{n:x}" if self.ipv6 else None
        node_env = {
            "HOSTNAME": name, "NODENAME": name, "IP": ip, "ETCD_ENDPOINTS": self.etcd_endpoints,
            "NO_DEFAULT_POOLS": "true", "CALICO_RUN_DIR": dirs["run"], "CALICO_LOG_DIR": dirs["log"],
            "CALICO_CONF_DIR": dirs["conf"],
        }
        if ip6:
            node_env["IP6"] = ip6
        node_env.update(env or {})
        node = Node(name=name, ns=ns, ip=ip, ip6=ip6, dirs=dirs, env=node_env)
        self.nodes.append(node)
        if start:
            self.start_node(node)
        return node

    def start_node(self, node: Node) -> None:
        out = open(os.path.join(self.tmp, f"{node.name}.out"), "ab")
        env = dict(os.environ, **node.env)
        env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
        node.proc = node.ns.popen([_bin("calico-node")], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        out.close()

    def stop_node(self, node: Node, timeout: float = 20) -> None:
        if node.proc and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        node.proc = None

    def node_output(self, node: Node) -> str:
        try:
            with open(os.path.join(self.tmp, f"{node.name}.out"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60, bgp: bool = True, sessions: dict[str, int] | None = None,
                   nodes: list[Node] | None = None) -> float:
        """Wait until every node reports ready (and, with bgp, its BGP sessions Established).

        `sessions` maps node name -> how many Established sessions make it ready (default: one
        per other node, the full mesh); `nodes` limits the wait to some nodes.
        """
        t0 = time.monotonic()
        for node in nodes or self.nodes:
            want = (sessions or {}).get(node.name, len(self.nodes) - 1)
            wait_for(lambda node=node, want=want: self._node_ready(node, bgp, want), timeout=timeout,
                     what=f"{node.name} ready")
        return time.monotonic() - t0

    def _node_ready(self, node: Node, bgp: bool, want: int | None = None) -> bool:
        if node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"calico-node on {node.name} exited: {self.node_output(node)[-2000:]}")
        if not bgp:
            r = node.supervisorctl("status")
            return r.returncode == 0
        want = len(self.nodes) - 1 if want is None else want
        return node.established() >= want

    # ---- route reflectors ---------------------------------------------------------
    def use_route_reflectors(self, reflectors: list[Node], cluster_id: str = "1.0.0.1",
                             as_num: int = 64511) -> dict[str, int]:
        """Mesh off; `reflectors` reflect for `cluster_id` and are every node's global peers.

        Written before or after the nodes start (registration may not have happened yet, so
        the keys are written directly).  Returns the sessions each node has when all is up:
        a client one per reflector, a reflector one per other node.
        """
        etcd = self.etcd
        assert etcd is not None
        etcd.put("/calico/bgp/v1/global/node_mesh", '{"enabled": false}')
        for r in reflectors:
            etcd.put(f"/calico/bgp/v1/host/{r.name}/rr_cluster_id", cluster_id)
            etcd.put(f"/calico/bgp/v1/global/peer_v4/{r.ip}", f'{{"ip": "{r.ip}", "as_num": "{as_num}"}}')
        names = {r.name for r in reflectors}
        return {n.name: (len(self.nodes) - 1 if n.name in names else len(reflectors)) for n in self.nodes}

    def kill_node(self, node: Node) -> None:
        """The whole node dies at once (SIGKILL to every process in its namespace): no BGP Cease is sent,
        the peers notice only by hold timer or TCP reset. Its namespace and address stay."""
        for sig_pid in node.ns.pids():
            try:
                os.kill(sig_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if node.proc is not None:
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        node.proc = None

    def kill_bird(self, node: Node) -> int:
        """SIGKILL this node's BIRD only (supervisord restarts it through the shim); its old pid."""
        for pid in node.ns.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) == b"bird" and node.bird_socket.encode() in argv:
                os.kill(pid, signal.SIGKILL)
                return pid
        raise AssertionError(f"no BIRD running on {node.name}")

    # ---- workloads -------------------------------------------------------------
    def add_workload(self, node: Node, ip: str = "ipv4", profile: str | None = None) -> tuple[Netns, str]:
        wl = self._ns("w")
        node.ctl("container", "add", wl.name, ip)
        if profile:
            node.ctl("container", wl.name, "profile", "set", profile)
        addr = wl.run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout.split()[3].split("/")[0]
        node.workloads.append((wl, addr))
        return wl, addr

    def remove_workload(self, node: Node, wl: Netns) -> None:
        node.ctl("container", "remove", wl.name)
        node.workloads = [(w, a) for (w, a) in node.workloads if w is not wl]

    @staticmethod
    def ping(src: Netns, dst_ip: str, count: int = 1, wait: float = 1) -> bool:
        r = src.run("ping", "-c", str(count), "-W", str(wait), "-q", dst_ip, check=False, timeout=count * wait + 10)
        return r.returncode == 0

    # ---- teardown --------------------------------------------------------------
    def close(self) -> None:
        # Every node is asked to stop first, then waited for: 50 nodes stop in the time of one.
        for node in self.nodes:
            if node.proc and node.proc.poll() is None:
                try:
                    node.proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        for node in self.nodes:
            try:
                self.stop_node(node, timeout=10)
            except Exception:  # noqa: BLE001 - teardown must go on
                pass
        if self.etcd:
            self.etcd.stop()
        for ns in reversed(self.namespaces):
            ns.close()
        self.namespaces = []
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
