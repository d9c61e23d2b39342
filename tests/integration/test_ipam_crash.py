"""Crash safety: an allocating process SIGKILLed at random points, 200 times, against a real etcd.

Each trial forks a child from a warm zygote process (libcalico already
imported, no gRPC channel opened before the fork) that allocates addresses
and writes workload endpoints the way a CNI plugin does, and releases some
the way a delete does.  The test kills it with a real SIGKILL after a random
delay.  Then `ipam check` must report exactly the allocations an independent
reading of the raw etcd records says have no endpoint, `release --from-report`
must free exactly those (sparing one that a workload claimed after the report)
and no address of a live workload may ever be released.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRIALS = int(os.environ.get("IPAM_CRASH_TRIALS", "200"))
HOSTS = ("crash-h1", "crash-h2")
POOL = "10.84.0.0/20"
MAX_KILL_DELAY = 0.06  # seconds after the child said it is connected


# ---- the child (runs in the zygote's forks) ------------------------------------------------

def _say(text: str) -> None:
    os.write(1, (text + "\n").encode())  # unbuffered: a line said is a line the test sees, kill or not


async def _child(endpoint: str, trial: int, seed: int) -> None:
    from libcalico.datastore import DatastoreClient
    from libcalico.ipam import Ipam
    from libcalico.models import WorkloadEndpoint
    from libcalico.resources import WorkloadEndpoints

    rnd = random.Random(seed)
    client = DatastoreClient([endpoint], timeout=10)
    await client.current_revision()
    ipam, eps = Ipam(client), WorkloadEndpoints(client)
    _say("ready")
    live: list[tuple[str, str]] = []
    for i in range(25):
        if live and rnd.random() < 0.3:  # a workload deleted: endpoint first, then its addresses
            host, handle = live.pop(rnd.randrange(len(live)))
            await eps.delete((host, "crash", handle, "eth0"))
            await ipam.release_handle(handle)
            continue
        host, handle = rnd.choice(HOSTS), f"t{trial}-{i}"
        _say(f"intent {handle}")
        v4, _ = await ipam.auto_assign(host, handle, num4=1, partial=False, attrs={
            "host": host, "orchestrator": "crash", "workload": handle, "endpoint": "eth0"})
        ep = WorkloadEndpoint.model_validate({"state": "active", "name": f"cali{trial:04d}x{i:03d}",
                                              "mac": "ee:ee:ee:ee:ee:ee", "profile_ids": [],
                                              "ipv4_nets": [f"{v4[0]}/32"]})
        await eps.create(host, "crash", handle, "eth0", ep)
        live.append((host, handle))


def _zygote(endpoint: str) -> None:
    """Fork one child per line on stdin ("<trial> <seed>"); report its pid, then its end."""
    import libcalico.ipam  # noqa: F401 - warm: the imports are the slow part of a fresh interpreter
    import libcalico.resources  # noqa: F401

    for line in sys.stdin:
        trial, seed = map(int, line.split())
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(_child(endpoint, trial, seed))
                os._exit(0)
            except BaseException as e:  # noqa: BLE001 - reported to the test, which fails on it
                _say(f"error {e!r}")
                os._exit(1)
        _say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"done {status}")


# ---- the test -------------------------------------------------------------------------------

def _raw_truth(etcd) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """From raw etcd records, without libcalico: ip -> handle, endpoint handles, endpoint ip -> handle."""
    import base64
    import ipaddress

    kvs = json.loads(etcd.etcdctl("get", "--prefix", "/calico/", "-w", "json")).get("kvs", [])
    held, eps, ep_ips = {}, set(), {}
    for kv in kvs:
        key = base64.b64decode(kv["key"]).decode()
        if key.startswith("/calico/ipam/v2/assignment/") or "/workload/crash/" in key:
            val = json.loads(base64.b64decode(kv["value"]).decode())
        if key.startswith("/calico/ipam/v2/assignment/"):
            net = ipaddress.ip_network(val["cidr"])
            for o, a in enumerate(val["allocations"]):
                if a is not None:
                    held[str(net.network_address + o)] = val["attributes"][a]["handle_id"]
        elif "/workload/crash/" in key:
            handle = key.split("/workload/crash/")[1].split("/")[0]
            eps.add(handle)
            for net in val.get("ipv4_nets", []):
                ep_ips[net.split("/")[0]] = handle
    return held, eps, ep_ips


class _Lines:
    """Lines from the zygote's stdout, with a deadline so a stuck child fails the test, not CI."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.buf = proc, b""

    def until(self, prefix: str, timeout: float = 30.0) -> list[str]:
        import select

        lines: list[str] = []
        while True:
            while b"\n" not in self.buf:
                ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
                chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
                if not chunk:
                    err = self.proc.stderr.read().decode()[-2000:] if self.proc.poll() is not None else ""
                    raise AssertionError(f"no {prefix!r} line from the zygote (seen {lines[-5:]}) {err}")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\n", 1)
            line = raw.decode()
            assert not line.startswith("error "), f"child failed: {line}"
            lines.append(line)
            if line.startswith(prefix):
                return lines


@pytest.fixture
def zygote(etcd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, __file__, "zygote", etcd.endpoint], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield proc
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_sigkill_at_random_points_check_finds_every_leak_and_repair_spares_the_live(etcd, zygote):
    from libcalico import keys
    from libcalico.datastore import DatastoreClient
    from libcalico.ipam import Ipam
    from libcalico.ipam_check import check, repair
    from libcalico.models import WorkloadEndpoint
    from libcalico.resources import Nodes, WorkloadEndpoints

    client = DatastoreClient([etcd.endpoint], timeout=10)
    await client.put(keys.pool(POOL), json.dumps({"cidr": POOL}))
    for n, host in enumerate(HOSTS):
        await Nodes(client).register(host, f"192.0.2.{n + 1}", None, None)
    ipam, eps = Ipam(client), WorkloadEndpoints(client)
    rnd = random.Random(1515)
    out = _Lines(zygote)
    trials_with_leaks = revived_total = 0
    for trial in range(TRIALS):
        zygote.stdin.write(f"{trial} {rnd.randrange(1 << 30)}\n".encode())
        zygote.stdin.flush()
        pid = int(out.until("pid ")[-1].split()[1])
        out.until("ready")
        time.sleep(rnd.uniform(0, MAX_KILL_DELAY))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it had finished all its work
        out.until("done ")

        held, with_ep, _ = _raw_truth(etcd)
        expected = {ip: h for ip, h in held.items() if h not in with_ep}
        report = await check(client)
        assert {x.ip: x.handle for x in report.leaked} == expected, f"trial {trial}"
        assert not (report.unrecorded or report.orphan_blocks or report.handle_mismatches or report.corrupt), \
            f"trial {trial}: {report.to_json()}"
        trials_with_leaks += bool(expected)
        # a workload claims one of the reported addresses after the report (a slow plugin finishing)
        revived = None
        if report.leaked and trial % 3 == 0:
            leak = report.leaked[0]
            revived = leak.ip
            await eps.create(leak.host, "crash", leak.handle, "eth0", WorkloadEndpoint.model_validate(
                {"state": "active", "name": "calirevived0", "mac": "ee:ee:ee:ee:ee:ee", "profile_ids": [],
                 "ipv4_nets": [f"{leak.ip}/32"]}))
            revived_total += 1
        live_before = _raw_truth(etcd)[2]
        result = await repair(client, report)
        assert sorted(result.released) == sorted(ip for ip in expected if ip != revived), f"trial {trial}"
        held_after, _, ep_ips_after = _raw_truth(etcd)
        for ip, handle in live_before.items():  # nothing a live workload holds was released
            assert held_after.get(ip) == handle, f"trial {trial}: live {ip} of {handle} lost"
        assert set(held_after) == set(ep_ips_after), f"trial {trial}: leaks left after repair"
        assert (await check(client)).clean, f"trial {trial}"
        # start the next trial from an empty pool: workloads deleted the proper way
        for s in await eps.list(orchestrator=None):
            await eps.delete(s)
            await ipam.release_handle(s.key.workload)
    await client.close()
    print(f"\n{TRIALS} SIGKILLs: {trials_with_leaks} left leaks, all found and repaired; "
          f"{revived_total} claimed after the report were kept")
    # the kills really landed mid-operation (otherwise this test could not fail)
    assert trials_with_leaks >= TRIALS // 10, trials_with_leaks
    assert revived_total >= 5


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    if sys.argv[1] == "zygote":
        _zygote(sys.argv[2])
