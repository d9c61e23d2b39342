"""calico-node runs the Docker driver only when asked: CALICO_LIBNETWORK_ENABLED and `node run --libnetwork`."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from calico_node import settings, supervisor
from calicoctl.node_run import docker_argv, node_env, parse_options

ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path, **env: str) -> settings.NodeSettings:
    base = {"NODENAME": "node1", "IP": "10.0.0.1", "CALICO_RUN_DIR": str(tmp_path / "run"),
            "CALICO_LOG_DIR": str(tmp_path / "log")}
    return settings.from_env({**base, **env})


@pytest.mark.parametrize("extra", [{}, {"CALICO_NETWORKING_BACKEND": "none"}])
def test_enabled_driver_is_one_more_program_with_its_own_rotated_log(tmp_path, extra):
    s = _settings(tmp_path, CALICO_LIBNETWORK_ENABLED="true", CALICO_LOG_MAX_BYTES="4096", **extra)
    supervisor.write_config(s, "10.0.0.1", "", ROOT)
    cp = configparser.RawConfigParser()
    cp.read(tmp_path / "run" / "services" / "libnetwork.conf")
    prog = cp["program:libnetwork"]
    assert prog["command"].endswith("calico-libnetwork") and prog["autorestart"] == "true"
    assert prog["stdout_logfile"] == str(tmp_path / "log" / "libnetwork" / "current")
    assert prog["stdout_logfile_maxbytes"] == "4096"
    assert (tmp_path / "log" / "libnetwork").is_dir()
    assert supervisor.read_state(str(tmp_path / "run")).services[-1] == "libnetwork"


def test_disabled_by_default_and_a_bad_value_names_the_variable(tmp_path):
    supervisor.write_config(_settings(tmp_path), "10.0.0.1", "", ROOT)
    assert not (tmp_path / "run" / "services" / "libnetwork.conf").exists()
    with pytest.raises(settings.SettingsError, match="CALICO_LIBNETWORK_ENABLED"):
        _settings(tmp_path, CALICO_LIBNETWORK_ENABLED="maybe")


def test_node_run_libnetwork_sets_the_variable_and_mounts_dockers_dirs():
    opts = parse_options(["--libnetwork", "--name=n1", "--ip=10.0.0.1"])
    assert node_env(opts, {})["CALICO_LIBNETWORK_ENABLED"] == "true"
    argv = docker_argv(opts, {})
    assert "/run/docker/plugins:/run/docker/plugins" in argv and "/var/run/docker.sock:/var/run/docker.sock" in argv
    plain = parse_options(["--name=n1", "--ip=10.0.0.1"])
    assert "CALICO_LIBNETWORK_ENABLED" not in node_env(plain, {})
    assert "/run/docker/plugins:/run/docker/plugins" not in docker_argv(plain, {})
