"""Faults under the real node programs: etcd down for 30 s, iptables-restore failing, a full log disk.

Felix and confd run as real processes in a host namespace with real etcd,
BIRD and kernel tables.  During each fault the dataplane and BIRD's config
must stay exactly as they were (nothing removed), the programs must stay up
and say what is wrong once, and afterwards apply what changed meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time

import pytest

from calico_testing.netns import wait_for
from tests.integration.felix_topology import FelixHost, eventually
from tests.lib import faults
from tests.reliability.probe import ROOT

BIN = os.path.join(ROOT, ".venv", "bin")
ALLOW = [{"action": "allow"}]
OUTAGE_S = 30


class Confd:
    """calico-confd (and BIRD once there is a config) inside the Felix host namespace."""

    def __init__(self, fh: FelixHost, tmp: str, host_ip: str = "10.99.0.1"):
        self.fh = fh
        self.conf = os.path.join(tmp, "conf")
        self.run = os.path.join(tmp, "run")
        os.makedirs(self.conf)
        os.makedirs(self.run)
        self.log_path = os.path.join(tmp, "confd.log")
        env = {"PATH": f"{BIN}:{os.environ['PATH']}", "NODENAME": fh.hostname, "IP": host_ip,
               "CALICO_CONF_DIR": self.conf, "CALICO_RUN_DIR": self.run, "ETCD_ENDPOINTS": fh.etcd.endpoint}
        with open(self.log_path, "wb") as log:
            self.proc = fh.host.popen(["env", "-i", *[f"{k}={v}" for k, v in env.items()],
                                       os.path.join(BIN, "calico-confd")], stdout=log, stderr=subprocess.STDOUT)
        self.bird: subprocess.Popen | None = None

    @property
    def cfg(self) -> str:
        return os.path.join(self.conf, "bird.cfg")

    def text(self) -> str:
        try:
            with open(self.cfg) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def start_bird(self) -> None:
        self.bird = self.fh.host.popen(["bird", "-f", "-c", self.cfg, "-s", os.path.join(self.run, "bird.ctl")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(os.path.join(self.run, "bird.ctl")), 10, what="BIRD control socket")

    def protocols(self) -> set[str]:
        out = self.fh.host.run("birdc", "-s", os.path.join(self.run, "bird.ctl"), "show", "protocols").stdout
        return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        for p in (self.proc, self.bird):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def outage_lines(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if re.search(r"unavailable|resyncing|connection|UNAVAILABLE", line) and "back after" not in line]


@pytest.mark.slow
def test_etcd_down_30s_felix_and_confd_keep_everything_then_catch_up(netns_factory, tmp_path):
    fh = FelixHost(netns_factory, n_workloads=3, hostname="outage")
    confd = None
    try:
        a, b, c = fh.workloads
        for k, v in {"/calico/v1/Ready": "true", "/calico/bgp/v1/global/as_num": "64512",
                     "/calico/bgp/v1/global/node_mesh": '{"enabled": true}',
                     f"/calico/bgp/v1/host/{fh.hostname}/ip_addr_v4": "10.99.0.1",
                     "/calico/bgp/v1/host/peer2/ip_addr_v4": "10.99.0.2"}.items():
            fh.put(k, v)
        fh.put_profile("open", ALLOW, ALLOW, tags=["open"])
        fh.put_endpoint(a, ["open"])
        fh.put_endpoint(b, ["open"])
        fh.start_felix()
        confd = Confd(fh, str(tmp_path))
        fh.wait_programmed(b)
        wait_for(lambda: "Mesh_10_99_0_2" in confd.text(), 30, what="confd's first render")
        confd.start_bird()
        eventually(lambda: a.ping(b.ip4), 15, "a->b before the outage")
        before_dp = faults.dataplane(fh.host)
        before_cfg = confd.text()
        before_protocols = confd.protocols()
        assert "Mesh_10_99_0_2" in before_protocols
        flog0, clog0 = len(fh.log()), len(confd.log())

        fh.etcd.stop()
        t_end = time.monotonic() + OUTAGE_S
        samples = 0
        while time.monotonic() < t_end:
            assert fh.felix_alive() and confd.alive(), "a program died during the outage"
            assert faults.dataplane(fh.host) == before_dp, "the dataplane changed during the outage"
            assert confd.text() == before_cfg, "bird.cfg changed during the outage"
            assert confd.protocols() == before_protocols, "a BGP protocol went away during the outage"
            assert a.ping(b.ip4), "workload traffic broke during the outage"
            samples += 1
            time.sleep(2)
        fh.etcd.start()
        # What changed while they were cut off (written right after etcd is back) must arrive.
        fh.put_endpoint(c, ["open"])
        fh.put("/calico/bgp/v1/host/peer3/ip_addr_v4", "10.99.0.3")
        fh.wait_programmed(c, timeout=40)
        eventually(lambda: c.ping(a.ip4), 15, "new endpoint reachable after the outage")
        wait_for(lambda: "Mesh_10_99_0_3" in confd.text(), 40, what="confd applies the change after the outage")
        wait_for(lambda: "Mesh_10_99_0_3" in confd.protocols(), 20, what="BIRD reloaded with the new peer")
        assert before_protocols <= confd.protocols()
        felix_out = outage_lines(fh.log()[flog0:])
        confd_out = outage_lines(confd.log()[clog0:])
        print(f"etcd outage {OUTAGE_S}s: {samples} samples identical; felix outage lines {len(felix_out)}, "
              f"confd outage lines {len(confd_out)}")
        assert 1 <= len(felix_out) <= 3, "Felix logs the outage once, not per retry:\n" + "\n".join(felix_out)
        assert 1 <= len(confd_out) <= 3, "confd logs the outage once, not per retry:\n" + "\n".join(confd_out)
    finally:
        if confd is not None:
            confd.close()
        fh.close()


def _get(url_ns, url: str) -> tuple[int, str]:
    r = url_ns.run("python3", "-c", "import urllib.request,sys\n"
                   "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=3); print(r.status); print(r.read().decode())\n"
                   "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())", url, check=False)
    status, _, body = r.stdout.partition("\n")
    return int(status or 0), body


@pytest.mark.slow
def test_xtables_lock_held_10s_felix_retries_reports_and_applies_atomically(netns_factory):
    """Another process holds the xtables lock for 10 s while Felix must program: it waits or retries,
    says so in health and metrics, never half-applies, then converges."""
    fh = FelixHost(netns_factory, n_workloads=2, hostname="xtlock")
    try:
        a, b = fh.workloads
        fh.put("/calico/v1/Ready", "true")
        fh.put_profile("open", ALLOW, ALLOW)
        fh.put_endpoint(a, ["open"])
        # Each restore waits at most 1 s for the lock, well inside the 10 s it is held:
        # a whole apply (4 restores) fails within ~5 s whatever the scheduling, and
        # readiness stays down from then until the lock is released.
        fh.start_felix(FELIX_HEALTHENABLED="true", FELIX_PROMETHEUSMETRICSENABLED="true",
                       FELIX_IPTABLESBACKEND="legacy", FELIX_IPTABLESLOCKTIMEOUTSECS="1")
        fh.wait_programmed(a)
        wait_for(lambda: _get(fh.host, "http://127.0.0.1:9099/readiness")[0] == 200, 30, what="ready")
        before = faults.normalized_iptables(fh.host, 4, only_felix=True)
        seen_states = set()
        with faults.hold_xtables_lock():
            fh.put_endpoint(b, ["open"])
            t_end = time.monotonic() + 10
            while time.monotonic() < t_end:
                now = faults.normalized_iptables(fh.host, 4, only_felix=True)
                seen_states.add(now)
                seen_states.add(_get(fh.host, "http://127.0.0.1:9099/readiness")[0])
                assert b.ip4 not in fh.routes(4), "a route went in before its policy could be written"
                time.sleep(0.5)
        fh.wait_programmed(b, timeout=40)
        eventually(lambda: a.ping(b.ip4), 20, "converged after the lock was released")
        after = faults.normalized_iptables(fh.host, 4, only_felix=True)
        tables = {s for s in seen_states if isinstance(s, str)}
        assert tables <= {before, after}, "a half-applied table was visible while the lock was held"
        assert 503 in seen_states, "readiness never reported the failing apply"
        metrics = _get(fh.host, "http://127.0.0.1:9091/metrics")[1]
        m = re.search(r'^felix_iptables_restore_errors (\S+)$', metrics, re.M)
        assert m and float(m.group(1)) >= 1, "the failed restore is counted in the metrics"
        print(f"xtables lock: readiness codes seen {sorted(s for s in seen_states if isinstance(s, int))}; "
              + " ".join(line for line in metrics.splitlines()
                         if line.startswith("felix_iptables_restore_errors ")))
    finally:
        fh.close()


@pytest.mark.slow
def test_log_disk_full_felix_keeps_running(netns_factory):
    """Felix's log file on a full tmpfs: it keeps programming (logging is best effort)."""
    fh = FelixHost(netns_factory, n_workloads=2, hostname="diskfull")
    disk = faults.SmallTmpfs(size_kb=64)
    try:
        a, b = fh.workloads
        fh.put("/calico/v1/Ready", "true")
        fh.put_profile("open", ALLOW, ALLOW)
        fh.put_endpoint(a, ["open"])
        log_file = os.path.join(disk.path, "felix.log")
        fh.start_felix(FELIX_LOGFILEPATH=log_file, FELIX_LOGSEVERITYFILE="debug")
        fh.wait_programmed(a)
        disk.fill()
        assert disk.free() == 0
        for i in range(40):  # plenty of log-worthy changes on a full disk
            fh.put_profile("open", ALLOW + [{"action": "deny", "src_net": f"10.200.{i}.0/24"}], ALLOW)
        fh.put_endpoint(b, ["open"])
        fh.wait_programmed(b, timeout=40)
        eventually(lambda: a.ping(b.ip4), 20, "programming continues with a full log disk")
        assert fh.felix_alive()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(disk.path, ".filler"))
        fh.put_profile("open", ALLOW, ALLOW)
        eventually(lambda: "10.200." not in fh.iptables_save(4), 20, "still applying after space is back")
    finally:
        fh.close()
        disk.close()
