"""Benchmark confd + BIRD (`make bench-confd`): numbers, not pass/fail.

- etcd change -> BIRD reconfigured (`configure` answered 0003): p50/p99 over 200 changes;
- render + `bird -p` + install + `configure` with 10, 100 and 500 global peers;
- reloads caused by 1,000 no-op writes (identical bytes, and same value re-serialized): must be 0;
- reloads caused by a burst of 100 puts written over ~40 ms: target <= 2 (the debounce).

Real etcd (loopback), real BIRD in a namespace of its own (so its kernel protocol
never touches the root namespace), confd's own loop in this process.
Targets: p99 <= 200 ms, 500 peers <= 2 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bird_control.protocol import BirdClient  # noqa: E402
from calico_testing.etcd import EtcdServer  # noqa: E402
from calico_testing.netns import Netns  # noqa: E402
from confd import render as _render  # noqa: E402
from confd.daemon import Confd, Settings  # noqa: E402
from libcalico.datastore import DatastoreClient  # noqa: E402
from libcalico.syncer import Syncer  # noqa: E402

G = "/calico/bgp/v1/global"
HOST = "bench-a"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def wait_reload(confd: Confd, marker: str | None, since: int, timeout: float = 10.0) -> None:
    """Until a reload after `since` installed a config containing `marker` (None: any reload)."""
    st = confd.states["bird"]
    deadline = time.monotonic() + timeout
    while True:
        if st.reloads > since and (marker is None or marker.encode() in (st.last_good or b"")):
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no reload with {marker!r}: {confd.problems()}")
        async with confd.reloaded:
            try:
                await asyncio.wait_for(confd.reloaded.wait(), remaining)
            except TimeoutError:
                pass


async def main() -> None:
    tmp = tempfile.mkdtemp(prefix="bench-confd-")
    etcd = EtcdServer().start()
    ns = Netns("bench")
    bird: subprocess.Popen | None = None
    tasks: list[asyncio.Task] = []
    client = DatastoreClient(endpoints=[etcd.endpoint])
    try:
        s = Settings(host=HOST, ip4="10.99.0.1", ip6=None, run_dir=os.path.join(tmp, "run"),
                     conf_dir=os.path.join(tmp, "conf"))
        os.makedirs(s.run_dir)
        await client.put("/calico/v1/Ready", "true")
        await client.put(f"{G}/as_num", "64511")
        await client.put(f"{G}/node_mesh", '{"enabled": true}')
        await client.put(f"/calico/bgp/v1/host/{HOST}/ip_addr_v4", "10.99.0.1")
        await client.put("/calico/v1/ipam/v4/pool/10.65.0.0-16", '{"cidr": "10.65.0.0/16"}')
        await client.put(f"/calico/ipam/v2/host/{HOST}/ipv4/block/10.65.1.0-26", '{"state": "confirmed"}')
        confd = Confd(s)
        confd.load()
        syncer = Syncer(client, s.prefixes(), wait_for_ready=True)

        async def consume() -> None:
            async for batch in syncer.batches():
                confd.apply(batch)

        tasks = [asyncio.create_task(consume()), asyncio.create_task(confd.render_loop())]
        cfg = os.path.join(s.conf_dir, "bird.cfg")
        sock = os.path.join(s.run_dir, "bird.ctl")
        for _ in range(200):
            if os.path.exists(cfg):
                break
            await asyncio.sleep(0.05)
        bird = ns.popen(["bird", "-f", "-s", sock, "-c", cfg], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        for _ in range(100):
            if os.path.exists(sock):
                break
            await asyncio.sleep(0.05)
        async with BirdClient(sock) as c:
            assert (await c.show_status()).up

        # 1. change -> reconfigured latency.
        lat = []
        for i in range(200):
            ip = f"10.99.2.{i % 50 + 1}"
            asn = 65000 + i
            since = confd.states["bird"].reloads
            t0 = time.perf_counter()
            await client.put(f"{G}/peer_v4/{ip}", json.dumps({"ip": ip, "as_num": asn}))
            await wait_reload(confd, f"neighbor {ip} as {asn};", since)
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)
        print(f"etcd change -> BIRD reconfigured, 200 changes: p50 {statistics.median(lat) * 1000:.1f} ms, "
              f"p99 {pct(lat, 99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms (target p99 <= 200 ms)")
        await client.delete_prefix(f"{G}/peer_v4/")
        await asyncio.sleep(0.5)

        # 2. render + check + configure with N global peers.
        res = confd.resources[[r.name for r in confd.resources].index("bird")]
        for n in (10, 100, 500):
            for i in range(n):
                ip = f"10.{100 + i // 250}.{i % 250}.1"
                key = f"{G}/peer_v4/{ip}"
                confd.store.load_raw({key: json.dumps({"ip": ip, "as_num": 65000 + i})})
            t0 = time.perf_counter()
            text = _render.render(confd.env, res.src, confd.store.context())
            t_render = time.perf_counter() - t0
            since = confd.states["bird"].reloads
            t0 = time.perf_counter()
            await confd.process(res)
            t_total = time.perf_counter() - t0
            assert confd.states["bird"].reloads == since + 1, confd.problems()
            t0 = time.perf_counter()
            r = subprocess.run(["bird", "-p", "-c", cfg], capture_output=True)
            t_check = time.perf_counter() - t0
            assert r.returncode == 0
            print(f"{n:4d} global peers: render {t_render * 1000:.1f} ms, bird -p {t_check * 1000:.1f} ms, "
                  f"render+check+install+configure {t_total * 1000:.1f} ms ({len(text)} bytes; target 500 <= 2 s)")
            for key in [k for k in confd.store.values if "/peer_v4/" in k]:
                confd.store.delete(key)
        confd._dirty.add("bird")
        confd._poke()
        await asyncio.sleep(0.5)

        # 3. no-op writes: same bytes, and the same value written differently.
        await client.put(f"{G}/peer_v4/10.99.3.1", '{"ip": "10.99.3.1", "as_num": 65301}')
        await wait_reload(confd, "neighbor 10.99.3.1 as 65301;", confd.states["bird"].reloads - 1)
        await asyncio.sleep(0.3)
        st = confd.states["bird"]
        r0, w0, n0 = st.reloads, st.writes, st.renders
        forms = ['{"ip": "10.99.3.1", "as_num": 65301}', '{"as_num": "65301", "ip": "10.99.3.1"}',
                 '{"ip":"10.99.3.1","as_num":65301,"comment":"unknown fields are ignored"}']
        for i in range(1000):
            await client.put(f"{G}/peer_v4/10.99.3.1", forms[i % 3] if i % 2 else forms[0])
            if i % 3 == 0:
                await client.put(f"{G}/as_num", "64511")
        await asyncio.sleep(1.0)
        print(f"1,000 no-op writes (+334 identical as_num writes): {st.reloads - r0} reloads "
              f"(must be 0), {st.writes - w0} file writes, {st.renders - n0} renders")

        # 4. a burst: 100 peers written over ~40 ms, as a script adding peers would (each its own put).
        await client.delete_prefix(f"{G}/peer_v4/")
        await wait_reload(confd, None, st.reloads)
        await asyncio.sleep(0.5)
        r0 = st.reloads
        t0 = time.monotonic()
        puts = []
        for i in range(1, 101):
            puts.append(asyncio.create_task(client.put(
                f"{G}/peer_v4/10.99.1.{i}", json.dumps({"ip": f"10.99.1.{i}", "as_num": 65000 + i}))))
            await asyncio.sleep(max(0.0, t0 + i * 0.0004 - time.monotonic()))
        await asyncio.gather(*puts)
        took = time.monotonic() - t0
        await wait_reload(confd, "neighbor 10.99.1.100 as 65100;", r0)
        await asyncio.sleep(1.0)
        print(f"burst of 100 changes written in {took * 1000:.0f} ms: {st.reloads - r0} reloads (target <= 2)")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        if bird is not None and bird.poll() is None:
            bird.terminate()
            bird.wait(5)
        ns.close()
        etcd.close()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    asyncio.run(main())
