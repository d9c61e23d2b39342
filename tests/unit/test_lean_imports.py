"""What each long-running program and each exec'd command loads, checked in a fresh interpreter.

A node runs Felix, confd, the BIRD shim and supervisord for its whole life, and
a runtime execs calico-node's probes and the CNI plugin over and over: a
module one of them loads without using costs memory in every process on every
node, or CPU on every call.  Nothing fails when such an import creeps back, so
it is checked here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (what runs, the code that loads it, modules it must not load)
CASES = [
    # pyroute2's package __init__ loads NDB, IPDB, wireguard, nl80211...: Felix uses only rtnetlink.
    ("felix", "import felix.__main__, felix.wiring; from felix.dataplane import interfaces, overlay, routes; "
              "from felix.dataplane.netlink import AsyncIPRoute",
     ["pyroute2.ndb", "pyroute2.ipdb", "pyroute2.ipset", "pyroute2.iwutil", "pyroute2.netlink.generic.wireguard"]),
    # confd validates its few BGP/IPAM kinds with libcalico.bgp_values: pydantic and the models cost
    # ~8 MB of RSS and 70-100 ms of start-up CPU per node.  IPAM (allocation, CAS loops) is not its business.
    ("confd", "import confd.__main__, confd.daemon, confd.state",
     ["libcalico.ipam", "libcalico.ipam_records", "pydantic", "pydantic_core", "libcalico.models"]),
    # `calico-confd --check-ready` (exec'd by every `calico-node -ready`) reads one status file.
    ("confd probe", "import confd.__main__",
     ["confd.daemon", "jinja2", "pydantic", "libcalico.models", "libcalico.datastore", "asyncio"]),
    # A health probe reads supervisord and Felix's health port: no datastore, no pydantic.
    ("calico-node probe", "import calico_node.__main__; from calico_node import health",
     ["pydantic", "libcalico.models", "libcalico.datastore", "calico_node.startup"]),
    # Start-up talks to etcd, then execs supervisord: the probes' XML-RPC client is not needed.
    ("calico-node start-up", "import calico_node.__main__; from calico_node import settings, startup, supervisor",
     ["supervisor.xmlrpc", "calico_node.health"]),
    # The CNI plugin's module (VERSION, argument parsing) loads no datastore or validator; ADD loads them.
    ("cni plugin", "import calico_cni.plugin, calico_cni.ipam",
     ["pydantic", "libcalico.models", "libcalico.datastore", "libcalico.resources"]),
]


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter: what a program loads shows only in a process of its own."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("what,code,banned", CASES, ids=[c[0] for c in CASES])
def test_program_does_not_load(what, code, banned):
    check = (f"{code}\nimport sys\n"
             f"print(sorted(m for m in {banned!r} if m in sys.modules))")
    r = fresh_python(check)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"{what} loads {r.stdout.strip()}"


def test_only_felix_netlink_module_imports_pyroute2():
    """Every other Felix module goes through felix.dataplane.netlink, which skips pyroute2's __init__."""
    offenders = []
    for path in sorted((ROOT / "felix").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "felix/dataplane/netlink.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{rel}:{node.lineno}" for n in names if n == "pyroute2" or n.startswith("pyroute2.")]
    assert offenders == []


def test_full_pyroute2_still_importable_after_the_lean_one():
    """Another part of the same process asking pyroute2 for a public name gets the real package."""
    code = ("from felix.dataplane.netlink import AsyncIPRoute, NetlinkError\n"
            "from pyroute2 import IPRoute, AsyncIPRoute as A2\n"
            "from pyroute2.netlink.exceptions import NetlinkError as E2\n"
            "import pyroute2\n"
            "assert A2 is AsyncIPRoute and E2 is NetlinkError and pyroute2.__version__ != 'unknown'\n"
            "assert IPRoute.__module__ == 'pyroute2.iproute.linux'\n")
    r = fresh_python(code)
    assert r.returncode == 0, r.stderr


def test_felix_keeps_pyroute2_logger_at_warning_after_loading_it():
    """pyroute2's package __init__ reset its logger to NOTSET on import, undoing Felix's WARNING."""
    code = ("import logging\n"
            "from felix.daemon import setup_logging\n"
            "setup_logging('debug')\n"
            "from felix.dataplane import interfaces, overlay, routes\n"
            "from felix.dataplane.netlink import AsyncIPRoute\n"
            "assert logging.getLogger('pyroute2.netlink.core').getEffectiveLevel() == logging.WARNING\n")
    r = fresh_python(code)
    assert r.returncode == 0, r.stderr


# What calico-confd does once running: the syncer's parser on every key kind under its prefixes,
# valid and invalid values, the store's context, both templates rendered.
_CONFD_RUN = """
import sys, tempfile
import confd.__main__
from confd.daemon import Confd, Settings
from confd.render import PACKAGE_TEMPLATES, render_text
from libcalico.bgp_values import parse_key_value
from libcalico.syncer import Syncer
G, H = "/calico/bgp/v1/global/", "/calico/bgp/v1/host/"
kv = {G + "as_num": "64511", G + "node_mesh": '{"enabled": true}', G + "loglevel": "info",
      G + "peer_v4/10.99.9.9": '{"ip": "10.99.9.9", "as_num": 65000}', G + "peer_v4/10.99.9.8": '{"ip": 1}',
      H + "node1/ip_addr_v4": "10.99.0.1", H + "node1/ip_addr_v6": "fd00:99::1", H + "node1/as_num": "x",
      H + "node1/loglevel": "debug", H + "node1/rr_cluster_id": "1.0.0.1", H + "node1/status/v4": "{}",
      H + "node1/peer_v6/fd00:99::7": '{"ip": "fd00:99::7", "as_num": "1.10"}', H + "node2/ip_addr_v4": "10.99.0.2",
      "/calico/v1/ipam/v4/pool/10.66.0.0-16": '{"cidr": "10.66.0.0/16", "ipip": "tunl0", "block_size": 28}',
      "/calico/v1/ipam/v6/pool/fd00:66::-64": '{"cidr": "fd00:66::/64", "vxlan": 1}',
      "/calico/ipam/v2/host/node1/ipv4/block/10.66.1.0-28": '{"state": "confirmed"}',
      "/calico/ipam/v2/host/node2/ipv4/block/10.66.2.0-28": '{"state": "pending"}',
      "/calico/ipam/v2/assignment/ipv4/block/10.66.1.0-28": "{}", "/calico/v1/Ready": "true"}
d = tempfile.mkdtemp()
confd = Confd(Settings(host="node1", ip4="10.99.0.1", ip6="fd00:99::1", run_dir=d, conf_dir=d))
confd.write_status = lambda: None
confd.apply(Syncer(client=None, prefixes=["/calico/"], parser=parse_key_value).diff(kv))
ctx = confd.store.context()
assert ctx["v4"]["pools"], ctx
for t in ("bird.cfg.j2", "bird6.cfg.j2"):
    render_text(PACKAGE_TEMPLATES, t, ctx)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_core") or m == "libcalico.models"))
"""


def test_running_confd_loads_no_pydantic():
    """The syncer's default parser is the models': calico-confd must pass its own, or pydantic comes back."""
    main = (ROOT / "confd" / "__main__.py").read_text(encoding="utf-8")
    assert "parser=parse_key_value" in main and "from libcalico.bgp_values import parse_key_value" in main
    r = fresh_python(_CONFD_RUN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
