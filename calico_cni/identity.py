"""Who a CNI call is about: the workload endpoint key, the IPAM handle and the veth name.

Kubernetes calls carry `K8S_POD_NAMESPACE`/`K8S_POD_NAME` in CNI_ARGS: the
workload is then `<namespace>.<pod>` under orchestrator `k8s`, so a restarted
pod sandbox (a new container id) is the same workload.  Anything else (podman,
a bare runtime) is orchestrator `cni` with the container id as workload.  The
endpoint id is the interface name inside the container, so DEL needs nothing
but the same environment to find what ADD made.

The IPAM handle and the veth name derive from the workload id (with the
interface name appended for any interface but eth0, so a container on two
networks gets two of each).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from calico_cni.spec import INVALID_ENV, CniError, cni_args, env_var

_SEG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}\Z")
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")
_NETNS_RE = re.compile(r"/[A-Za-z0-9_.:@+/-]{1,1000}\Z")  # a path that is safe on an `ip -batch` line
DEFAULT_IFNAME = "eth0"


@dataclass(frozen=True)
class Identity:
    orchestrator: str
    workload: str
    container_id: str
    ifname: str
    netns: str  # may be "" on DEL

    @property
    def endpoint(self) -> str:
        return self.ifname

    @property
    def attachment(self) -> str:
        """IPAM handle and veth-hash input."""
        return self.workload if self.ifname == DEFAULT_IFNAME else f"{self.workload}.{self.ifname}"


def _seg(value: str, what: str) -> str:
    if not _SEG_RE.match(value):
        raise CniError(INVALID_ENV, f"{what}: {value!r} is not a valid id (letters, digits, _ . -)")
    return value


def identify(env: Mapping[str, str], need_netns: bool) -> Identity:
    cid = _seg(env_var(env, "CNI_CONTAINERID"), "CNI_CONTAINERID")
    ifname = env_var(env, "CNI_IFNAME")
    if not _IFNAME_RE.match(ifname) or ifname in (".", ".."):
        raise CniError(INVALID_ENV, f"CNI_IFNAME: {ifname!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    netns = env_var(env, "CNI_NETNS", required=need_netns)
    if netns and (not _NETNS_RE.match(netns) or "/../" in f"{netns}/"):
        raise CniError(INVALID_ENV, f"CNI_NETNS: {netns!r} is not an absolute namespace path")
    args = cni_args(env)
    ns, pod = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if ns and pod:
        workload = f"{_seg(ns, 'CNI_ARGS K8S_POD_NAMESPACE')}.{_seg(pod, 'CNI_ARGS K8S_POD_NAME')}"
        return Identity("k8s", _seg(workload, "CNI_ARGS pod"), cid, ifname, netns)
    return Identity("cni", cid, cid, ifname, netns)
