"""Keys that are valid one by one but contradict each other, or that BIRD rejects: each is left out
on its own, by a rule independent of arrival order, and everything else still reaches a config the
real `bird -p` accepts."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess

import pytest

from confd.render import PACKAGE_TEMPLATES, render_text
from confd.state import BgpStore, Node

G = "/calico/bgp/v1/global"
H = "/calico/bgp/v1/host"
POOL4 = {"/calico/v1/ipam/v4/pool/10.65.0.0-16": '{"cidr": "10.65.0.0/16"}'}
BASE = {f"{G}/as_num": "64511", f"{G}/node_mesh": '{"enabled": true}', f"{H}/node-a/ip_addr_v4": "10.99.0.1",
        **POOL4}


def _bird_ok(text: str, tmp_path, binary: str = "bird") -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} not installed: run scripts/install-deps")
    path = tmp_path / f"{binary}.cfg"
    path.write_text(text)
    r = subprocess.run([binary, "-p", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"{binary} -p rejected the config: {r.stderr}\n{text}"


def _protocols(text: str) -> list[str]:
    return re.findall(r"^protocol bgp (\S+)", text, re.M)


def _store(kv: dict[str, str], revisions: dict[str, int] | None = None) -> BgpStore:
    store = BgpStore(Node("node-a", "10.99.0.1"))
    return store.load_raw(kv, revisions) if revisions else store.load_raw(kv)


def _render(store: BgpStore) -> str:
    return render_text(PACKAGE_TEMPLATES, "bird.cfg.j2", store.context())


# ---- two hosts, one address --------------------------------------------------------------------------

def test_duplicate_host_address_renders_one_session_that_bird_accepts(tmp_path):
    kv = {**BASE, f"{H}/node-b/ip_addr_v4": "10.99.0.2", f"{H}/node-b/as_num": "64512",
          f"{H}/evil/ip_addr_v4": "10.99.0.2", f"{H}/evil/as_num": "64666"}
    text = _render(_store(kv))
    _bird_ok(text, tmp_path)
    assert _protocols(text) == ["Mesh_10_99_0_2"]
    # etcd's create revisions decide: the host that registered first keeps the address.
    store = _store(kv, {f"{H}/node-b/ip_addr_v4": 10, f"{H}/evil/ip_addr_v4": 50})
    text = _render(store)
    _bird_ok(text, tmp_path)
    assert _protocols(text) == ["Mesh_10_99_0_2"]
    assert "# For host node-b" in text and "as 64512;" in text and "64666" not in text
    ctx, findings = store.resolve()
    [f] = findings
    assert f.path == f"{H}/evil/ip_addr_v4" and f"{H}/node-b/ip_addr_v4" in f.reason and "revision 10" in f.reason
    assert not f.mine  # another host's squatting never makes this node unready


def test_duplicate_address_owner_is_independent_of_arrival_order():
    kv = {**BASE, f"{H}/node-b/ip_addr_v4": "10.99.0.2", f"{H}/evil/ip_addr_v4": "10.99.0.2"}
    revs = {f"{H}/node-b/ip_addr_v4": 10, f"{H}/evil/ip_addr_v4": 50}
    a = _render(_store(kv, revs))
    b = _render(_store(dict(reversed(list(kv.items()))), revs))
    assert a == b and "# For host node-b" in a
    # Without create revisions (plain text), the smallest host name keeps it, whatever the order.
    assert "# For host evil" in _render(_store(kv)) == _render(_store(dict(reversed(list(kv.items())))))


def test_another_host_registering_this_nodes_address_first_is_reported_as_this_nodes_problem(tmp_path):
    kv = {**BASE, f"{H}/evil/ip_addr_v4": "10.99.0.1", f"{H}/node-b/ip_addr_v4": "10.99.0.2"}
    store = _store(kv, {f"{H}/evil/ip_addr_v4": 5, f"{H}/node-a/ip_addr_v4": 9})
    text = _render(store)
    _bird_ok(text, tmp_path)
    assert _protocols(text) == ["Mesh_10_99_0_2"]  # never a session to its own address
    [f] = store.resolve()[1]
    assert f.path == f"{H}/node-a/ip_addr_v4" and f.mine and f"{H}/evil/ip_addr_v4" in f.reason


def test_one_session_per_neighbour_and_never_to_itself(tmp_path):
    kv = {**BASE,
          f"{H}/node-b/ip_addr_v4": "10.99.0.2",
          f"{H}/node-c/ip_addr_v4": "10.99.0.3",
          # a global peer that is also a mesh node, and a global + node-specific peer on one address
          f"{G}/peer_v4/10.99.0.3": '{"ip": "10.99.0.3", "as_num": 65003}',
          f"{G}/peer_v4/10.99.0.9": '{"ip": "10.99.0.9", "as_num": 65009}',
          f"{H}/node-a/peer_v4/10.99.0.9": '{"ip": "10.99.0.9", "as_num": 65109}',
          # peers on this node's own address, global and node-specific
          f"{G}/peer_v4/10.99.0.1": '{"ip": "10.99.0.1", "as_num": 65001}',
          f"{H}/node-a/peer_v4/10.99.0.1": '{"ip": "10.99.0.1", "as_num": 65001}'}
    store = _store(kv)
    text = _render(store)
    _bird_ok(text, tmp_path)
    protos = _protocols(text)
    assert sorted(protos) == ["Global_10_99_0_3", "Mesh_10_99_0_2", "Node_10_99_0_9"]
    assert len(re.findall(r"neighbor 10\.99\.0\.9 ", text)) == 1 and "as 65109;" in text
    assert "neighbor 10.99.0.1 " not in text
    lost = {f.path: f.reason for f in store.resolve()[1]}
    assert f"{H}/node-a/peer_v4/10.99.0.9" in lost[f"{G}/peer_v4/10.99.0.9"]
    assert f"{G}/peer_v4/10.99.0.3" in lost[f"{H}/node-c/ip_addr_v4"]


def test_duplicate_v6_addresses_render_valid_bird6(tmp_path):
    kv = {**BASE, f"{H}/node-a/ip_addr_v6": "fd00:99::1", f"{H}/node-b/ip_addr_v4": "10.99.0.2",
          f"{H}/node-b/ip_addr_v6": "fd00:99::2", f"{H}/x/ip_addr_v4": "10.99.0.7",
          f"{H}/x/ip_addr_v6": "fd00:99::2", f"{G}/peer_v6/fd00:99::2": '{"ip": "fd00:99::2", "as_num": 65002}'}
    store = BgpStore(Node("node-a", "10.99.0.1", "fd00:99::1")).load_raw(kv)
    text = render_text(PACKAGE_TEMPLATES, "bird6.cfg.j2", store.context())
    _bird_ok(text, tmp_path, "bird6")
    assert _protocols(text) == ["Global_fd00_99__2"]


def test_conflicts_are_logged_once_naming_both_keys(caplog):
    store = _store({**BASE, f"{H}/node-b/ip_addr_v4": "10.99.0.2", f"{H}/evil/ip_addr_v4": "10.99.0.2"},
                   {f"{H}/node-b/ip_addr_v4": 3, f"{H}/evil/ip_addr_v4": 4})
    with caplog.at_level(logging.WARNING, logger="confd.state"):
        for _ in range(5):
            store.note(store.resolve()[1])
    lines = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(lines) == 1
    assert f"{H}/evil/ip_addr_v4" in lines[0] and f"{H}/node-b/ip_addr_v4" in lines[0]


# ---- block affinities ---------------------------------------------------------------------------------

def test_only_blocks_inside_a_pool_with_its_block_size_are_announced(tmp_path):
    blk = "/calico/ipam/v2/host/node-a/ipv4/block/"
    blk6 = "/calico/ipam/v2/host/node-a/ipv6/block/"
    kv = {**BASE, f"{H}/node-b/ip_addr_v4": "10.99.0.2",
          "/calico/v1/ipam/v4/pool/10.70.0.0-28": '{"cidr": "10.70.0.0/28"}',
          "/calico/v1/ipam/v6/pool/fd00:65::-64": '{"cidr": "fd00:65::/64"}',
          f"{blk}10.65.1.0-26": '{"state": "confirmed"}',        # a real block
          f"{blk}10.70.0.0-28": '{"state": "confirmed"}',        # the whole of a small pool: its block
          f"{blk}10.99.0.254-32": '{"state": "confirmed"}',      # the etcd server's address
          f"{blk}0.0.0.0-0": '{"state": "confirmed"}',           # everything
          f"{blk}10.65.2.16-28": '{"state": "confirmed"}',       # part of node-b's block
          f"{blk}10.65.0.0-24": '{"state": "confirmed"}',        # several blocks at once
          f"{blk}10.80.0.0-26": '{"state": "confirmed"}',        # outside every pool
          f"{blk6}fd00:65::-122": '{"state": "confirmed"}',      # a real v6 block
          f"{blk6}fd00:65::-64": '{"state": "confirmed"}',       # the whole v6 pool
          "/calico/ipam/v2/host/node-b/ipv4/block/10.65.2.0-26": '{"state": "confirmed"}'}
    store = BgpStore(Node("node-a", "10.99.0.1", "fd00:99::1")).load_raw(kv)
    ctx, findings = store.resolve()
    assert ctx["v4"]["blocks"] == ["10.65.1.0/26", "10.70.0.0/28"]
    assert ctx["v6"]["blocks"] == ["fd00:65::/122"]
    text = render_text(PACKAGE_TEMPLATES, "bird.cfg.j2", ctx)
    _bird_ok(text, tmp_path)
    _bird_ok(render_text(PACKAGE_TEMPLATES, "bird6.cfg.j2", ctx), tmp_path, "bird6")
    for bad in ("10.99.0.254/32", "0.0.0.0/0", "10.65.2.16/28", "10.65.0.0/24", "10.80.0.0"):
        assert bad not in text
    assert "route 10.65.1.0/26 blackhole;" in text
    left = {f.path for f in findings}
    assert left == {f"{blk}10.99.0.254-32", f"{blk}0.0.0.0-0", f"{blk}10.65.2.16-28", f"{blk}10.65.0.0-24",
                    f"{blk}10.80.0.0-26", f"{blk6}fd00:65::-64"}
    assert all(f.mine for f in findings)


def test_block_claimed_by_two_hosts_stays_with_the_first_claim():
    mine = "/calico/ipam/v2/host/node-a/ipv4/block/10.65.1.0-26"
    other = "/calico/ipam/v2/host/evil/ipv4/block/10.65.1.0-26"
    kv = {**BASE, mine: '{"state": "confirmed"}', other: '{"state": "confirmed"}'}
    later = _store(kv, {mine: 10, other: 20})
    assert later.context()["v4"]["blocks"] == ["10.65.1.0/26"] and not later.resolve()[1]
    earlier = _store(kv, {mine: 20, other: 10})
    assert earlier.context()["v4"]["blocks"] == []
    [f] = earlier.resolve()[1]
    assert f.path == mine and other in f.reason and f.mine
    # An unconfirmed claim elsewhere takes nothing away.
    pending = _store({**kv, other: '{"state": "pending"}'}, {mine: 20, other: 10})
    assert pending.context()["v4"]["blocks"] == ["10.65.1.0/26"]


# ---- the loop: a key BIRD rejects is left out, the rest applied ---------------------------------------

def _confd(tmp_path):
    from confd.daemon import Confd, Settings
    s = Settings(host="node-a", ip4="10.99.0.1", ip6=None, run_dir=str(tmp_path / "run"),
                 conf_dir=str(tmp_path / "conf"))
    c = Confd(s)
    c.load()
    return c


def _updates(kv: dict[str, str | None], revs: dict[str, int] | None = None):
    from libcalico.bgp_values import parse_key_value
    from libcalico.syncer import Update
    out = []
    for path, raw in kv.items():
        if raw is None:
            out.append(Update("delete", path))
            continue
        key, value = parse_key_value(path, raw)
        out.append(Update("put", path, value=value, parsed_key=key, create_revision=(revs or {}).get(path, 0)))
    return out + [Update("in_sync")]


async def _process_all(c):
    for r in c.resources:
        if r.name in c._dirty:
            await c.process(r)
    c._dirty.clear()
    c.write_status()


def _community_template(c) -> None:
    """An operator's edit: tag what each explicit peer gets with (peer AS, 1).  Fine for 2-byte AS
    numbers; BIRD refuses the whole file as soon as one peer has a 4-byte AS."""
    tpl = os.path.join(c.s.confd_dir, "templates", "bird_common.j2")
    with open(tpl) as f:
        text = f.read()
    node_section = text.index("# ------------- Node-specific peers")
    edited = text[:node_section] + text[node_section:].replace(
        "  neighbor {{ p.ip }} as {{ p.as }};\n",
        "  neighbor {{ p.ip }} as {{ p.as }};\n  export where bgp_community ~ [({{ p.as }}, 1)];\n", 1)
    assert edited != text
    with open(tpl, "w") as f:
        f.write(edited)
    c.load()


async def test_key_rejected_by_bird_is_left_out_and_the_rest_applied(tmp_path, caplog):
    from confd.daemon import check_ready
    c = _confd(tmp_path)
    _community_template(c)
    bad = f"{H}/node-a/peer_v4/10.99.0.66"
    kv = {**BASE, f"{H}/node-b/ip_addr_v4": "10.99.0.2",
          "/calico/ipam/v2/host/node-a/ipv4/block/10.65.1.0-26": '{"state": "confirmed"}',
          f"{H}/node-a/peer_v4/10.99.0.5": '{"ip": "10.99.0.5", "as_num": 65005}'}
    kv.update({f"{G}/peer_v4/10.98.0.{i}": f'{{"ip": "10.98.0.{i}", "as_num": {65100 + i}}}' for i in range(1, 101)})
    c.apply(_updates(kv))
    await _process_all(c)
    cfg = tmp_path / "conf" / "bird.cfg"
    assert "Node_10_99_0_5" in cfg.read_text()
    # One key BIRD refuses...
    with caplog.at_level(logging.WARNING):
        c.apply(_updates({bad: '{"ip": "10.99.0.66", "as_num": 4200000001}'}))
        await _process_all(c)
    # ...does not hold back a later, unrelated change.
    checks_before = c.states["bird"].checks
    c.apply(_updates({f"{H}/node-a/peer_v4/10.99.0.7": '{"ip": "10.99.0.7", "as_num": 65007}',
                      "/calico/ipam/v2/host/node-a/ipv4/block/10.65.3.0-26": '{"state": "confirmed"}'}))
    await _process_all(c)
    text = cfg.read_text()
    _bird_ok(text, tmp_path)
    assert "Node_10_99_0_7" in text and "route 10.65.3.0/26 blackhole;" in text and "Mesh_10_99_0_2" in text
    assert "Global_10_98_0_100" in text and "Node_10_99_0_66" not in text
    # Found again among last time's suspects: a confirming check, not a new search over 100+ keys.
    assert c.states["bird"].checks - checks_before <= 3
    lines = [r.getMessage() for r in caplog.records if bad in r.getMessage()]
    assert any("out of range" in ln for ln in lines), lines  # names the key and BIRD's complaint
    ok, msg = check_ready(c.s.status_path)
    assert not ok and bad in msg  # this node's own key: readiness says so
    # The bad key fixed: everything back, nothing left out.
    c.apply(_updates({bad: '{"ip": "10.99.0.66", "as_num": 65066}'}))
    await _process_all(c)
    assert "Node_10_99_0_66" in cfg.read_text()
    assert check_ready(c.s.status_path)[0]
    assert c.left_out() == []
    assert not list((tmp_path / "conf").glob(".*.stage"))


async def test_search_for_culprits_is_bounded(tmp_path):
    """With one bad key among about 200, the search costs a few dozen `bird -p` runs at most."""
    c = _confd(tmp_path)
    _community_template(c)
    kv = dict(BASE)
    kv.update({f"{H}/node-a/peer_v4/10.97.{i // 200}.{i % 200 + 1}":
               f'{{"ip": "10.97.{i // 200}.{i % 200 + 1}", "as_num": {64600 + i}}}' for i in range(200)})
    kv[f"{H}/node-a/peer_v4/10.97.9.9"] = '{"ip": "10.97.9.9", "as_num": 4200000009}'
    c.apply(_updates(kv))
    await _process_all(c)
    st = c.states["bird"]
    text = (tmp_path / "conf" / "bird.cfg").read_text()
    assert len(_protocols(text)) == 200 and "Node_10_97_9_9" not in text
    print(f"1 bad key among 201: {st.checks} checks")
    assert st.checks <= 2 + 2 * 8 + 2


async def test_fault_outside_the_keys_keeps_the_last_good_file(tmp_path):
    """A broken template is nobody's key: nothing is left out, the last good file stays."""
    c = _confd(tmp_path)
    c.apply(_updates({**BASE, f"{G}/peer_v4/10.99.0.9": '{"ip": "10.99.0.9", "as_num": 65009}'}))
    await _process_all(c)
    cfg = tmp_path / "conf" / "bird.cfg"
    good = cfg.read_text()
    tpl = os.path.join(c.s.confd_dir, "templates", "bird_common.j2")
    with open(tpl) as f:
        orig = f.read()
    with open(tpl, "w") as f:
        f.write(orig.replace("router id", "router identity"))
    c.load()
    await _process_all(c)
    assert cfg.read_text() == good and c.states["bird"].error and c.left_out() == []


async def test_another_hosts_earlier_claim_withdraws_our_block_until_it_is_gone(tmp_path):
    from confd.daemon import check_ready
    c = _confd(tmp_path)
    mine = "/calico/ipam/v2/host/node-a/ipv4/block/10.65.1.0-26"
    other = "/calico/ipam/v2/host/node-b/ipv4/block/10.65.1.0-26"
    unrelated = "/calico/ipam/v2/host/node-b/ipv4/block/10.65.2.0-26"
    c.apply(_updates({**BASE, mine: '{"state": "confirmed"}'}, {mine: 20}))
    await _process_all(c)
    cfg = tmp_path / "conf" / "bird.cfg"
    assert "route 10.65.1.0/26 blackhole;" in cfg.read_text()
    c.apply(_updates({unrelated: '{"state": "confirmed"}'}, {unrelated: 5})[:-1])
    assert not c._dirty  # another host's block that is not ours costs no render
    c.apply(_updates({other: '{"state": "confirmed"}'}, {other: 10})[:-1])
    await _process_all(c)
    assert "10.65.1.0" not in cfg.read_text()
    ok, msg = check_ready(c.s.status_path)
    assert not ok and mine in msg and other in msg
    c.apply(_updates({other: None})[:-1])
    await _process_all(c)
    assert "route 10.65.1.0/26 blackhole;" in cfg.read_text() and check_ready(c.s.status_path)[0]
