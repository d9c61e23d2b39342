"""calico-node's command line: argument dispatch and the errors a user sees."""

from __future__ import annotations

import signal

from calico_node import __main__ as cli


def test_unknown_arguments_exit_2_with_usage(capsys):
    assert cli.main(["--bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown arguments '--bogus'" in err and "-ready" in err


def test_help(capsys):
    assert cli.main(["--help"]) == 0
    assert "--init-only" in capsys.readouterr().out


def test_health_without_a_started_node_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CALICO_RUN_DIR", str(tmp_path))
    for flag in ("-ready", "--ready", "-live", "--live"):
        assert cli.main([flag]) == 1
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and f"no node state in {tmp_path}" in out[0]


def test_bad_environment_is_one_error_line(monkeypatch, caplog):
    monkeypatch.setenv("NODENAME", "n1")
    monkeypatch.setenv("IP", "not-an-ip")
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.run_node() == 1
    finally:
        signal.signal(signal.SIGTERM, old)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "IP: " in errors[0].getMessage()
