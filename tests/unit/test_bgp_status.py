"""BGP session status: parsing BIRD's sessions, the publisher's change/rate rules, and `status --all` rows.

The publisher's etcd side runs against real etcd in tests/integration/test_bgp_status_etcd.py and
end to end in tests/system/test_route_reflector.py; here the clock is a counter and the gateway a
recorder, so the rate limit is checked without waiting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bird_control.protocol import ReplyLine, parse_protocols
from bird_control.status import Publisher, sessions, status_key
from calicoctl.status import cluster_rows

TRANSCRIPT = [
    ReplyLine(2002, "name     proto    table    state  since       info"),
    ReplyLine(1002, "kernel1  Kernel   master   up     2026-11-28 12:00:00"),
    ReplyLine(1002, "RR_10_99_0_3 BGP      master   up     2026-11-28 12:00:05  Established"),
    ReplyLine(1006, "  Preference:     100"),
    ReplyLine(1006, "  Routes:         2 imported, 5 exported, 2 preferred"),
    ReplyLine(1006, "  BGP state:          Established"),
    ReplyLine(1006, "    Neighbor address: 10.99.0.3"),
    ReplyLine(1006, "    Session:          internal multihop route-reflector AS4"),
    ReplyLine(1002, "Global_10_99_0_2 BGP      master   up     2026-11-28 12:00:06  Established"),
    ReplyLine(1006, "  Routes:         4 imported, 1 exported, 4 preferred"),
    ReplyLine(1006, "  BGP state:          Established"),
    ReplyLine(1006, "    Neighbor address: 10.99.0.2"),
    ReplyLine(1006, "    Session:          internal multihop AS4"),
    ReplyLine(1002, "Node_fd00__9 BGP      master   start  2026-11-28 12:00:01  Active        Socket: Connection refused"),
    ReplyLine(1006, "  BGP state:          Active"),
]


def test_sessions_from_show_protocols_all():
    got = {s["name"]: s for s in sessions(parse_protocols(TRANSCRIPT))}
    assert set(got) == {"RR_10_99_0_3", "Global_10_99_0_2", "Node_fd00__9"}  # kernel1 is no session
    rr = got["RR_10_99_0_3"]
    assert (rr["peer"], rr["type"], rr["state"], rr["since"]) == ("10.99.0.3", "rr client", "Established",
                                                                  "2026-11-28 12:00:05")
    assert (rr["imported"], rr["exported"], rr["rr_client"]) == (2, 5, True)
    g = got["Global_10_99_0_2"]
    assert (g["type"], g["imported"], g["exported"], g["rr_client"]) == ("global", 4, 1, False)
    n = got["Node_fd00__9"]
    assert (n["peer"], n["type"], n["state"]) == ("fd00::9", "node specific", "Active")


@dataclass
class Clock:
    t: float = 100.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    def __init__(self, fail: bool = False):
        self.puts: list[tuple[str, dict]] = []
        self.deletes: list[str] = []
        self.fail = fail

    def put(self, key: str, value: str) -> None:
        if self.fail:
            raise OSError("etcd unreachable")
        self.puts.append((key, json.loads(value)))

    def delete(self, key: str) -> None:
        self.deletes.append(key)


def _session(state: str) -> list[dict]:
    return [{"peer": "10.99.0.2", "name": "Global_10_99_0_2", "type": "global", "state": state}]


def test_written_on_change_only_and_at_most_once_per_interval():
    clock, gw = Clock(), Recorder()
    pub = Publisher("node1", 4, "/nonexistent.ctl", gw, min_interval=5.0, clock=clock)
    assert pub.step(_session("Connect"))
    assert gw.puts[0][0] == status_key("node1", 4) == "/calico/bgp/v1/host/node1/status/v4"
    assert gw.puts[0][1]["sessions"] == _session("Connect") and gw.puts[0][1]["node"] == "node1"
    clock.t += 1
    assert not pub.step(_session("Connect"))          # unchanged: never rewritten
    assert not pub.step(_session("Established"))      # changed, but within the interval
    clock.t += 4
    assert pub.step(_session("Established"))          # the interval passed: the latest state
    assert [p[1]["sessions"][0]["state"] for p in gw.puts] == ["Connect", "Established"]
    clock.t += 100
    assert not pub.step(None)                          # BIRD unreachable: nothing said
    for _ in range(20):                                      # a flapping peer: one write per interval
        clock.t += 1
        pub.step(_session("Active" if clock.t % 2 else "Established"))
    assert 3 <= len(gw.puts) <= 2 + 20 // 5 + 1
    pub.clear()
    assert gw.deletes == ["/calico/bgp/v1/host/node1/status/v4"]


def test_unreachable_etcd_is_retried_and_said_once():
    clock, gw, said = Clock(), Recorder(fail=True), []
    pub = Publisher("node1", 6, "/nonexistent.ctl", gw, clock=clock, say=said.append)
    for _ in range(5):
        clock.t += 10
        assert not pub.step(_session("Established"))
    assert len(said) == 1 and "/calico/bgp/v1/host/node1/status/v6" in said[0]
    gw.fail = False
    clock.t += 10
    assert pub.step(_session("Established"))
    assert len(gw.puts) == 1 and "again" in said[-1]


@dataclass
class KV:
    key: str
    value: str


def test_status_all_rows_survive_hostile_documents():
    good = {"time": "2026-11-28T12:00:00Z", "sessions": [
        {"peer": "10.99.0.1", "type": "global", "state": "Established", "since": "2026-11-28 11:59:00",
         "imported": 3, "exported": 1}]}
    kvs = [KV("/calico/bgp/v1/host/n1/status/v4", json.dumps(good)),
           KV("/calico/bgp/v1/host/n2/status/v4", "not json"),
           KV("/calico/bgp/v1/host/n3/status/v4", json.dumps({"sessions": "x"})),
           KV("/calico/bgp/v1/host/n4/status/v4", json.dumps({"sessions": [{"peer": "A" * 10_000}]})),
           KV("/calico/bgp/v1/host/n5/status/v6", json.dumps({"sessions": []})),
           KV("/calico/bgp/v1/host/n1/ip_addr_v4", "10.99.0.5")]
    rows, notes = cluster_rows(kvs)
    by_node = {r[0]: r for r in rows}
    assert by_node["n1"][2:7] == ["10.99.0.1", "global", "Established", "2026-11-28 11:59:00", "3/1"]
    assert len(by_node["n4"][2]) <= 45                      # an absurd value is cut, not printed whole
    assert by_node["n5"][2] == "(no BGP peers)" and by_node["n5"][1] == "IPv6"
    assert {n.split(":")[0] for n in notes} == {"/calico/bgp/v1/host/n2/status/v4",
                                                "/calico/bgp/v1/host/n3/status/v4"}
