"""Run calicoctl in-process against a real etcd shared by one test module.

Import `module_etcd_fixture` and `store_fixture` into a test module to use the
`store` fixture there.

Starting etcd costs about a second; the manifest and classic-gap tests run
dozens of short commands each, so a module shares one server and each test
starts from an empty `/calico` (the `store` fixture wipes it afterwards).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import pytest

from calico_testing.etcd import EtcdServer
from calicoctl.cli import run

ETCD_VARS = ("ETCD_ENDPOINTS", "ETCD_AUTHORITY", "ETCD_SCHEME", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE",
             "ETCD_KEY_FILE")


class Result:
    def __init__(self, rc: int, out: str, err: str):
        self.rc, self.out, self.err = rc, out, err

    def __repr__(self) -> str:
        return f"Result(rc={self.rc}, out={self.out!r}, err={self.err!r})"


def ctl(*argv: str, stdin: str = "") -> Result:
    """calicoctl in-process (the console script's code path, minus the fork)."""
    out, err = io.StringIO(), io.StringIO()
    rc = run(list(argv), stdout=out, stdin=io.StringIO(stdin), stderr=err)
    return Result(rc, out.getvalue(), err.getvalue())


def ok(*argv: str, stdin: str = "") -> str:
    r = ctl(*argv, stdin=stdin)
    assert r.rc == 0 and r.err == "", r
    return r.out


def fails(*argv: str, stdin: str = "", rc: int | None = None) -> str:
    """Run a command that must fail with one line on stderr; returns that line."""
    r = ctl(*argv, stdin=stdin)
    assert r.rc != 0, r
    assert rc is None or r.rc == rc, r
    assert r.err.count("\n") == 1, r
    return r.err


def getj(etcd: EtcdServer, key: str):
    raw = etcd.get(key)
    assert raw is not None, f"{key} not written"
    return json.loads(raw)


def revision(etcd: EtcdServer) -> int:
    out = etcd.etcdctl("get", "/calico/v1/Ready", "-w", "json")
    return int(json.loads(out)["header"]["revision"])


@pytest.fixture(scope="module", name="module_etcd")
def module_etcd_fixture() -> Iterator[EtcdServer]:
    server = EtcdServer().start()
    saved = {v: os.environ.get(v) for v in ETCD_VARS}
    for v in ETCD_VARS:
        os.environ.pop(v, None)
    os.environ["ETCD_ENDPOINTS"] = server.endpoint
    try:
        yield server
    finally:
        for v, val in saved.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val
        server.close()


@pytest.fixture(name="store")
def store_fixture(module_etcd: EtcdServer) -> Iterator[EtcdServer]:
    """The module's etcd, empty under /calico at the start of each test."""
    module_etcd.delete("/calico", prefix=True)
    yield module_etcd
