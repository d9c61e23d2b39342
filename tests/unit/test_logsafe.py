"""Every program's log output keeps one record on one line, whatever etcd or the kernel hands it."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from libcalico import logsafe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORGED = "/calico/v1/host/h1/endpoint/x\nFAKE LINE [ERROR] felix: forged\r\x1b[2K\u2028tail"


def _py(code: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def _lines_mentioning(text: str, marker: str = "FAKE LINE") -> list[str]:
    return [ln for ln in text.splitlines() if marker in ln]


def test_escape_controls_and_separators():
    assert logsafe.escape("a\nb") == "a\\nb"
    assert logsafe.escape("a\r\tb\x00\x1b\x7f\x85\x9f") == "a\\r\\tb\\x00\\x1b\\x7f\\x85\\x9f"
    assert logsafe.escape("x\u2028y\u2029z\u202eq\u2066") == "x\\u2028y\\u2029z\\u202eq\\u2066"
    assert logsafe.escape("plain ünïcode / é 10.0.0.1") == "plain ünïcode / é 10.0.0.1"
    assert "\n" not in logsafe.escape(FORGED)


def test_safe_formatter_message_and_exception_text_stay_on_their_lines():
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter("[%(levelname)s] %(name)s: %(message)s"))
    lg = logging.getLogger("test_logsafe.private")
    lg.propagate = False
    lg.addHandler(h)
    try:
        logsafe.install(lg)
        assert isinstance(h.formatter, logsafe.SafeFormatter)
        lg.warning("bad key %s", FORGED)
        try:
            raise ValueError(f"cannot parse {FORGED}")
        except ValueError:
            lg.exception("while handling")
    finally:
        lg.removeHandler(h)
    out = buf.getvalue()
    assert not any(ln.startswith("FAKE LINE") for ln in out.splitlines())
    assert len(_lines_mentioning(out)) == 2  # the warning and the exception's last line
    assert "\x1b" not in out and "\r" not in out and "\u2028" not in out
    assert "Traceback (most recent call last):" in out  # the traceback keeps its structure


def test_felix_setup_logging_escapes():
    r = _py(f"""
        import logging
        from felix.daemon import setup_logging
        setup_logging("info")
        logging.getLogger("felix.calc").error("Invalid endpoint %s", {FORGED!r})
    """)
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "\\nFAKE LINE" in r.stderr


def test_confd_logging_escapes():
    # confd's main configures logging first; a rejected key then goes through that configuration.
    r = _py(f"""
        import contextlib, logging
        from confd.__main__ import main
        with contextlib.suppress(SystemExit):
            main(["--check-ready"])
        logging.getLogger("confd.state").warning("rejected %s", {FORGED!r})
    """, env={"NODENAME": "h1", "CALICO_RUN_DIR": "/nonexistent-logsafe"})
    lines = _lines_mentioning(r.stdout)
    assert len(lines) == 1 and "rejected" in lines[0], r.stdout
    assert not any(ln.startswith("FAKE LINE") for ln in r.stdout.splitlines())


def test_calico_node_logging_escapes():
    r = _py(f"""
        import logging
        from calico_node.__main__ import _setup_logging
        _setup_logging()
        logging.getLogger("calico-node").error("cannot register %s", {FORGED!r})
    """)
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "cannot register" in r.stderr


def test_calicoctl_library_warnings_escaped():
    r = _py(f"""
        import logging, sys
        from calicoctl.__main__ import main
        main(["--help"])
        logging.getLogger("libcalico.datastore").warning("retrying %s", {FORGED!r})
    """)
    assert r.returncode == 0, r.stderr
    assert len(_lines_mentioning(r.stderr)) == 1 and len(r.stderr.splitlines()) == 1, r.stderr


def test_bird_shim_say_and_relay_escape(capsys):
    from bird_control import shim

    shim.say("calico-bird", "starting " + FORGED)

    shim._relay(io.BytesIO(b"bird: Reconfigured \x1b[31m\rFAKE LINE\n"), "bird")
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2, out
    assert "\x1b" not in out and "\r" not in out


@pytest.mark.parametrize("program", ["felix", "confd", "calico_node"])
def test_formatter_installed_keeps_layout(program):
    """The escaping must not change a program's layout (timestamps, level, name)."""
    setup = {
        "felix": "from felix.daemon import setup_logging; setup_logging('info')",
        "confd": "from libcalico import logsafe; logsafe.basic_config(format='%(levelname)s %(name)s: %(message)s')",
        "calico_node": "from calico_node.__main__ import _setup_logging; _setup_logging()",
    }[program]
    r = _py(f"""
        import logging
        {setup}
        logging.getLogger("x").warning("hello")
        assert all(type(h.formatter).__name__ == "SafeFormatter" for h in logging.getLogger().handlers)
    """)
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "hello" in r.stderr
