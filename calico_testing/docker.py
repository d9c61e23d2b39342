"""A real dockerd per node namespace, for the libnetwork driver's tests.

Docker looks for legacy plugins in the fixed directory /run/docker/plugins,
so each node's dockerd runs in its own mount namespace (`unshare -m`, private
propagation) with that node's plugin directory bind-mounted there, and in the
node's network namespace (`nsenter --net`, not `ip netns exec`, which would
remount /sys and hide the cgroup mounts).  `--iptables=false --bridge=none`:
Docker touches neither the node's firewall nor its links; the only networks
are the ones the test creates.  Everything (data root, exec root, API
socket) lives under one directory unique to the run, and `stop()` removes
containers, stops dockerd (containerd goes with it), kills any shim that
outlived it, and deletes the directory; it is safe to call twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

from calico_testing.netns import wait_for

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
PLUGIN_DIR = "/run/docker/plugins"
BUSYBOX = "/usr/bin/busybox" if os.path.exists("/usr/bin/busybox") else "/bin/busybox"
BUSYBOX_LINKS = ("sh", "ping", "ip", "sleep", "nc", "cat", "hostname")


class DockerDaemon:
    def __init__(self, netns: str, plugin_dir: str, base_dir: str | None = None):
        self.netns = netns
        self.plugin_dir = plugin_dir
        self.dir = base_dir or tempfile.mkdtemp(prefix=f"calico-dockerd-{os.getpid()}-")
        self.socket = os.path.join(self.dir, "docker.sock")
        self.pidfile = os.path.join(self.dir, "docker.pid")
        self.proc: subprocess.Popen | None = None

    # ---- life cycle --------------------------------------------------------------
    def start(self, timeout: float = 60) -> DockerDaemon:
        os.makedirs(PLUGIN_DIR, exist_ok=True)  # the mount point, in the root mount namespace
        os.makedirs(self.plugin_dir, exist_ok=True)
        os.makedirs(self.dir, exist_ok=True)
        cmd = (f"mount --bind {self.plugin_dir} {PLUGIN_DIR} && exec dockerd "
               f"--data-root {self.dir}/root --exec-root {self.dir}/exec -H unix://{self.socket} "
               f"--pidfile {self.pidfile} --iptables=false --ip6tables=false --bridge=none --ip-masq=false")
        log = open(os.path.join(self.dir, "dockerd.log"), "ab")
        try:
            self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "-m",
                                          "--propagation", "private", "sh", "-c", cmd],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        try:
            wait_for(lambda: self._alive() and self.docker("info", check=False, timeout=10).returncode == 0,
                     timeout=timeout, what=f"dockerd in {self.netns}")
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"dockerd in {self.netns} exited: {self.log()[-2000:]}")
        return True

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "dockerd.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False, timeout=20).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._kill_leftovers()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """containerd shims (and anything else) started for this daemon: their command lines name our dir."""
        mine = self.dir.encode()
        for _ in range(2):
            found = False
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == os.getpid():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if mine not in f.read():
                            continue
                    os.kill(int(pid), signal.SIGKILL)
                    found = True
                except (OSError, ProcessLookupError):
                    continue
            if not found:
                return
            time.sleep(0.3)

    def __enter__(self) -> DockerDaemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- use -----------------------------------------------------------------------
    def docker(self, *args: str, check: bool = True, timeout: float = 120, input: bytes | str | None = None
               ) -> subprocess.CompletedProcess:
        env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}")
        r = subprocess.run([DOCKER, *args], capture_output=True, text=not isinstance(input, bytes),
                           timeout=timeout, input=input, env=env)
        if isinstance(input, bytes):
            r.stdout, r.stderr = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def import_busybox(self, tag: str = "bb:latest") -> str:
        """A one-binary image from busybox-static (no registry here), tagged `tag`."""
        path = os.path.join(self.dir, "busybox.tar")
        with tarfile.open(path, "w") as tar:
            tar.add(BUSYBOX, arcname="bin/busybox")
            for name in BUSYBOX_LINKS:
                info = tarfile.TarInfo(f"bin/{name}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        with open(path, "rb") as f:
            self.docker("import", "-", tag, input=f.read())
        return tag

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`docker run -d` with the ulimit this sandbox needs (it cannot raise rlimits)."""
        return self.docker("run", "-d", "--ulimit", "nofile=1024:1024", *args, check=check)

    def ip_of(self, container: str) -> str:
        out = self.docker("exec", container, "ip", "-4", "-o", "addr", "show").stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[1] != "lo":
                return parts[3].split("/")[0]
        raise AssertionError(f"container {container} has no IPv4 address: {out}")

    def ping(self, container: str, ip: str, count: int = 1, wait: int = 1) -> bool:
        r = self.docker("exec", container, "ping", "-c", str(count), "-W", str(wait), ip, check=False,
                        timeout=count * wait + 15)
        return r.returncode == 0
