"""Drive `syncer_probe.py` from a test: its consumer-side view of the datastore, rebuilt from its output."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from calico_testing.netns import Netns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


class SyncerProbe:
    """A syncer client process; `.state` is what a consumer applying its updates would hold."""

    def __init__(self, endpoints: str, prefixes: list[str], ns: Netns | None = None,
                 log_path: str | None = None, extra_env: dict | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        env.update(ETCD_ENDPOINTS=endpoints, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **(extra_env or {}))
        cmd = [PYTHON, "-m", "tests.reliability.syncer_probe", *prefixes]
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        if ns is not None:
            self.proc = ns.popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log)
        else:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log)
        self.state: dict[str, str] = {}
        self.deletes: list[str] = []
        self.invalid: list[str] = []
        self.in_syncs = 0
        self.status: dict = {}
        self.pid: int | None = None
        self.lines = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.lines += 1
                kind = msg["kind"]
                if kind == "put":
                    self.state[msg["key"]] = msg["raw"]
                elif kind in ("delete", "invalid"):
                    self.state.pop(msg["key"], None)
                    (self.deletes if kind == "delete" else self.invalid).append(msg["key"])
                elif kind == "in_sync":
                    self.in_syncs += 1
                elif kind == "status":
                    self.status = msg
                elif kind == "started":
                    self.pid = msg["pid"]

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self.state)

    def wait(self, pred, timeout: float = 30.0, what: str = "condition") -> float:
        """Wait until pred(self) holds; returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"syncer probe exited ({self.proc.returncode}) while waiting for {what}"
                                     + self._log_tail())
            with self._lock:
                if pred(self):
                    return time.monotonic() - t0
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; status={self.status}"
                             + self._log_tail())

    def wait_state(self, want: dict[str, str], timeout: float = 30.0, what: str = "state") -> float:
        return self.wait(lambda p: p.state == want, timeout, what)

    def _log_tail(self) -> str:
        if not self.log_path:
            return ""
        with open(self.log_path, errors="replace") as f:
            return "\nprobe log:\n" + f.read()[-3000:]

    def log_text(self) -> str:
        if not self.log_path:
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()


def etcd_raw_state(etcdctl, prefix: str) -> dict[str, str]:
    """Every key under prefix with its raw value, read through an `etcdctl(*args)` callable."""
    import base64
    out = etcdctl("get", "--prefix", prefix, "-w", "json")
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
            for kv in json.loads(out).get("kvs", [])}
