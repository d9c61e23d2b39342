"""Real podman (CNI backend) on the node namespaces of a test cluster.

Each node gets its own `containers.conf` (runc, low ulimits, the CNI
backend), its own network config directory and the plugin directory with
`calico`, `calico-ipam` and the stock `loopback`/`host-local`; podman runs
under `nsenter --net=/run/netns/<node>` (not `ip netns exec`, which remounts
/sys and hides the cgroup mounts), so the plugins run in the node's network
namespace and the host side of each veth lands on that node.  The image is
busybox-static imported from a tarball: no registry.

Container names start with `ct<pid>-` like the harness's namespaces, and
`close()` force-removes every container this harness started (also after a
failure), which runs the plugin's DEL.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

from calico_testing.netns import PREFIX

IMAGE = "localhost/calico-test-bb:latest"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
STOCK_PLUGINS = ("loopback", "host-local", "portmap")
STOCK_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
_names = itertools.count()


def available() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None


def ensure_image(image: str = IMAGE) -> str:
    """The busybox image, imported once per machine."""
    if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode == 0:
        return image
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not installed (busybox-static, from scripts/install-deps)")
    with tempfile.TemporaryDirectory(prefix="calico-bb-") as d:
        os.makedirs(os.path.join(d, "bin"))
        shutil.copy2(busybox, os.path.join(d, "bin", "busybox"))
        for cmd in ("sh", "ping", "ip", "sleep", "nc", "cat", "true", "ls", "wget", "httpd"):
            os.symlink("busybox", os.path.join(d, "bin", cmd))
        tar = subprocess.Popen(["tar", "-C", d, "-c", "."], stdout=subprocess.PIPE)
        r = subprocess.run(["podman", "import", "-", image], stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if r.returncode != 0:
            raise RuntimeError(f"podman import: {r.stderr.strip()}")
    return image


def plugin_dir(path: str) -> str:
    """A CNI plugin directory holding our plugins and the stock ones podman needs."""
    os.makedirs(path, exist_ok=True)
    for name in ("calico", "calico-ipam"):
        src = os.path.join(VENV_BIN, name)
        dst = os.path.join(path, name)
        if not os.path.lexists(dst):
            os.symlink(src, dst)
    for name in STOCK_PLUGINS:
        for d in STOCK_DIRS:
            src = os.path.join(d, name)
            dst = os.path.join(path, name)
            if os.path.exists(src) and not os.path.lexists(dst):
                os.symlink(src, dst)
    return path


class PodmanNode:
    """podman for one node namespace (`ns` is its name under /run/netns)."""

    def __init__(self, ns: str, nodename: str, etcd_endpoints: str, workdir: str, cni_bin: str | None = None):
        self.ns, self.nodename, self.etcd_endpoints = ns, nodename, etcd_endpoints
        self.dir = os.path.join(workdir, f"podman-{ns}")
        self.net_dir = os.path.join(self.dir, "net.d")
        self.cni_bin = plugin_dir(cni_bin or os.path.join(self.dir, "bin"))
        os.makedirs(self.net_dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "containers.conf")
        with open(self.conf, "w") as f:
            f.write("[containers]\n"
                    'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                    "[engine]\n"
                    'runtime = "runc"\n'
                    "[network]\n"
                    'network_backend = "cni"\n'
                    f'cni_plugin_dirs = ["{self.cni_bin}"]\n'
                    f'network_config_dir = "{self.net_dir}"\n')
        self.containers: list[str] = []

    def add_network(self, name: str, cni_version: str = "1.0.0", ipam: dict | None = None, **keys: Any) -> str:
        plugin = {"type": "calico", "etcd_endpoints": self.etcd_endpoints, "nodename": self.nodename,
                  "log_level": "info", "ipam": ipam or {"type": "calico-ipam"}, **keys}
        path = os.path.join(self.net_dir, f"{name}.conflist")
        with open(path, "w") as f:
            json.dump({"cniVersion": cni_version, "name": name, "plugins": [plugin]}, f)
        return path

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ, CONTAINERS_CONF=self.conf)
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns}", "podman", *args], capture_output=True,
                           text=True, timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} on {self.ns} failed: {r.stderr.strip()[-2000:]}")
        return r

    def new_name(self, tag: str = "c") -> str:
        return f"{PREFIX}{tag}{next(_names)}"

    def run(self, network: str, name: str | None = None, *cmd: str, check: bool = True
            ) -> subprocess.CompletedProcess:
        """`podman run -d` a sleeping container on `network`; returns the result (name in .name)."""
        name = name or self.new_name()
        self.containers.append(name)
        r = self.podman("run", "-d", "--name", name, "--network", network, ensure_image(),
                        *(cmd or ("sleep", "3600")), check=check)
        r.name = name  # type: ignore[attr-defined]
        return r

    def exec(self, name: str, *cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.podman("exec", name, *cmd, check=check, timeout=timeout)

    def ip(self, name: str, family: int = 4, dev: str = "eth0") -> str:
        out = self.exec(name, "ip", f"-{family}", "-o", "addr", "show", "dev", dev, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts or "inet6" in parts:
                addr = parts[3].split("/")[0]
                if not addr.startswith("fe80:"):
                    return addr
        raise AssertionError(f"{name} has no IPv{family} address on {dev}: {out!r}")

    def ping(self, name: str, ip: str, count: int = 1, wait: int = 1, size: int | None = None,
             dont_fragment: bool = False) -> bool:
        args = ["ping", "-c", str(count), "-W", str(wait)]
        if size is not None:
            args += ["-s", str(size)]
        if dont_fragment:
            args += ["-M", "do"]
        return self.exec(name, *args, ip, timeout=count * wait + 20).returncode == 0

    def inspect(self, name: str) -> dict:
        return json.loads(self.podman("inspect", name).stdout)[0]

    def result_ips(self, names: list[str], network: str) -> dict[str, str]:
        """Each container's IPv4 address on `network` as podman recorded the plugin's result (one exec)."""
        docs = json.loads(self.podman("inspect", *names).stdout)
        return {d["Name"]: d["NetworkSettings"]["Networks"][network]["IPAddress"] for d in docs}

    def sandbox(self, name: str) -> str:
        """The container's network namespace file."""
        return self.inspect(name)["NetworkSettings"]["SandboxKey"]

    def container_id(self, name: str) -> str:
        return self.inspect(name)["Id"]

    def rm(self, name: str, check: bool = True) -> subprocess.CompletedProcess:
        r = self.podman("rm", "-f", "-t", "0", name, check=check)
        if name in self.containers:
            self.containers.remove(name)
        return r

    def close(self) -> None:
        for name in list(self.containers):
            try:
                self.rm(name, check=False)
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        self.containers = []
