"""A 3-member etcd cluster for failover tests: each member in its own namespace, all on one bridge.

Killing a member with SIGKILL is what a crashed etcd host looks like to its
clients (connections reset); cutting a member's link (`partition`) is what a
dead host or a lost network looks like (no reset, only silence).  Clients run
in `client_ns()` namespaces on the same bridge and list every member in
ETCD_ENDPOINTS, as a node would.  Every namespace comes from the caller's
factory (normally the `netns_factory` fixture), so all of it is removed even
when a test fails.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable

from calico_testing.netns import Netns, veth

SUBNET = "10.251.0"
CLIENT_PORT = 2379
PEER_PORT = 2380


class Member:
    def __init__(self, index: int, ns: Netns, data_dir: str):
        self.index = index
        self.ns = ns
        self.name = f"m{index}"
        self.ip = f"{SUBNET}.{11 + index}"
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None
        self.partitioned = False
        self.log_path = os.path.join(data_dir, "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{PEER_PORT}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """`EtcdCluster(netns_factory).start()`; `kill(i)`, `restart(i)`, `partition(i)`, `heal(i)`."""

    def __init__(self, make_ns: Callable[[str], Netns], size: int = 3, snapshot_count: int | None = None):
        self._make_ns = make_ns
        self.size = size
        self.snapshot_count = snapshot_count
        self.root = tempfile.mkdtemp(prefix="etcd-cluster-")
        self.fabric = make_ns("fab")
        self.fabric.run("ip", "link", "add", "br0", "type", "bridge")
        self.fabric.run("ip", "link", "set", "br0", "up")
        self.members: list[Member] = []
        self._ports = itertools.count()
        for i in range(size):
            ns = make_ns(f"etcd{i}")
            m = Member(i, ns, os.path.join(self.root, f"m{i}"))
            os.makedirs(m.data_dir)
            self._attach(ns, m.ip)
            self.members.append(m)
        self._clients = itertools.count()

    def _attach(self, ns: Netns, ip: str) -> str:
        """A veth from `ns` (eth0, ip/24) to the fabric bridge; returns the bridge-side name."""
        port = f"p{next(self._ports)}"
        veth(ns, "eth0", self.fabric, port)
        self.fabric.run("ip", "link", "set", port, "master", "br0")
        ns.run("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        return port

    def client_ns(self) -> Netns:
        """A namespace on the fabric from which every member is reachable."""
        n = next(self._clients)
        ns = self._make_ns(f"ecli{n}")
        self._attach(ns, f"{SUBNET}.{100 + n}")
        return ns

    @property
    def endpoints(self) -> str:
        """The ETCD_ENDPOINTS value naming every member."""
        return ",".join(m.endpoint for m in self.members)

    def _cmd(self, m: Member, state: str) -> list[str]:
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        cmd = ["etcd", "--name", m.name, "--data-dir", os.path.join(m.data_dir, "data"),
               "--listen-client-urls", m.endpoint, "--advertise-client-urls", m.endpoint,
               "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
               "--initial-cluster", cluster, "--initial-cluster-state", state,
               "--initial-cluster-token", "ct-cluster", "--log-level", "error", "--logger", "zap",
               # Elections in well under a second, so a killed leader costs little test time.
               "--heartbeat-interval", "50", "--election-timeout", "500"]
        if self.snapshot_count:
            cmd += ["--snapshot-count", str(self.snapshot_count)]
        return cmd

    def _spawn(self, m: Member, state: str) -> None:
        with open(m.log_path, "ab") as log:
            m.proc = m.ns.popen(self._cmd(m, state), stdout=log, stderr=subprocess.STDOUT)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for m in self.members:
            self._spawn(m, "new")
        self.wait_healthy(timeout=timeout)
        return self

    def member_healthy(self, m: Member) -> bool:
        if not m.alive:
            return False
        r = m.ns.run("etcdctl", f"--endpoints={m.endpoint}", "--dial-timeout=1s", "--command-timeout=2s",
                     "endpoint", "health", check=False, timeout=10)
        return r.returncode == 0

    def wait_healthy(self, members: list[int] | None = None, timeout: float = 30.0) -> None:
        idx = range(self.size) if members is None else members
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in idx:
                m = self.members[i]
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited: {open(m.log_path).read()[-2000:]}")
            if all(self.member_healthy(self.members[i]) for i in idx):
                return
            time.sleep(0.2)
        raise RuntimeError(f"etcd members {list(idx)} not healthy within {timeout}s")

    def etcdctl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """etcdctl against every live member (from the first live member's namespace)."""
        live = [m for m in self.members if m.alive and not m.partitioned]
        if not live:
            raise RuntimeError("no live etcd member")
        eps = ",".join(m.endpoint for m in live)
        r = live[0].ns.run("env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={eps}", "--dial-timeout=2s",
                           "--command-timeout=5s", *args, check=False, input=input, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"etcdctl {args}: {r.stderr}")
        return r.stdout

    def _retry(self, *args: str) -> str:
        """A write that a leader change may drop in flight: repeat it (puts/deletes are idempotent)."""
        for attempt in range(4):
            try:
                return self.etcdctl(*args)
            except RuntimeError:
                if attempt == 3:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def put(self, key: str, value: str) -> None:
        self._retry("put", key, "--", value)

    def delete(self, key: str) -> None:
        self._retry("del", key)

    def leader(self) -> int | None:
        """Index of the current leader among live members, if one is known."""
        import json
        for m in self.members:
            if not m.alive:
                continue
            r = m.ns.run("etcdctl", f"--endpoints={m.endpoint}", "-w", "json", "endpoint", "status",
                         check=False, timeout=10)
            if r.returncode == 0:
                st = json.loads(r.stdout)[0]["Status"]
                if st["leader"] == st["header"]["member_id"]:
                    return m.index
        return None

    def kill(self, i: int) -> None:
        """SIGKILL member i (its data dir stays, so restart() rejoins it)."""
        m = self.members[i]
        if m.alive:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()
        m.proc = None

    def wait_leader(self, timeout: float = 15.0) -> int:
        """Wait until the live members have elected a leader (after killing one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and self.members[leader].alive:
                return leader
            time.sleep(0.1)
        raise RuntimeError(f"no etcd leader within {timeout}s")

    def restart(self, i: int, timeout: float = 30.0) -> None:
        self.kill(i)
        self._spawn(self.members[i], "existing")
        self.wait_healthy([i], timeout=timeout)

    def partition(self, i: int) -> None:
        """Cut member i off the fabric without killing it: peers and clients just hear nothing."""
        self.members[i].ns.run("ip", "link", "set", "eth0", "down")
        self.members[i].partitioned = True

    def heal(self, i: int) -> None:
        self.members[i].ns.run("ip", "link", "set", "eth0", "up")
        self.members[i].partitioned = False

    def close(self) -> None:
        for m in self.members:
            self.kill(m.index)
        shutil.rmtree(self.root, ignore_errors=True)
