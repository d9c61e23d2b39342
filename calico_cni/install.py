"""`calico-install-cni`: put the plugins and a network config where a runtime looks for them.

What the classic `install-cni` container did for each node: copy `calico` and
`calico-ipam` into the runtime's plugin directory (`/opt/cni/bin` for
kubelet, podman's `cni_plugin_dirs`) and write a conflist into its config
directory (`/etc/cni/net.d`).  Files are written to a temporary name and
renamed, so a runtime reading the directory never sees half a file.

Usage:
  calico-install-cni [--bin-dir=DIR] [--conf-dir=DIR] [--network=NAME] [--etcd-endpoints=URLS]
                     [--nodename=NAME] [--cni-version=V] [--conf-name=FILE] [--mtu=N] [--k8s]

Defaults come from the environment as install-cni read it: CNI_BIN_DIR
(/opt/cni/bin), CNI_NET_DIR (/etc/cni/net.d), CNI_CONF_NAME
(10-calico.conflist), ETCD_ENDPOINTS, NODENAME / KUBERNETES_NODE_NAME.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

PLUGINS = ("calico", "calico-ipam")
USAGE = __doc__.split("Usage:", 1)[1].split("\n\n", 1)[0]


def default_conflist(network: str, etcd_endpoints: str, nodename: str | None, version: str = "1.0.0",
                     mtu: int | None = None, k8s: bool = False) -> dict[str, Any]:
    plugin: dict[str, Any] = {"type": "calico", "etcd_endpoints": etcd_endpoints, "log_level": "info",
                              "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "false"}}
    if nodename:
        plugin["nodename"] = nodename
    if mtu:
        plugin["mtu"] = mtu
    plugins: list[dict[str, Any]] = [plugin]
    if k8s:
        plugins.append({"type": "portmap", "snat": True, "capabilities": {"portMappings": True}})
    return {"cniVersion": version, "name": network, "plugins": plugins}


def _atomic_copy(src: str, dst: str) -> None:
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.copy2(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dst)


def _atomic_write(text: str, dst: str) -> None:
    tmp = f"{dst}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, dst)


def plugin_source(name: str) -> str:
    """The installed executable next to this interpreter (the venv or the image's prefix)."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(here):
        return here
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name}: not installed next to {sys.executable} nor on PATH")
    return found


def install(bin_dir: str, conf_dir: str, conflist: dict[str, Any], conf_name: str) -> list[str]:
    os.makedirs(bin_dir, exist_ok=True)
    os.makedirs(conf_dir, exist_ok=True)
    written = []
    for name in PLUGINS:
        dst = os.path.join(bin_dir, name)
        _atomic_copy(plugin_source(name), dst)
        written.append(dst)
    dst = os.path.join(conf_dir, conf_name)
    _atomic_write(json.dumps(conflist, indent=2) + "\n", dst)
    written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    opts: dict[str, str] = {}
    flags = {"--k8s"}
    valued = {"--bin-dir", "--conf-dir", "--network", "--etcd-endpoints", "--nodename", "--cni-version",
              "--conf-name", "--mtu"}
    for a in args:
        k, sep, v = a.partition("=")
        if a in ("-h", "--help"):
            print("Usage:" + USAGE)
            return 0
        if k in valued and sep:
            opts[k] = v
        elif a in flags:
            opts[a] = "1"
        else:
            print(f"calico-install-cni: unknown or incomplete argument {a!r}\nUsage:{USAGE}", file=sys.stderr)
            return 2
    env = os.environ
    mtu_text = opts.get("--mtu")
    if mtu_text is not None and (not mtu_text.isdigit() or not 576 <= int(mtu_text) <= 65535):
        print(f"calico-install-cni: --mtu: {mtu_text!r} is not an MTU (576..65535)", file=sys.stderr)
        return 2
    version = opts.get("--cni-version", "1.0.0")
    if version not in ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"):
        print(f"calico-install-cni: --cni-version: {version!r} is not supported", file=sys.stderr)
        return 2
    conflist = default_conflist(
        opts.get("--network", "calico"),
        opts.get("--etcd-endpoints") or env.get("ETCD_ENDPOINTS") or "http://127.0.0.1:2379",
        opts.get("--nodename") or env.get("NODENAME") or env.get("KUBERNETES_NODE_NAME") or None,
        version, int(mtu_text) if mtu_text else None, "--k8s" in opts)
    try:
        written = install(opts.get("--bin-dir") or env.get("CNI_BIN_DIR") or "/opt/cni/bin",
                          opts.get("--conf-dir") or env.get("CNI_NET_DIR") or "/etc/cni/net.d", conflist,
                          opts.get("--conf-name") or env.get("CNI_CONF_NAME") or "10-calico.conflist")
    except OSError as e:
        print(f"calico-install-cni: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"installed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
