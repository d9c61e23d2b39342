"""confd's renderer: golden files for reviewed datastore states, each checked by real bird/bird6 -p.

Regenerate after a reviewed template change with UPDATE_GOLDEN=1 (then read the diff!).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess

import pytest

from confd import resources
from confd.render import PACKAGE_TEMPLATES, RenderError, environment, render, render_text
from confd.state import BgpStore, Node, protocol_id
from libcalico import keys
from libcalico.bgp_values import PeerValue

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden", "confd")
STATES = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(GOLDEN, "*.json")))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _store(state: dict) -> BgpStore:
    n = state["node"]
    return BgpStore(Node(n["name"], n.get("ip4"), n.get("ip6"))).load_raw(state["kv"])


def _bird_check(binary: str, path: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} not installed: run scripts/install-deps")
    r = subprocess.run([binary, "-p", "-c", path], capture_output=True, text=True)
    assert r.returncode == 0, f"{binary} -p rejected {path}: {r.stderr}"


def test_at_least_eight_states():
    assert len(STATES) >= 8


@pytest.mark.parametrize("name", STATES)
@pytest.mark.parametrize("family", ["bird.cfg", "bird6.cfg"])
def test_golden(name, family, tmp_path):
    with open(os.path.join(GOLDEN, f"{name}.json")) as f:
        state = json.load(f)
    text = render_text(PACKAGE_TEMPLATES, f"{family}.j2", _store(state).context())
    expected_path = os.path.join(GOLDEN, f"{name}.{family}")
    if UPDATE:
        if text.strip():
            with open(expected_path, "w") as f:
                f.write(text)
        elif os.path.exists(expected_path):
            os.unlink(expected_path)
    if not os.path.exists(expected_path):
        assert not text.strip(), f"{family} rendered for {name} but no golden file expects it"
        return
    with open(expected_path) as f:
        assert text == f.read()
    out = tmp_path / family
    out.write_text(text)
    _bird_check("bird6" if family == "bird6.cfg" else "bird", str(out))


def test_bad_values_never_reach_config(caplog):
    with open(os.path.join(GOLDEN, "09-bad-values-rejected.json")) as f:
        state = json.load(f)
    with caplog.at_level(logging.ERROR, logger="confd.state"):
        store = _store(state)
    text = render_text(PACKAGE_TEMPLATES, "bird.cfg.j2", store.context())
    for bad in ("1.2.3.4", "abc", "verbose", "10.99.0.2;", "99999999999", "10.70.0.0"):
        assert bad not in text
    assert "Global_10_99_0_51" in text  # the valid peer beside them is rendered
    for key in ("/calico/bgp/v1/global/peer_v4/1.2.3.4", "/calico/bgp/v1/global/peer_v4/10.99.0.50",
                "/calico/bgp/v1/global/loglevel", "/calico/bgp/v1/host/node-b/ip_addr_v4",
                "/calico/bgp/v1/host/node-c/as_num", "/calico/v1/ipam/v4/pool/10.70.0.0-16"):
        assert key in store.rejected
        assert any(key in r.getMessage() for r in caplog.records), f"no log line names {key}"


def test_invalid_value_keeps_last_valid_value():
    store = BgpStore(Node("a", "10.0.0.1"))
    key = keys.parse("/calico/bgp/v1/global/peer_v4/10.0.0.9")
    assert store.put(key, PeerValue(ip="10.0.0.9", as_num=65000))
    store.reject(key.path, "as_num: 'abc' is not an AS number")
    ctx = store.context()
    assert [p["name"] for p in ctx["v4"]["global_peers"]] == ["Global_10_0_0_9"]
    assert key.path in store.rejected
    assert store.put(key, PeerValue(ip="10.0.0.9", as_num=65001))
    assert not store.rejected
    assert store.context()["v4"]["global_peers"][0]["as"] == 65001


def test_bad_global_as_without_last_value_blocks_rendering():
    store = BgpStore(Node("a", "10.0.0.1")).load_raw({"/calico/bgp/v1/global/as_num": "abc"})
    assert store.blocking_rejections() == ["/calico/bgp/v1/global/as_num: 'abc' is not an AS number"]
    store.load_raw({"/calico/bgp/v1/global/as_num": "64999"})
    assert store.blocking_rejections() == []


def test_mesh_never_peers_with_itself_even_under_another_name():
    store = BgpStore(Node("a", "10.0.0.1")).load_raw({
        "/calico/bgp/v1/global/node_mesh": '{"enabled": true}',
        "/calico/bgp/v1/host/a/ip_addr_v4": "10.0.0.1",
        "/calico/bgp/v1/host/old-a/ip_addr_v4": "10.0.0.1",
        "/calico/bgp/v1/host/b/ip_addr_v4": "10.0.0.2",
    })
    assert [p["name"] for p in store.context()["v4"]["mesh_peers"]] == ["Mesh_10_0_0_2"]


def test_etcd_address_wins_over_environment():
    store = BgpStore(Node("a", "10.0.0.1")).load_raw({"/calico/bgp/v1/host/a/ip_addr_v4": "10.0.0.5"})
    assert store.context()["node"]["router_id"] == "10.0.0.5"


@pytest.mark.parametrize("level,expected", [("debug", "debug all;"), ("info", "debug { states };"),
                                            ("none", None), ("warning", "debug { states };")])
def test_loglevel_mapping(level, expected):
    store = BgpStore(Node("a", "10.0.0.1")).load_raw({"/calico/bgp/v1/global/loglevel": level})
    text = render_text(PACKAGE_TEMPLATES, "bird.cfg.j2", store.context())
    if expected is None:
        assert "debug" not in text
    else:
        assert expected in text


def test_protocol_id():
    assert protocol_id("10.99.0.2") == "10_99_0_2"
    assert protocol_id("fd00:99::1") == "fd00_99__1"
    with pytest.raises(ValueError):
        protocol_id("1.2.3.4; protocol")


def test_output_is_stable_across_insertion_order():
    with open(os.path.join(GOLDEN, "08-several-blocks.json")) as f:
        state = json.load(f)
    a = render_text(PACKAGE_TEMPLATES, "bird.cfg.j2", _store(state).context())
    state["kv"] = dict(reversed(list(state["kv"].items())))
    b = render_text(PACKAGE_TEMPLATES, "bird.cfg.j2", _store(state).context())
    assert a == b


def test_broken_template_is_a_clear_error(tmp_path):
    (tmp_path / "x.j2").write_text("router id {{ node.nope }};\n")
    (tmp_path / "y.j2").write_text("{% for %}\n")
    env = environment(str(tmp_path))
    with pytest.raises(RenderError, match="x.j2"):
        render(env, "x.j2", {"node": {}})
    with pytest.raises(RenderError, match="y.j2 line 1"):
        render(env, "y.j2", {})


def test_packaged_resources_load(tmp_path):
    values = {"conf_dir": "/etc/calico", "run_dir": "/var/run/calico", "host": "node-a"}
    res, errors = resources.load_resources(resources.PACKAGE_CONF_D, values)
    assert errors == []
    by = {r.name: r for r in res}
    assert by["bird"].dest == "/etc/calico/bird.cfg"
    assert by["bird"].bird_socket() == "/var/run/calico/bird.ctl"
    assert by["bird6"].bird_socket() == "/var/run/calico/bird6.ctl"
    assert by["bird"].check_argv("/x/stage") == ["bird", "-p", "-c", "/x/stage"]
    assert by["bird"].watches("/calico/ipam/v2/host/node-a/ipv4/block/10.65.0.0-26")
    assert not by["bird"].watches("/calico/ipam/v2/host/node-b/ipv4/block/10.65.0.0-26")
    assert not by["bird"].watches("/calico/v1/ipam/v6/pool/fd00::-64")


def test_bad_resource_names_file_and_field(tmp_path):
    (tmp_path / "bad.toml").write_text('[template]\nsrc = "x.j2"\ndest = "relative/path"\n')
    (tmp_path / "worse.toml").write_text('[template]\nsrc = "x.j2"\ndest = "/{{.nope}}/x"\n')
    (tmp_path / "ok.toml").write_text('[template]\nsrc = "x.j2"\ndest = "/tmp/x"\nkeys = ["/a"]\n')
    res, errors = resources.load_resources(str(tmp_path), {"conf_dir": "/c", "run_dir": "/r", "host": "h"})
    assert [r.name for r in res] == ["ok"]
    assert any("bad.toml" in e and "dest" in e for e in errors)
    assert any("worse.toml" in e and "{{.nope}}" in e for e in errors)


def test_unknown_json_fields_are_not_a_change():
    store = BgpStore(Node("a", "10.0.0.1")).load_raw(
        {"/calico/bgp/v1/global/peer_v4/10.0.0.9": '{"ip": "10.0.0.9", "as_num": 65000}'})
    key = keys.parse("/calico/bgp/v1/global/peer_v4/10.0.0.9")
    assert not store.put(key, PeerValue(ip="10.0.0.9", as_num=65000, extra={"note": "x"}))
    assert store.put(key, PeerValue(ip="10.0.0.9", as_num=65001))


# ---- the confd loop without etcd: syncer-shaped updates in, files and status out ----------------

def _confd(tmp_path):
    from confd.daemon import Confd, Settings
    s = Settings(host="node-a", ip4="10.99.0.1", ip6=None, run_dir=str(tmp_path / "run"),
                 conf_dir=str(tmp_path / "conf"))
    c = Confd(s)
    c.load()
    return c


def _updates(kv: dict[str, str | None], in_sync: bool = True):
    from libcalico.bgp_values import InvalidValue, parse_key_value
    from libcalico.syncer import Update
    out = []
    for path, raw in kv.items():
        if raw is None:
            out.append(Update("delete", path))
            continue
        try:
            key, value = parse_key_value(path, raw)
        except InvalidValue as e:
            out.append(Update("invalid", path, error=str(e)))
            continue
        out.append(Update("put", path, value=value, parsed_key=key) if key else Update("unknown", path))
    return out + ([Update("in_sync")] if in_sync else [])


async def _process_all(c):
    for r in c.resources:
        if r.name in c._dirty:
            await c.process(r)
    c._dirty.clear()
    c.write_status()


async def test_confd_writes_only_changed_bytes_and_keeps_last_good(tmp_path, caplog):
    from confd.daemon import check_ready
    c = _confd(tmp_path)
    assert os.path.isfile(tmp_path / "conf" / "confd" / "conf.d" / "bird.toml")  # installed on first start
    c.apply(_updates({"/calico/bgp/v1/global/as_num": "64511",
                      "/calico/bgp/v1/host/node-a/ip_addr_v4": "10.99.0.1",
                      "/calico/bgp/v1/global/peer_v4/10.99.0.9": '{"ip": "10.99.0.9", "as_num": 65009}'}))
    await _process_all(c)
    cfg = tmp_path / "conf" / "bird.cfg"
    first = cfg.read_text()
    assert "Global_10_99_0_9" in first
    assert not (tmp_path / "conf" / "bird6.cfg").exists()  # no IPv6 on this node
    assert check_ready(c.s.status_path)[0]
    mtime = os.stat(cfg).st_mtime_ns
    c.apply(_updates({"/calico/bgp/v1/global/peer_v4/10.99.0.9": '{"as_num": "65009", "ip": "10.99.0.9"}'}))
    await _process_all(c)
    assert os.stat(cfg).st_mtime_ns == mtime and c.states["bird"].writes == 1
    # A template edit that renders but BIRD rejects: last good file kept, readiness names the failure.
    tpl = tmp_path / "conf" / "confd" / "templates" / "bird_common.j2"
    tpl.write_text(tpl.read_text().replace("router id", "router identity"))
    c.load()
    with caplog.at_level(logging.ERROR, logger="confd"):
        await _process_all(c)
    assert cfg.read_text() == first
    ok, msg = check_ready(c.s.status_path)
    assert not ok and "bird -p" in msg and "router identity" in msg
    assert not list((tmp_path / "conf").glob(".*.stage"))
    tpl.write_text(tpl.read_text().replace("router identity", "router id"))
    c.load()
    await _process_all(c)
    assert check_ready(c.s.status_path)[0]


async def test_confd_bad_value_keeps_config_and_fails_readiness(tmp_path):
    from confd.daemon import check_ready
    c = _confd(tmp_path)
    c.apply(_updates({"/calico/bgp/v1/global/as_num": "64511",
                      "/calico/bgp/v1/global/peer_v4/10.99.0.9": '{"ip": "10.99.0.9", "as_num": 65009}'}))
    await _process_all(c)
    cfg = tmp_path / "conf" / "bird.cfg"
    good = cfg.read_text()
    c.apply(_updates({"/calico/bgp/v1/global/peer_v4/10.99.0.9": '{"ip": "10.99.0.9", "as_num": "abc"}',
                      "/calico/bgp/v1/global/as_num": "abc"}, in_sync=False))
    await _process_all(c)
    assert cfg.read_text() == good
    ok, msg = check_ready(c.s.status_path)
    assert not ok and "/calico/bgp/v1/global/peer_v4/10.99.0.9" in msg and "/calico/bgp/v1/global/as_num" in msg
    c.apply(_updates({"/calico/bgp/v1/global/peer_v4/10.99.0.9": '{"ip": "10.99.0.9", "as_num": 65010}',
                      "/calico/bgp/v1/global/as_num": "64511"}, in_sync=False))
    await _process_all(c)
    assert "neighbor 10.99.0.9 as 65010;" in cfg.read_text()
    assert check_ready(c.s.status_path)[0]


def test_check_ready_without_confd(tmp_path):
    from confd.daemon import check_ready
    assert not check_ready(str(tmp_path / "confd.status"))[0]
    (tmp_path / "confd.status").write_text(json.dumps({"pid": 2 ** 22 + 1, "ready": True, "problems": []}))
    ok, msg = check_ready(str(tmp_path / "confd.status"))
    assert not ok and "not running" in msg


def test_settings_from_env(caplog):
    from confd.__main__ import settings_from_env
    s = settings_from_env({"HOSTNAME": "h1", "NODENAME": "n1", "IP": "10.0.0.1", "IP6": "fd00::1"})
    assert (s.host, s.ip4, s.ip6, s.run_dir, s.conf_dir) == ("n1", "10.0.0.1", "fd00::1", "/var/run/calico",
                                                             "/etc/calico")
    with caplog.at_level(logging.ERROR):
        s = settings_from_env({"HOSTNAME": "h1", "IP": "10.0.0.1; }", "CALICO_RUN_DIR": "/r"})
    assert s.host == "h1" and s.ip4 is None and s.run_dir == "/r"
    assert any("IP" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        settings_from_env({"NODENAME": "bad name;"})


async def test_other_hosts_bad_peer_does_not_concern_this_node(tmp_path):
    from confd.daemon import check_ready
    c = _confd(tmp_path)
    c.apply(_updates({"/calico/bgp/v1/host/node-b/peer_v4/10.0.0.9": '{"ip": "10.0.0.9", "as_num": "abc"}',
                      "/calico/bgp/v1/host/node-b/peer_v4/10.0.0.8": '{"ip": "10.0.0.8", "as_num": 1}',
                      "/calico/ipam/v2/host/node-b/ipv4/block/10.65.2.0-26": '{"state": "confirmed"}'}))
    await _process_all(c)
    assert check_ready(c.s.status_path)[0]
    text = (tmp_path / "conf" / "bird.cfg").read_text()
    assert "10.0.0.8" not in text and "10.65.2.0" not in text


@pytest.mark.parametrize("v", [4, 6])
def test_mesh_sessions_are_one_way(v):
    """Of every mesh pair exactly one side listens (`passive on`): simultaneous opens
    make BIRD close a just-established session, which aborts a peer's graceful restart."""
    ips = {4: ["10.99.0.9", "10.99.0.10", "10.99.0.100"], 6: ["fd00::9", "fd00::a", "fd00::1:0"]}[v]
    kv = {"/calico/bgp/v1/global/as_num": "64511", "/calico/bgp/v1/global/node_mesh": '{"enabled": true}'}
    for i, ip in enumerate(ips):
        kv[f"/calico/bgp/v1/host/n{i}/ip_addr_v4"] = f"10.99.0.{9 + i}" if v == 6 else ip
        if v == 6:
            kv[f"/calico/bgp/v1/host/n{i}/ip_addr_v6"] = ip
    passive = {}
    for i, ip in enumerate(ips):
        node = Node(f"n{i}", f"10.99.0.{9 + i}" if v == 6 else ip, ip if v == 6 else None)
        fam = BgpStore(node).load_raw(kv).context()[f"v{v}"]
        for p in fam["mesh_peers"]:
            passive[(ip, p["ip"])] = p["passive"]
    assert len(passive) == 6
    for (me, peer), listens in passive.items():
        assert listens != passive[(peer, me)], f"{me} and {peer} must not both connect (or both listen)"
    # numeric, not string, order: 10.99.0.10 > 10.99.0.9
    assert passive[(ips[0], ips[1])] is True and passive[(ips[1], ips[0])] is False
