"""confd + BIRD end to end: two nodes, etcd and a standard BGP router, each in its own namespace.

Real etcd, real BIRD/BIRD6, real kernel routes (inside the namespaces only).
One fabric per module (sessions take seconds to establish); each test leaves
the datastore as it found it.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from calico_testing.netns import wait_for
from tests.integration.bgp_cluster import Fabric, Node, plain_bird_router

G = "/calico/bgp/v1/global"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")


@pytest.fixture(scope="module")
def cluster():
    fab = Fabric()
    try:
        fab.put("/calico/v1/Ready", "true")
        fab.put(f"{G}/as_num", "64511")
        fab.put(f"{G}/node_mesh", '{"enabled": true}')
        fab.put("/calico/v1/ipam/v4/pool/10.65.0.0-16", '{"cidr": "10.65.0.0/16"}')
        fab.put("/calico/v1/ipam/v6/pool/fd80:24e2:f998:72d6::-64", '{"cidr": "fd80:24e2:f998:72d6::/64"}')
        a, b = Node(fab, "node-a", 1), Node(fab, "node-b", 2)
        for node in (a, b):
            node.register()
        fab.put("/calico/ipam/v2/host/node-a/ipv4/block/10.65.1.0-26", '{"state": "confirmed"}')
        fab.put("/calico/ipam/v2/host/node-b/ipv4/block/10.65.2.0-26", '{"state": "confirmed"}')
        fab.put("/calico/ipam/v2/host/node-a/ipv6/block/fd80:24e2:f998:72d6::-122", '{"state": "confirmed"}')
        for node in (a, b):
            node.start()
        yield fab, a, b
    finally:
        fab.close()


def test_mesh_v4_v6_and_aggregated_block(cluster):
    fab, a, b = cluster
    a.wait_established("Mesh_10_99_0_2")
    b.wait_established("Mesh_10_99_0_1")
    a.wait_established("Mesh_fd00_99__2", v6=True)
    b.wait_established("Mesh_fd00_99__1", v6=True)
    # A workload route inside A's block (as Felix would program it, on a cali* device).
    a.ns.run("ip", "link", "add", "cali0test", "type", "veth", "peer", "name", "wl0test")
    a.ns.run("ip", "link", "set", "cali0test", "up")
    a.ns.run("ip", "route", "add", "10.65.1.5/32", "dev", "cali0test", "proto", "80")
    wait_for(lambda: "10.65.1.0/26 via 10.99.0.1" in b.routes(), 30, what="A's block at B via BGP")
    wait_for(lambda: "fd80:24e2:f998:72d6::/122 via fd00:99::1" in b.routes(v6=True), 30,
             what="A's v6 block at B via BGP")
    wait_for(lambda: "10.65.2.0/26 via 10.99.0.2" in a.routes(), 30, what="B's block at A via BGP")
    # A's BIRD has learned the /32 from its kernel; the export filter must keep it from B.
    wait_for(lambda: any("10.65.1.5/32" in ln.text for ln in a.birdc("show route 10.65.1.5/32")), 15,
             what="A's BIRD learning the workload route from the kernel")
    time.sleep(1)
    assert "10.65.1.5" not in b.routes(), "a route more specific than A's block leaked to B"
    assert a.confd_ready()[0], a.confd_ready()[1]
    ok = a.cmd("calico-bird", "--check-ready", check=False)
    assert ok.returncode == 0, ok.stdout
    assert a.cmd("calico-bird", "--check-live", check=False).returncode == 0


def test_peer_added_and_removed_live(cluster):
    fab, a, b = cluster
    a.wait_established("Mesh_10_99_0_2")
    pid = a.bird_pid()
    assert pid is not None
    since = _clock(a.protocols()["Mesh_10_99_0_2"].since)
    # BIRD 1.6 prints `since` from two separately truncated clocks (monotonic
    # and wall), so one state change can read one second apart. Leave a gap of
    # more than that before the change: a reset would then move `since` by >= 2 s.
    time.sleep(2.5)
    fab.put(f"{G}/peer_v4/10.99.0.77", '{"ip": "10.99.0.77", "as_num": "64777"}')
    wait_for(lambda: "Global_10_99_0_77" in a.protocols(), 10, what="peer added on A")
    wait_for(lambda: "Global_10_99_0_77" in b.protocols(), 10, what="peer added on B")
    assert not a.cmd("calico-bird", "--check-ready", check=False).returncode == 0  # 10.99.0.77 is nobody
    fab.delete(f"{G}/peer_v4/10.99.0.77")
    wait_for(lambda: "Global_10_99_0_77" not in a.protocols(), 10, what="peer removed on A")
    assert a.bird_pid() == pid, "BIRD was restarted instead of reconfigured"
    mesh = a.protocols()["Mesh_10_99_0_2"]
    assert mesh.established, "the mesh session went down on an unrelated change"
    moved = (_clock(mesh.since) - since) % 86400
    assert moved <= 1 or moved == 86399, f"the mesh session was reset by an unrelated change (since moved {moved} s)"


def _clock(since: str) -> int:
    """Seconds of the day from BIRD's since column (`YYYY-MM-DD HH:MM:SS`: confd sets `timeformat protocol
    iso long`; a bare `HH:MM:SS` is BIRD's default)."""
    h, m, s = (int(x) for x in since.split()[-1].split(":"))
    return h * 3600 + m * 60 + s


@pytest.mark.parametrize("key,bad,good", [
    (f"{G}/peer_v4/10.99.0.78", '{"ip": "10.99.0.78", "as_num": "abc"}', '{"ip": "10.99.0.78", "as_num": "64778"}'),
    (f"{G}/peer_v4/1.2.3.4", '{"ip": "1.2.3.4; protocol", "as_num": "64779"}', None),
    (f"{G}/as_num", "abc", "64511"),
])
def test_bad_value_rejected_and_fixed(cluster, key, bad, good):
    fab, a, b = cluster
    pid = a.bird_pid()
    assert pid is not None
    before = a.config()
    fab.put(key, bad)
    wait_for(lambda: key in a.log("confd") and not a.confd_ready()[0], 10, what=f"confd rejecting {key}")
    assert key in a.confd_ready()[1]
    assert any(key in line and "rejected" in line for line in a.log("confd").splitlines())
    time.sleep(0.5)
    assert a.config() == before, "a bad value changed BIRD's config"
    assert "abc" not in a.config() and "1.2.3.4" not in a.config()
    assert a.bird_pid() == pid
    a.wait_established("Mesh_10_99_0_2", timeout=5)
    if good is None:
        fab.delete(key)
    else:
        fab.put(key, good)
    wait_for(lambda: a.confd_ready()[0], 10, what="confd ready again after the fix")
    if key.endswith("10.99.0.78"):
        wait_for(lambda: "Global_10_99_0_78" in a.protocols(), 10, what="fixed peer rendered")
        fab.delete(key)
        wait_for(lambda: "Global_10_99_0_78" not in a.protocols(), 10, what="fixed peer removed")
    assert a.bird_pid() == pid


def test_global_peer_router(cluster):
    fab, a, b = cluster
    rtr = plain_bird_router(fab, 100, 64999, [(a.ip4, 64511), (b.ip4, 64511)], "192.0.2.0/24")
    fab.put(f"{G}/peer_v4/10.99.0.100", '{"ip": "10.99.0.100", "as_num": "64999"}')
    try:
        a.wait_established("Global_10_99_0_100")
        b.wait_established("Global_10_99_0_100")

        def router_routes() -> str:
            ctl = os.path.join(fab.tmp, "router.ctl")
            return rtr.run("birdc", "-s", ctl, "show", "route").stdout

        wait_for(lambda: "10.65.1.0/26" in router_routes() and "10.65.2.0/26" in router_routes(), 30,
                 what="router learning both nodes' blocks")
        for node in (a, b):
            wait_for(lambda n=node: "192.0.2.0/24 via 10.99.0.100" in n.routes(), 30,
                     what=f"router's prefix at {node.name}")
    finally:
        fab.delete(f"{G}/peer_v4/10.99.0.100")
    wait_for(lambda: "Global_10_99_0_100" not in a.protocols(), 10, what="router peer removed")


CONFIRMED = '{"state": "confirmed"}'
BLK = "/calico/ipam/v2/host"


def test_hostile_host_cannot_freeze_bgp(cluster):
    """A host that registers node-b's addresses (after node-b did), claims node-a's block, and
    affinities under node-a's name for the etcd server's /32 and for 0.0.0.0/0: every such key is left
    out on its own, and a later legitimate peer and block still reach bird.cfg and BIRD."""
    fab, a, b = cluster
    evil = "/calico/bgp/v1/host/evil"
    hostile = {f"{evil}/ip_addr_v4": b.ip4, f"{evil}/ip_addr_v6": b.ip6, f"{evil}/as_num": "64666",
               f"{BLK}/evil/ipv4/block/10.65.1.0-26": CONFIRMED,
               f"{BLK}/node-a/ipv4/block/10.99.0.254-32": CONFIRMED,
               f"{BLK}/node-a/ipv4/block/0.0.0.0-0": CONFIRMED}
    later = {f"{G}/peer_v4/10.99.0.80": '{"ip": "10.99.0.80", "as_num": "64780"}',
             f"{BLK}/node-a/ipv4/block/10.65.4.0-26": CONFIRMED}
    a.wait_established("Mesh_10_99_0_2")
    try:
        for k, v in hostile.items():
            fab.put(k, v)
        wait_for(lambda: f"{evil}/ip_addr_v4" in a.log("confd") and not a.confd_ready()[0], 10,
                 what="node-a reporting the hostile keys")
        for k, v in later.items():
            fab.put(k, v)
        wait_for(lambda: "Global_10_99_0_80" in a.protocols(), 15, what="later peer in node-a's BIRD")
        wait_for(lambda: "Global_10_99_0_80" in b.protocols(), 15, what="later peer in node-b's BIRD")
        wait_for(lambda: "10.65.4.0/26 via 10.99.0.1" in b.routes(), 30, what="later block at node-b via BGP")
        cfg, cfg6 = a.config(), a.config(v6=True)
        assert cfg.count("protocol bgp Mesh_10_99_0_2 ") == 1 and "# For host node-b" in cfg
        assert cfg6.count("protocol bgp Mesh_fd00_99__2 ") == 1
        assert "64666" not in cfg + cfg6 and "evil" not in cfg + cfg6
        assert "route 10.65.1.0/26 blackhole;" in cfg  # node-a created its claim first: it keeps the block
        assert "0.0.0.0/0" not in cfg and "10.99.0.254/32" not in cfg
        assert "default" not in b.routes() and "10.99.0.254 via" not in b.routes()
        assert a.established("Mesh_10_99_0_2") and b.established("Mesh_10_99_0_1")
        # node-a answers for the affinities under its own name; the squatter's keys are not node-b's problem.
        msg = a.confd_ready()[1]
        assert f"{BLK}/node-a/ipv4/block/0.0.0.0-0" in msg and f"{BLK}/node-a/ipv4/block/10.99.0.254-32" in msg
        assert b.confd_ready()[0], b.confd_ready()[1]
        assert any(f"{evil}/ip_addr_v4" in ln and "/calico/bgp/v1/host/node-b/ip_addr_v4" in ln
                   for ln in b.log("confd").splitlines()), "the conflict is logged naming both keys"
    finally:
        for k in list(hostile) + list(later):
            fab.delete(k)
    wait_for(lambda: a.confd_ready()[0], 10, what="node-a ready once the hostile keys are gone")
    wait_for(lambda: "Global_10_99_0_80" not in a.protocols(), 10, what="later peer removed")
    wait_for(lambda: "10.65.4.0/26" not in b.routes(), 30, what="later block withdrawn")


def test_key_bird_rejects_is_left_out_and_later_changes_still_apply(cluster):
    """An operator's template edit that BIRD accepts for 2-byte AS numbers only, then a node peer with a
    4-byte AS: that peer is left out (named with BIRD's complaint), a later peer still reaches BIRD, and
    the fix brings the peer back."""
    fab, a, b = cluster
    tpl = os.path.join(a.conf_dir, "confd", "templates", "bird_common.j2")
    with open(tpl) as f:
        orig = f.read()
    node_section = orig.index("# ------------- Node-specific peers")
    edited = orig[:node_section] + orig[node_section:].replace(
        "  neighbor {{ p.ip }} as {{ p.as }};\n",
        "  neighbor {{ p.ip }} as {{ p.as }};\n  export where bgp_community ~ [({{ p.as }}, 1)];\n", 1)
    bad = "/calico/bgp/v1/host/node-a/peer_v4/10.99.0.81"
    later = f"{G}/peer_v4/10.99.0.82"
    try:
        with open(tpl, "w") as f:
            f.write(edited)
        wait_for(lambda: a.confd_ready()[0], 10, what="node-a ready with the edited template")
        fab.put(bad, '{"ip": "10.99.0.81", "as_num": "4200000081"}')
        wait_for(lambda: bad in a.confd_ready()[1], 10, what="node-a reporting the key BIRD rejects")
        assert any(bad in ln and "out of range" in ln for ln in a.log("confd").splitlines())
        fab.put(later, '{"ip": "10.99.0.82", "as_num": "64782"}')
        wait_for(lambda: "Global_10_99_0_82" in a.protocols(), 15, what="later peer in node-a's BIRD")
        assert "Node_10_99_0_81" not in a.protocols()
        fab.put(bad, '{"ip": "10.99.0.81", "as_num": "64781"}')
        wait_for(lambda: "Node_10_99_0_81" in a.protocols() and a.confd_ready()[0], 15,
                 what="fixed peer back and node-a ready")
    finally:
        fab.delete(bad)
        fab.delete(later)
        with open(tpl, "w") as f:
            f.write(orig)
    wait_for(lambda: "Global_10_99_0_82" not in a.protocols() and "Node_10_99_0_81" not in a.protocols(), 10,
             what="test peers removed")
    wait_for(lambda: "bgp_community" not in a.config() and a.confd_ready()[0], 10, what="template restored")


BURST = """
import asyncio, sys
from libcalico.datastore import DatastoreClient, op_put
async def main():
    c = DatastoreClient(endpoints=[sys.argv[1]])
    ops = [op_put(f"@G@/peer_v4/10.99.1.{i}", '{"ip": "10.99.1.%d", "as_num": %d}' % (i, 65000 + i))
           for i in range(1, 101)]
    ok, _ = await c.txn([], ops)
    assert ok
    await c.close()
asyncio.run(main())
""".replace("@G@", G)


def test_burst_is_one_reload(cluster):
    """100 peers written in one transaction reach BIRD as one reload.  (How changes spread over time are
    grouped is tested on a fake clock in tests/unit/test_confd_debounce.py; `make bench` times a burst.)"""
    fab, a, b = cluster
    wait_for(lambda: a.cmd("calico-bird", "--check-live").returncode == 0, 20, what="BIRD up on A")
    before = a.log("confd").count("BIRD reconfigured")
    r = fab.f.run(os.path.join(VENV_BIN, "python"), "-c", BURST, fab.etcd.endpoint)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "Global_10_99_1_100" in a.config(), 15, what="burst rendered")
    # A marker written after the burst is rendered: confd handles changes in order, so once the marker
    # is in BIRD every reload the burst caused is in the log, and the marker added exactly one.
    fab.put(f"{G}/peer_v4/10.99.1.200", '{"ip": "10.99.1.200", "as_num": 65200}')
    wait_for(lambda: "Global_10_99_1_200" in a.protocols()
             and a.log("confd").count("BIRD reconfigured") >= before + 2, 15, what="marker peer in BIRD")
    reloads = a.log("confd").count("BIRD reconfigured") - before - 1
    assert reloads == 1, f"{reloads} reloads for 100 changes in one transaction"
    assert all(f"Global_10_99_1_{i}" in a.protocols() for i in (1, 50, 100))
    fab.etcd.delete(f"{G}/peer_v4/10.99.1.", prefix=True)
    wait_for(lambda: "10_99_1_" not in a.config(), 15, what="burst peers removed")


def test_template_edit_live_and_broken_template_kept(cluster):
    fab, a, b = cluster
    tpl = os.path.join(a.conf_dir, "confd", "templates", "bird_common.j2")
    with open(tpl) as f:
        orig = f.read()
    try:
        with open(tpl, "w") as f:
            f.write(orig.replace("log stderr all;", "log stderr all;\n# operator was here"))
        wait_for(lambda: "# operator was here" in a.config(), 10, what="template edit picked up")
        good = a.config()
        with open(tpl, "w") as f:
            f.write(orig.replace("log stderr all;", "log stderr all;\n{{ node.no_such_thing }}"))
        wait_for(lambda: not a.confd_ready()[0], 10, what="broken template makes confd unready")
        assert "bird_common.j2" in a.confd_ready()[1] or "bird.cfg.j2" in a.confd_ready()[1]
        assert a.config() == good
        with open(tpl, "w") as f:
            f.write(orig.replace("router id", "router identity"))  # renders, but BIRD rejects it
        # "check `bird -p": the broken template's own error ("failed to render") is still reported
        # until confd has rendered and checked the edit.
        wait_for(lambda: "check `bird -p" in a.confd_ready()[1], 10, what="bird -p failure reported")
        assert re.search(r"check `bird -p -c .*` failed", a.log("confd"))
        assert a.config() == good
    finally:
        with open(tpl, "w") as f:
            f.write(orig)
    wait_for(lambda: a.confd_ready()[0], 10, what="confd ready after restoring the template")
    assert "# operator was here" not in a.config()


def test_mesh_off_removes_sessions(cluster):
    fab, a, b = cluster
    fab.put(f"{G}/node_mesh", '{"enabled": false}')
    try:
        wait_for(lambda: "Mesh_10_99_0_2" not in a.protocols(), 10, what="mesh removed on A")
        wait_for(lambda: "Mesh_fd00_99__2" not in a.protocols(v6=True), 10, what="v6 mesh removed on A")
        wait_for(lambda: "Mesh_10_99_0_1" not in b.protocols(), 10, what="mesh removed on B")
    finally:
        fab.put(f"{G}/node_mesh", '{"enabled": true}')
    a.wait_established("Mesh_10_99_0_2")


def test_killed_bird_makes_shim_exit_nonzero(cluster):
    """Run last: kills node B's BIRD. (Restart under supervisord: test_bird_control.)"""
    fab, a, b = cluster
    shim = b.procs["bird"]
    pid = b.bird_pid()
    os.kill(pid, signal.SIGKILL)
    assert shim.wait(10) != 0
    assert "died" in b.log("bird")
