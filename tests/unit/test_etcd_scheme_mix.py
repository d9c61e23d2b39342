"""An endpoint list that mixes http and https is refused everywhere: no failover onto plaintext."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from felix.config import Config
from libcalico import etcdconf
from libcalico.datastore import DatastoreClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIXED = "https://127.0.0.1:2379,http://127.0.0.1:2380"


@pytest.mark.parametrize("text", [MIXED, "http://10.0.0.1:2379, https://10.0.0.2:2379",
                                  "https://a:1,https://b:1,http://c:1"])
def test_from_env_refuses_mixed_schemes_naming_the_variable(text):
    with pytest.raises(etcdconf.ConfigError) as ei:
        etcdconf.from_env({"ETCD_ENDPOINTS": text})
    msg = str(ei.value)
    assert msg.startswith("ETCD_ENDPOINTS:") and "plaintext" in msg and "\n" not in msg


@pytest.mark.parametrize("text", ["https://a:1,https://b:2", "http://a:1,http://b:2"])
def test_one_scheme_lists_still_accepted(text):
    cfg = etcdconf.from_env({"ETCD_ENDPOINTS": text})
    assert len({e.scheme for e in cfg.endpoints}) == 1 and len(cfg.endpoints) == 2


def test_every_client_construction_refuses_a_mixed_list():
    with pytest.raises(etcdconf.ConfigError):
        DatastoreClient(endpoints=MIXED.split(","))
    with pytest.raises(etcdconf.ConfigError):
        etcdconf.EtcdConfig((etcdconf.parse_endpoint("https://a:1"), etcdconf.parse_endpoint("http://b:1")))


def test_felix_bootstrap_reports_mixed_etcd_endpoints_as_fatal():
    boot = Config.bootstrap({"ETCD_ENDPOINTS": MIXED, "FELIX_CONFIGFILE": "/nonexistent"})
    assert len(boot.errors) == 1 and "ETCD_ENDPOINTS" in boot.errors[0] and "plaintext" in boot.errors[0]


@pytest.mark.parametrize("argv", [["-m", "felix"], ["-m", "confd"], ["-m", "calico_node", "--init-only"],
                                  ["-m", "calicoctl", "pool", "show"]])
def test_every_program_exits_with_one_clear_line(argv, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "FELIX_"))}
    env.update(PYTHONPATH=ROOT, ETCD_ENDPOINTS=MIXED, NODENAME="h1", FELIX_CONFIGFILE="/nonexistent",
               CALICO_RUN_DIR=str(tmp_path), CALICO_CONF_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, *argv], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                       timeout=60)
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode not in (0, None), out
    assert "Traceback" not in r.stderr
    assert len(out) == 1, out
    assert "ETCD_ENDPOINTS" in out[0] and "plaintext" in out[0]
