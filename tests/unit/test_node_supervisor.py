"""Rendering of the per-run supervisord configuration, the log relay and the health aggregation."""

from __future__ import annotations

import configparser
import io
import json
from pathlib import Path

import pytest

from calico_node import health, logrelay, settings, supervisor

ROOT = Path(__file__).resolve().parents[2]


def cfg(tmp_path: Path, **env) -> settings.NodeSettings:
    base = {"NODENAME": "node1", "IP": "10.0.0.1", "CALICO_RUN_DIR": str(tmp_path / "run"),
            "CALICO_LOG_DIR": str(tmp_path / "log"), "ETCD_ENDPOINTS": "http://10.0.0.9:2379"}
    base.update(env)
    return settings.from_env(base)


def parse(path: Path) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser()
    cp.read(path)
    return cp


def programs(run: Path) -> dict[str, configparser.SectionProxy]:
    out = {}
    for f in sorted((run / "services").glob("*.conf")):
        cp = parse(f)
        for sec in cp.sections():
            out[sec] = cp[sec]
    return out


def test_full_node_renders_all_services_with_rotated_logs(tmp_path):
    s = cfg(tmp_path, CALICO_LOG_MAX_BYTES="2048", CALICO_LOG_BACKUPS="3")
    conf = supervisor.write_config(s, "10.0.0.1", "2001:db8::1", ROOT)
    top = parse(conf)
    assert top["unix_http_server"]["file"] == str(tmp_path / "run" / "supervisor.sock")
    assert top["supervisorctl"]["serverurl"] == f"unix://{tmp_path}/run/supervisor.sock"
    assert top["include"]["files"] == "services/*.conf"
    progs = programs(tmp_path / "run")
    assert set(progs) == {"program:felix", "program:confd", "program:bird", "program:bird6"}
    for name in ("felix", "confd", "bird", "bird6"):
        p = progs[f"program:{name}"]
        assert p["stdout_logfile"] == str(tmp_path / "log" / name / "current")
        assert p["stdout_logfile_maxbytes"] == "2048" and p["stdout_logfile_backups"] == "3"
        assert (tmp_path / "log" / name).is_dir()
        assert "{{" not in p["command"] and p["command"].split()[0].startswith("/")
    assert progs["program:bird6"]["command"].endswith("calico-bird --ipv6")
    # Stop order is reverse priority: confd, bird6, bird, felix.
    prio = {n: int(progs[f"program:{n}"]["priority"]) for n in ("felix", "bird", "bird6", "confd")}
    assert prio["felix"] < prio["bird"] < prio["bird6"] < prio["confd"]
    state = json.loads((tmp_path / "run" / "node.json").read_text())
    assert state["services"] == ["felix", "bird", "bird6", "confd"] and state["ip6"] == "2001:db8::1"


def test_policy_only_and_no_ip6(tmp_path):
    supervisor.write_config(cfg(tmp_path, CALICO_NETWORKING="false"), "10.0.0.1", "2001:db8::1", ROOT)
    assert set(programs(tmp_path / "run")) == {"program:felix"}
    supervisor.write_config(cfg(tmp_path), "10.0.0.1", "", ROOT)  # stale files from the last run go
    assert set(programs(tmp_path / "run")) == {"program:felix", "program:bird", "program:confd"}


def test_disable_file_logging_relays_to_stdout(tmp_path):
    supervisor.write_config(cfg(tmp_path, CALICO_DISABLE_FILE_LOGGING="true"), "10.0.0.1", "", ROOT)
    progs = programs(tmp_path / "run")
    assert progs["program:felix"]["stdout_logfile"] == "NONE"
    assert progs["program:felix"]["stdout_events_enabled"] == "true"
    relay = progs["eventlistener:log-relay"]
    assert relay["stderr_logfile"] == "/dev/stdout" and relay["events"] == "PROCESS_LOG"
    assert not (tmp_path / "log").exists()


def test_program_env_passes_node_identity_to_felix(tmp_path):
    env = supervisor.program_env(cfg(tmp_path, HOSTNAME="h"), "10.0.0.1", "")
    assert env["FELIX_FELIXHOSTNAME"] == "node1" and env["NODENAME"] == "node1" and env["HOSTNAME"] == "node1"
    assert env["FELIX_ETCDENDPOINTS"] == "http://10.0.0.9:2379"
    assert env["CALICO_RUN_DIR"] == str(tmp_path / "run") and env["IP"] == "10.0.0.1" and env["IP6"] == ""
    env = supervisor.program_env(cfg(tmp_path, FELIX_FELIXHOSTNAME="x"), "10.0.0.1", "")
    assert env["FELIX_FELIXHOSTNAME"] == "x"


def test_render_rejects_unknown_markers():
    assert supervisor.render("a={{x}}", {"x": "1"}) == "a=1"
    with pytest.raises(KeyError, match="{{y}}"):
        supervisor.render("a={{y}}", {"x": "1"})


def test_log_relay_recuts_lines_per_service():
    out = io.StringIO()
    r = logrelay.Relay(out)
    r.feed("felix", "2026 a\n2026 b")
    r.feed("confd", "2026 c\n")
    r.feed("felix", " continued\n")
    assert out.getvalue().splitlines() == ["felix | 2026 a", "confd | 2026 c", "felix | 2026 b continued"]
    assert logrelay.parse_payload("processname:bird groupname:bird pid:5 channel:stdout\nx\ny") == ("bird", "x\ny")


def state(**kw) -> supervisor.NodeState:
    base = dict(nodename="n", ip="10.0.0.1", ip6="", networking=True, services=["felix", "bird", "confd"],
                socket="/nonexistent.sock", run_dir="/r", conf_dir="/c", felix_health_enabled=False, felix_health_host="127.0.0.1",
                felix_health_port=9099)
    base.update(kw)
    return supervisor.NodeState(**base)


def test_health_aggregates_services():
    running = {"felix": "RUNNING", "bird": "RUNNING", "confd": "RUNNING"}
    ok = health.problems(state(), "ready", states=lambda s: running, check=lambda n, k, r: None)
    assert ok == []
    bad = health.problems(state(), "ready", states=lambda s: dict(running, confd="BACKOFF"),
                          check=lambda n, k, r: "no BGP session established" if n == "bird" else None)
    assert bad == ["bird: no BGP session established", "confd: BACKOFF"]
    # Felix with its health endpoint enabled is judged by the endpoint, not the process state.
    seen = []
    out = health.problems(state(felix_health_enabled=True, services=["felix"]), "live",
                          states=lambda s: {"felix": "STARTING"},
                          http_check=lambda h, p, path: seen.append(path) or "returned 503")
    assert out == ["felix: returned 503"] and seen == ["/liveness"]


def test_starting_is_alive_and_lets_a_service_answer_for_its_readiness():
    starting = {"felix": "STARTING", "bird": "STARTING", "confd": "STARTING"}
    asked = []

    def check(name, kind, st):
        asked.append((name, kind))
        return "no BGP session established" if (name, kind) == ("bird", "ready") else None
    assert health.problems(state(), "live", states=lambda s: starting, check=check) == []
    assert asked == [("bird", "live"), ("confd", "live")]
    asked.clear()
    out = health.problems(state(), "ready", states=lambda s: starting, check=check)
    # Felix (no health endpoint) cannot say whether it has programmed anything yet: not ready.
    assert out == ["felix: STARTING", "bird: no BGP session established"]
    assert asked == [("bird", "ready"), ("confd", "ready")]
    # Still not alive or ready when supervisord has given up or is backing off.
    out = health.problems(state(), "live", states=lambda s: dict(starting, confd="FATAL", bird="BACKOFF"),
                          check=lambda n, k, r: None)
    assert out == ["bird: BACKOFF", "confd: FATAL"]


def test_health_without_supervisord_is_one_clear_reason():
    out = health.problems(state(), "live")
    assert len(out) == 1 and out[0].startswith("supervisord: not answering on /nonexistent.sock")
