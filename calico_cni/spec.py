"""The CNI protocol (containernetworking/cni SPEC.md), independent of Calico.

Results are built once in the newest shape and converted down for the
version the config asked for, so every command answers every version the
same way: 0.3.x and 0.4.0 carry `version` on each IP, 1.0.0 drops it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Error codes of the spec; 100+ are the plugin's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
ATTACH_FAILED = 100
IPAM_FAILED = 101
CHECK_FAILED = 102

MAX_STDIN = 1 << 20  # a network config is a few hundred bytes; refuse megabytes of it


class CniError(Exception):
    """An answer the runtime gets as the spec's error object; `msg` names the key or variable at fault."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def check_version(conf: Mapping[str, Any]) -> str:
    v = conf.get("cniVersion", "0.3.1") if isinstance(conf, Mapping) else None
    if not isinstance(v, str) or v not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion: {v!r} is not supported",
                       f"supported: {', '.join(SUPPORTED)}")
    return v


def read_config(stdin: Any = None) -> dict[str, Any]:
    """The network config from stdin; decode errors name what was wrong."""
    stream = stdin if stdin is not None else sys.stdin.buffer
    raw = stream.read(MAX_STDIN + 1)
    if len(raw) > MAX_STDIN:
        raise CniError(DECODE_FAILURE, f"network config on stdin is larger than {MAX_STDIN} bytes")
    try:
        conf = json.loads(raw or b"{}")
    except ValueError as e:
        raise CniError(DECODE_FAILURE, f"network config on stdin is not JSON: {e}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin must be a JSON object")
    return conf


def env_var(env: Mapping[str, str], name: str, required: bool = True) -> str:
    value = env.get(name, "")
    if required and not value:
        raise CniError(INVALID_ENV, f"{name}: not set")
    if len(value) > 4096:
        raise CniError(INVALID_ENV, f"{name}: longer than 4096 characters")
    return value


def cni_args(env: Mapping[str, str]) -> dict[str, str]:
    """CNI_ARGS `K1=V1;K2=V2` as a dict; a malformed pair is an error naming CNI_ARGS."""
    out: dict[str, str] = {}
    text = env.get("CNI_ARGS", "")
    if len(text) > 4096:
        raise CniError(INVALID_ENV, "CNI_ARGS: longer than 4096 characters")
    for pair in filter(None, text.split(";")):
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[k] = v
    return out


# ---- results ------------------------------------------------------------------

def ip_version(address: str) -> str:
    return "6" if ":" in address else "4"


def convert(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A result (any supported shape) in the shape of `version`."""
    out = {k: v for k, v in result.items() if k not in ("cniVersion", "ips")}
    ips = []
    for ip in result.get("ips", []):
        ip = dict(ip)
        if version_tuple(version) < (1, 0, 0):
            ip.setdefault("version", ip_version(ip["address"]))
        else:
            ip.pop("version", None)
        ips.append(ip)
    if version_tuple(version) < (1, 1, 0):
        out["interfaces"] = [{k: v for k, v in i.items() if k in ("name", "mac", "sandbox")}
                             for i in out.get("interfaces", [])]
    out = {"cniVersion": version, **out, "ips": ips}
    if not out.get("interfaces"):
        out.pop("interfaces", None)
    return out


def result_ips(result: Any, what: str = "prevResult") -> list[str]:
    """Plain addresses (no prefix) of a result of any version; decode errors name `what`."""
    if not isinstance(result, dict) or not isinstance(result.get("ips", []), list):
        raise CniError(DECODE_FAILURE, f"{what}: not a CNI result")
    out = []
    for ip in result.get("ips", []):
        addr = ip.get("address") if isinstance(ip, dict) else None
        if not isinstance(addr, str) or "/" not in addr:
            raise CniError(DECODE_FAILURE, f"{what}: ips entry {ip!r} has no address/prefix")
        out.append(addr.split("/")[0])
    return out


def emit(doc: dict[str, Any], out: Any = None) -> None:
    stream = out if out is not None else sys.stdout
    stream.write(json.dumps(doc) + "\n")
    stream.flush()


def version_answer(conf_version: str | None = None) -> dict[str, Any]:
    return {"cniVersion": conf_version if conf_version in SUPPORTED else LATEST,
            "supportedVersions": list(SUPPORTED)}


def environ() -> dict[str, str]:
    return dict(os.environ)
