"""The largest rule values etcd accepts, under the real calico-felix.

A 6,000 x 6,000-port rule is accepted and programmed (a few hundred lines, not 160,000);
1.5 MiB profile and policy values (etcd's default request limit) are rejected by name before
they are parsed.  Felix stays up across a restart with them in the datastore, the other
endpoints keep their traffic, and Felix's peak RSS (VmHWM) stays under 300 MB.
"""

from __future__ import annotations

import json
import os

import pytest

from libcalico.models import MAX_VALUE_BYTES
from tests.integration.felix_topology import FelixHost, eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ETCD_MAX_REQUEST = 1536 * 1024          # etcd's default --max-request-bytes
PEAK_RSS_LIMIT_KB = 300 * 1024
ALLOW_ALL = [{"action": "allow"}]


def _vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _max_value(extra: dict) -> str:
    """A valid-looking rules value as close to etcd's request limit as a put allows."""
    room = ETCD_MAX_REQUEST - 1024
    doc = {**extra, "inbound_rules": [{"action": "allow", "protocol": "tcp", "src_ports": [0], "dst_ports": [80]}],
           "outbound_rules": []}
    head, tail = json.dumps(doc).split("[0]", 1)
    budget = room - len(head) - len(tail) - 2
    ports = ",".join(str(1 + i % 65535) for i in range(budget // 5))[:budget].rsplit(",", 1)[0]
    raw = f"{head}[{ports}]{tail}"
    json.loads(raw)
    return raw


def test_largest_values_do_not_hurt_felix_or_other_endpoints(netns_factory):
    fh = FelixHost(netns_factory, n_workloads=3)
    try:
        a, b, c = fh.workloads
        fh.put("/calico/v1/Ready", "true")
        fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
        ports = list(range(1, 6001))
        fh.put_profile("huge", [{"action": "allow", "protocol": "tcp", "src_ports": ports, "dst_ports": ports}],
                       ALLOW_ALL)
        fh.put_endpoint(a, ["open"])
        fh.put_endpoint(b, ["open"])
        fh.put_endpoint(c, ["huge", "max"])
        fh.start_felix()
        for w in (a, b, c):
            fh.wait_programmed(w)
        eventually(lambda: a.ping(b.ip4) and b.ping(a.ip4) and a.ping(b.ip6), 20, "baseline a <-> b")

        big_profile = _max_value({})
        big_policy = _max_value({"selector": "all()", "order": 1})
        assert len(big_profile) > ETCD_MAX_REQUEST - 2048 > MAX_VALUE_BYTES["profile_rules"]
        fh.etcd.etcdctl("put", "/calico/v1/policy/profile/max/rules", input=big_profile)
        fh.etcd.etcdctl("put", "/calico/v1/policy/tier/t/metadata", input='{"order": 1}')
        fh.etcd.etcdctl("put", "/calico/v1/policy/tier/t/policy/max", input=big_policy)
        assert len(fh.etcd.get("/calico/v1/policy/profile/max/rules")) == len(big_profile)

        for restart in (False, True):
            if restart:   # the values are still there when Felix comes back
                fh.kill_felix()
                fh.start_felix()
            want = 2 * (1 + restart)
            eventually(lambda n=want: fh.log().count("exceed the limit of") >= n, 30,
                       "both oversized values rejected by name")
            # the 6,000 x 6,000 rule is programmed, linearly: a few hundred lines
            eventually(lambda: any(c.startswith("felix-r-") for c in fh.felix_chains(4)), 30, "huge's sub-chains")
            assert fh.iptables_save(4).count("\n-A felix-") < 3000
            eventually(lambda: a.ping(b.ip4) and b.ping(a.ip4) and a.ping(b.ip6), 20, "a <-> b still works")
            assert fh.felix_alive(), fh.log()[-3000:]
            hwm = _vm_hwm_kb(fh.proc.pid)
            assert hwm < PEAK_RSS_LIMIT_KB, f"felix peak RSS {hwm} kB"
            print(f"felix VmHWM {'after restart' if restart else 'first run'}: {hwm} kB")
        assert "/calico/v1/policy/profile/max/rules: value:" in fh.log()
        assert "/calico/v1/policy/tier/t/policy/max: value:" in fh.log()
    finally:
        fh.close()
