"""felix.config: precedence, typed parsing, bad values, unknown names, restart-needed detection."""

from __future__ import annotations

import logging

import pytest

from felix.config import EXIT_CONFIG_CHANGED, PARAMS, Config


def _env(tmp_path, **kw):
    env = {"FELIX_CONFIGFILE": str(tmp_path / "missing.cfg")}
    env.update(kw)
    return env


def test_defaults(tmp_path):
    c = Config.resolve({}, {}, environ=_env(tmp_path), hostname="h1")
    assert c.FelixHostname == "h1" and c.source("FelixHostname") == "default"
    assert c.InterfacePrefix == "cali"
    assert c.DefaultEndpointToHostAction == "DROP"
    assert c.IptablesRefreshInterval == 90.0 and c.RouteRefreshInterval == 90.0
    assert c.IptablesBackend == "auto" and c.EndpointReportingEnabled is False
    assert c.HealthPort == 9099 and c.PrometheusMetricsPort == 9091
    assert ("tcp", 22) in c.FailsafeInboundHostPorts and ("udp", 53) in c.FailsafeOutboundHostPorts
    assert c.VXLANVNI == 4096 and c.VXLANMTU is None and c.IpInIpMtu is None  # derived from the uplink
    assert c.etcd_endpoints() == ["http://127.0.0.1:2379"]
    assert c.warnings == []


def test_precedence_env_file_host_global(tmp_path):
    cfg = tmp_path / "felix.cfg"
    cfg.write_text("[global]\nInterfacePrefix = tap\nIptablesRefreshInterval = 10\nLogSeverityScreen = debug\n")
    env = {"FELIX_CONFIGFILE": str(cfg), "felix_logseverityscreen": "error"}
    host = {"InterfacePrefix": "veth", "IptablesRefreshInterval": "20", "RouteRefreshInterval": "30",
            "ReportingIntervalSecs": "5"}
    glob = {"InterfacePrefix": "x", "RouteRefreshInterval": "40", "ReportingIntervalSecs": "6",
            "ReportingTTLSecs": "7"}
    c = Config.resolve(host, glob, environ=env, hostname="h1")
    assert c.LogSeverityScreen == "error" and c.source("LogSeverityScreen").startswith("env")
    assert c.InterfacePrefix == "tap" and c.source("InterfacePrefix").startswith("file")
    assert c.IptablesRefreshInterval == 10.0
    assert c.RouteRefreshInterval == 30.0 and "host key /calico/v1/host/h1/" in c.source("RouteRefreshInterval")
    assert c.ReportingTTLSecs == 7.0 and c.source("ReportingTTLSecs").startswith("global key")


def test_bad_value_falls_through_to_next_layer(tmp_path):
    c = Config.resolve({"IptablesRefreshInterval": "soon"}, {"IptablesRefreshInterval": "12"},
                       environ=_env(tmp_path, FELIX_DEFAULTENDPOINTTOHOSTACTION="maybe"))
    assert c.IptablesRefreshInterval == 12.0
    assert c.DefaultEndpointToHostAction == "DROP"
    assert any("IptablesRefreshInterval" in w and "host key" in w for w in c.warnings)
    assert any("DefaultEndpointToHostAction" in w and "FELIX_DEFAULTENDPOINTTOHOSTACTION" in w
               for w in c.warnings)


@pytest.mark.parametrize("param,raw,want", [
    ("DefaultEndpointToHostAction", "accept", "ACCEPT"),
    ("EndpointReportingEnabled", "TRUE", True),
    ("EndpointReportingEnabled", "0", False),
    ("IptablesBackend", "Legacy", "legacy"),
    ("HealthPort", "9000", 9000),
    ("FailsafeInboundHostPorts", "tcp:22,udp:68", (("tcp", 22), ("udp", 68))),
    ("FailsafeInboundHostPorts", "none", ()),
    ("VXLANEnabled", "auto", None),
    ("VXLANTunnelAddr", "10.0.0.1", "10.0.0.1"),
    ("MetadataAddr", "None", None),
    ("LogSeverityScreen", "WARN", "warning"),
])
def test_typed_parsing(tmp_path, param, raw, want):
    c = Config.resolve({}, {param: raw}, environ=_env(tmp_path))
    assert getattr(c, param) == want and c.warnings == []


@pytest.mark.parametrize("param,raw", [
    ("HealthPort", "70000"), ("EndpointReportingEnabled", "perhaps"), ("InterfacePrefix", "ca li"),
    ("InterfacePrefix", "x" * 20), ("FailsafeInboundHostPorts", "icmp:1"), ("VXLANTunnelAddr", "10.0.0.300"),
    ("IptablesRefreshInterval", "-1"), ("IptablesRefreshInterval", "nan"), ("FelixHostname", "a/b"),
])
def test_invalid_values_warn_and_default(tmp_path, param, raw):
    c = Config.resolve({}, {param: raw}, environ=_env(tmp_path), hostname="h")
    assert getattr(c, param) == (PARAMS[param.lower()].default if param != "FelixHostname" else "h")
    assert len(c.warnings) == 1 and param in c.warnings[0] and "global key" in c.warnings[0]


def test_unknown_parameters_warned_once_each(tmp_path):
    c = Config.resolve({}, {"Bogus": "1"}, environ=_env(tmp_path, FELIX_ALSOBOGUS="x"))
    assert len(c.warnings) == 2
    assert any("FELIX_ALSOBOGUS" in w for w in c.warnings) and any("Bogus" in w for w in c.warnings)


def test_etcd_settings_not_from_datastore_and_plain_etcd_env(tmp_path):
    c = Config.resolve({}, {"EtcdEndpoints": "http://evil:1"},
                       environ=_env(tmp_path, ETCD_ENDPOINTS="http://10.0.0.1:2379,http://10.0.0.2:2379"))
    assert c.etcd_endpoints() == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    assert any("EtcdEndpoints" in w for w in c.warnings)
    c = Config.resolve({}, {}, environ=_env(tmp_path, ETCD_ENDPOINTS="http://a:1", FELIX_ETCDENDPOINTS="http://b:2"))
    assert c.etcd_endpoints() == ["http://b:2"]
    c = Config.resolve({}, {}, environ=_env(tmp_path, FELIX_ETCDADDR="10.1.1.1:4001", FELIX_ETCDSCHEME="https",
                                            FELIX_ETCDCAFILE="/ca.pem"))
    assert c.etcd_endpoints() == ["https://10.1.1.1:4001"] and c.etcd_tls()["ca"] == "/ca.pem"


def test_bad_config_file_is_reported(tmp_path):
    cfg = tmp_path / "felix.cfg"
    cfg.write_text("this is not ini\n")
    c = Config.resolve({}, {}, environ={"FELIX_CONFIGFILE": str(cfg)})
    assert c.InterfacePrefix == "cali" and any("unreadable" in w for w in c.warnings)


def test_restart_needed_only_for_non_live(tmp_path):
    env = _env(tmp_path)
    a = Config.resolve({}, {}, environ=env, hostname="h")
    b = Config.resolve({}, {"LogSeverityScreen": "debug", "IptablesRefreshInterval": "5",
                            "DefaultEndpointToHostAction": "ACCEPT"}, environ=env, hostname="h")
    assert a.restart_needed(b) == []
    c = Config.resolve({}, {"InterfacePrefix": "tap", "IptablesBackend": "legacy"}, environ=env, hostname="h")
    assert set(a.restart_needed(c)) == {"InterfacePrefix", "IptablesBackend"}
    assert EXIT_CONFIG_CHANGED not in (0, 1)


def test_log_all_names_every_param_and_source(tmp_path, caplog):
    c = Config.resolve({}, {"Nope": "1"}, environ=_env(tmp_path), hostname="h")
    with caplog.at_level(logging.INFO):
        c.log_all(logging.getLogger("t"))
    text = caplog.text
    for p in PARAMS.values():
        assert f"config: {p.name} = " in text
    assert "(from default)" in text and text.count("Nope") == 1



def test_bad_process_setting_is_fatal_not_a_silent_default():
    """An unparseable env-only setting (etcd endpoints) must stop Felix, naming the variable."""
    from felix.config import Config

    cfg = Config.bootstrap(environ={"FELIX_ETCDENDPOINTS": "bogus:://x"})
    assert any("FELIX_ETCDENDPOINTS" in e and "EtcdEndpoints" in e for e in cfg.errors), cfg.errors
    assert not Config.bootstrap(environ={"FELIX_ETCDENDPOINTS": "http://127.0.0.1:2379"}).errors
