"""bird_control against real BIRD 1.6 in namespaces: the socket client, the calico-bird shim, supervisord."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest

from bird_control.protocol import BirdClient, BirdConfigError
from calico_testing.netns import veth, wait_for
from tests.integration.bgp_cluster import Fabric, Node

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")


def bird_cfg(me: str, peer: str | None, asn: int = 64511, extra: str = "") -> str:
    peer_part = (f"protocol bgp Mesh_{peer.replace('.', '_')} {{ local as {asn}; neighbor {peer} as {asn}; "
                 "import all; export none; }\n") if peer else ""
    return f"router id {me};\nlog stderr all;\nprotocol device {{ scan time 2; }}\n{peer_part}{extra}"


class Shim:
    def __init__(self, ns, base: str, ipv6: bool = False):
        self.ns = ns
        self.run_dir, self.conf_dir = os.path.join(base, "run"), os.path.join(base, "conf")
        os.makedirs(self.run_dir, exist_ok=True)
        os.makedirs(self.conf_dir, exist_ok=True)
        self.cfg = os.path.join(self.conf_dir, "bird6.cfg" if ipv6 else "bird.cfg")
        self.sock = os.path.join(self.run_dir, "bird6.ctl" if ipv6 else "bird.ctl")
        self.log_path = os.path.join(base, "shim.log")
        self.env = dict(os.environ, CALICO_RUN_DIR=self.run_dir, CALICO_CONF_DIR=self.conf_dir)
        self.argv = [os.path.join(VENV_BIN, "calico-bird")] + (["--ipv6"] if ipv6 else [])
        self.proc: subprocess.Popen | None = None

    def start(self) -> Shim:
        with open(self.log_path, "ab") as out:
            self.proc = self.ns.popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def check(self, what: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns.name] + self.argv + [what], env=self.env,
                              capture_output=True, text=True)

    def bird_pid(self) -> int | None:
        out = subprocess.run(["pgrep", "-f", f"^bird6? -f -R -s {self.sock} "], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        return pids[0] if pids else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(shim: Shim) -> BirdClient:
    return BirdClient(shim.sock, timeout=5)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def pair(netns_factory, tmp_path):
    """Two namespaces linked by a veth, 10.98.0.1 and 10.98.0.2."""
    a, b = netns_factory("ba"), netns_factory("bb")
    veth(a, "eth0", b, "eth0")
    a.run("ip", "addr", "add", "10.98.0.1/24", "dev", "eth0")
    b.run("ip", "addr", "add", "10.98.0.2/24", "dev", "eth0")
    shims = [Shim(a, str(tmp_path / "a")), Shim(b, str(tmp_path / "b"))]
    yield shims
    for s in shims:
        s.stop()


def test_shim_waits_for_config_then_runs_bird(pair):
    a, _ = pair
    a.start()
    wait_for(lambda: "waiting for " + a.cfg in a.log(), 10, what="shim saying what it waits for")
    assert a.bird_pid() is None
    assert a.check("--check-live").returncode != 0
    with open(a.cfg, "w") as f:
        f.write(bird_cfg("10.98.0.1", None))
    wait_for(lambda: a.check("--check-live").returncode == 0, 10, what="BIRD answering on its socket")
    assert a.check("--check-ready").returncode == 0  # no BGP sessions configured: nothing to wait for
    log = a.log()
    assert "starting bird -f -R -s " + a.sock + " -c " + a.cfg in log
    assert " bird: " in log  # BIRD's own lines relayed with a timestamp prefix


def test_client_against_real_bird(pair):
    a, _ = pair
    with open(a.cfg, "w") as f:
        f.write(bird_cfg("10.98.0.1", "10.98.0.2"))
    a.start()
    wait_for(lambda: a.check("--check-live").returncode == 0, 10, what="BIRD up")
    pid = a.bird_pid()
    assert pid is not None

    async def scenario():
        async with client(a) as c:
            st = await c.show_status()
            assert st.up and st.router_id == "10.98.0.1" and st.version.startswith("BIRD 1.6")
            protos = {p.name: p for p in await c.show_protocols(all=True)}
            assert protos["Mesh_10_98_0_2"].proto == "BGP"
            assert protos["Mesh_10_98_0_2"].neighbor_address == "10.98.0.2"
            assert protos["Mesh_10_98_0_2"].neighbor_as == 64511
            assert not protos["Mesh_10_98_0_2"].established
            # A good change: a new protocol appears, reply 0003.
            with open(a.cfg, "w") as f:
                f.write(bird_cfg("10.98.0.1", "10.98.0.2", extra="protocol static s1 { route 10.97.0.0/24 blackhole; }\n"))
            res = await c.configure_check()
            assert res.code == 20
            res = await c.configure()
            assert res.ok and res.code == 3 and res.message == "Reconfigured"
            assert "s1" in {p.name for p in await c.show_protocols()}
            # A broken file: refused with BIRD's message; BIRD keeps running its old config.
            with open(a.cfg, "w") as f:
                f.write("router id 10.98.0.1;\nprotocol bgp x { bad }\n")
            with pytest.raises(BirdConfigError) as ei:
                await c.configure()
            assert ei.value.code == 8002 and "syntax error" in ei.value.text and ":2:" in ei.value.text
            assert (await c.show_status()).up
            assert "s1" in {p.name for p in await c.show_protocols()}
    run(scenario())
    assert a.bird_pid() == pid


def test_check_ready_follows_bgp_sessions(pair):
    a, b = pair
    for s, me, peer in ((a, "10.98.0.1", "10.98.0.2"), (b, "10.98.0.2", "10.98.0.1")):
        with open(s.cfg, "w") as f:
            f.write(bird_cfg(me, peer))
    a.start()
    wait_for(lambda: a.check("--check-live").returncode == 0, 10, what="BIRD A up")
    r = a.check("--check-ready")
    assert r.returncode == 1 and "Mesh_10_98_0_2" in r.stdout
    b.start()
    wait_for(lambda: a.check("--check-ready").returncode == 0, 40, what="A ready once the session is up")
    assert b.check("--check-ready").returncode == 0


def test_signals_forwarded_and_bird_death_is_fatal(pair):
    a, _ = pair
    with open(a.cfg, "w") as f:
        f.write(bird_cfg("10.98.0.1", None))
    a.start()
    wait_for(lambda: a.check("--check-live").returncode == 0, 10, what="BIRD up")

    async def last_reconf() -> str | None:
        async with client(a) as c:
            return (await c.show_status()).last_reconfiguration

    before = run(last_reconf())
    time.sleep(1.1)  # BIRD's timestamps have one-second resolution
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: run(last_reconf()) != before, 10, what="SIGHUP reaching BIRD (reconfiguration)")
    assert "forwarding SIGHUP" in a.log()
    # BIRD dies behind the shim's back: the shim exits non-zero.
    pid = a.bird_pid()
    os.kill(pid, signal.SIGKILL)
    assert a.proc.wait(10) != 0
    assert "died" in a.log()
    # SIGTERM: BIRD is stopped and the shim exits 0.
    a.start()
    wait_for(lambda: a.check("--check-live").returncode == 0, 10, what="BIRD up again")
    pid = a.bird_pid()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(10) == 0
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, what="BIRD gone after SIGTERM")


SUPERVISORD_CONF = """
[supervisord]
nodaemon=true
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}
[unix_http_server]
file={d}/supervisor.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{d}/supervisor.sock
[program:bird]
command={bin}/calico-bird
autorestart=true
startsecs=1
startretries=1000
killasgroup=true
redirect_stderr=true
stdout_logfile={d}/bird.log
[program:confd]
command={bin}/calico-confd
autorestart=true
startsecs=1
redirect_stderr=true
stdout_logfile={d}/confd.log
"""


def test_supervisord_restarts_after_bird_is_killed():
    """Kill BIRD on a node run by supervisord: shim and BIRD come back, the mesh re-establishes."""
    fab = Fabric()
    try:
        fab.put("/calico/v1/Ready", "true")
        fab.put("/calico/bgp/v1/global/node_mesh", '{"enabled": true}')
        a, b = Node(fab, "sup-a", 1, ipv6=False), Node(fab, "sup-b", 2, ipv6=False)
        a.register()
        b.register()
        b.start()
        sup_dir = os.path.join(fab.tmp, "sup")
        os.makedirs(sup_dir)
        conf = os.path.join(sup_dir, "supervisord.conf")
        with open(conf, "w") as f:
            f.write(SUPERVISORD_CONF.format(d=sup_dir, bin=VENV_BIN))
        fab.spawn(a.ns, [os.path.join(VENV_BIN, "supervisord"), "-c", conf], a.env, "sup-a-supervisord.log")
        a.wait_established("Mesh_10_99_0_2")
        pid = a.bird_pid()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: a.bird_pid() not in (None, pid), 30, what="supervisord restarting the shim and BIRD")
        a.wait_established("Mesh_10_99_0_2")
        b.wait_established("Mesh_10_99_0_1")
        with open(os.path.join(sup_dir, "bird.log")) as f:
            assert "died" in f.read()
    finally:
        fab.close()
