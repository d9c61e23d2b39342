"""`calico-node -felix-ready -bird-ready -bird6-ready -felix-live -bird-live -bird6-live`: parsing and
per-service judgement with fake services (the real BIRD with a dead peer is in
tests/integration/test_probes_node.py)."""

from __future__ import annotations

import pytest

from calico_node import __main__ as node_main
from calico_node import health, supervisor


def state(**kw) -> supervisor.NodeState:
    base = dict(nodename="n", ip="10.0.0.1", ip6="fd00::1", networking=True,
                services=["felix", "bird", "bird6", "confd"], socket="/nonexistent.sock", run_dir="/r",
                conf_dir="/c", felix_health_enabled=True, felix_health_host="127.0.0.1", felix_health_port=9099)
    base.update(kw)
    return supervisor.NodeState(**base)


def test_flags_parse_in_any_combination_with_one_or_two_dashes():
    assert health.probe_flags(["-felix-live", "--bird-live"]) == [("felix", "live"), ("bird", "live")]
    assert health.probe_flags(["-bird6-ready", "-bird6-ready"]) == [("bird6", "ready")]
    assert health.probe_flags(["-felix-ready", "-nonsense"]) is None
    assert health.probe_flags([]) is None
    assert set(health.PROBES) == {"-felix-ready", "-felix-live", "-bird-ready", "-bird-live",
                                  "-bird6-ready", "-bird6-live"}


RUNNING = {"felix": "RUNNING", "bird": "RUNNING", "bird6": "RUNNING", "confd": "RUNNING"}


def peer_down(name, kind, st):
    """BIRD answers on its socket, but its one BGP session is not Established."""
    return "BGP not established with 10.0.0.2" if kind == "ready" and name.startswith("bird") else None


def test_a_node_whose_bgp_peer_is_down_is_live_but_not_ready():
    fake = dict(states=lambda s: RUNNING, check=peer_down, http_check=lambda h, p, path: None)
    live = health.service_problems(state(), [("felix", "live"), ("bird", "live"), ("bird6", "live")], **fake)
    assert live == []
    ready = health.service_problems(state(), [("felix", "ready"), ("bird", "ready")], **fake)
    assert ready == ["bird: BGP not established with 10.0.0.2"]
    # the aggregate -ready agrees; -felix-ready alone does not look at BIRD
    assert health.service_problems(state(), [("felix", "ready")], **fake) == []


def test_each_probe_asks_only_its_own_service():
    asked = []
    paths = []
    health.service_problems(state(), [("bird6", "ready")], states=lambda s: RUNNING,
                            check=lambda n, k, st: asked.append((n, k)),
                            http_check=lambda h, p, path: paths.append(path))
    assert asked == [("bird6", "ready")] and paths == []
    health.service_problems(state(), [("felix", "live")], states=lambda s: RUNNING,
                            check=lambda n, k, st: asked.append((n, k)),
                            http_check=lambda h, p, path: paths.append(path))
    assert paths == ["/liveness"] and asked == [("bird6", "ready")]


def test_a_dead_process_fails_its_liveness_probe():
    out = health.service_problems(state(), [("bird", "live")], states=lambda s: dict(RUNNING, bird="BACKOFF"),
                                  check=lambda n, k, st: None)
    assert out == ["bird: BACKOFF"]


@pytest.mark.parametrize("kw, probe, words", [
    (dict(networking=False, backend="vxlan", services=["felix"]), ("bird", "ready"),
     "bird: not run by this node (BGP networking is off: CALICO_NETWORKING_BACKEND=vxlan)"),
    (dict(ip6="", services=["felix", "bird", "confd"]), ("bird6", "live"),
     "bird6: not run by this node (no IPv6 address (IP6))"),
    (dict(ip="", services=["felix", "bird6", "confd"]), ("bird", "live"),
     "bird: not run by this node (no IPv4 address (IP=none))"),
])
def test_probing_a_service_the_node_does_not_run_fails_clearly(kw, probe, words):
    out = health.service_problems(state(**kw), [probe], states=lambda s: RUNNING, check=lambda n, k, st: None)
    assert out == [words]


def test_main_dispatches_probe_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CALICO_RUN_DIR", str(tmp_path))
    assert node_main.main(["-felix-live", "-bird-live"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("calico/node is not live: no node state in")
    assert node_main.main(["-felix-live", "-bogus"]) == 2
