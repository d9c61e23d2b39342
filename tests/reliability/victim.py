"""A victim's view of one Felix namespace, and the host's-traffic checks, for the semantic fuzz test.

The view is every kernel object that belongs to the victim endpoint alone:
its routes, the rules of its own chains (and of its profile's chains), the
dispatch rules that jump to them, and every nat rule naming its address or
its external address.  An attacker's keys may change anything else, never
this text: tests compare it byte for byte with the text programmed before
the attacker wrote anything.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re

from felix import names

_DNAT_RE = re.compile(r"-d (\S+?)(?:/32)? .*-j DNAT --to-destination (\S+)")
_SNAT_RE = re.compile(r"-s (\S+?)(?:/32)? .*-j SNAT --to-source (\S+)")


def rss_bytes() -> int:
    """This process's resident set now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def victim_chains(iface: str, profiles: list[str]) -> list[str]:
    chains = [names.endpoint_chain("to", iface), names.endpoint_chain("from", iface)]
    chains += [names.profile_chain(p, d) for p in profiles for d in ("i", "o")]
    return chains


def victim_view(ns, backend, iface: str, profiles: list[str], addrs: list[str]) -> dict[str, str]:
    """Routes, chains and nat rules of one endpoint, as the kernel holds them (text, sorted)."""
    view = {"routes4": ns.run("ip", "-4", "route", "show", "dev", iface).stdout,
            "routes6": ns.run("ip", "-6", "route", "show", "dev", iface).stdout}
    chains = victim_chains(iface, profiles)
    owned = tuple(f"-A {c} " for c in chains)
    ep_chains = chains[:2]   # the dispatch rules jumping to these are the victim's too (profiles are shared)
    targets = tuple(f"-g {c}" for c in ep_chains) + tuple(f"-j {c}" for c in ep_chains)
    for v in (4, 6):
        lines = ns.run(backend.save_cmd(v), "-t", "filter").stdout.splitlines()
        view[f"filter{v}"] = "\n".join(sorted(
            ln for ln in lines
            if ln.startswith(owned) or (ln.startswith("-A ") and ln.endswith(targets))))
    nat = ns.run(backend.save_cmd(4), "-t", "nat").stdout.splitlines()
    view["nat4"] = "\n".join(sorted(ln for ln in nat if ln.startswith("-A ")
                                    and any(re.search(rf"(?<![\d.]){re.escape(a)}(?![\d])", ln) for a in addrs)))
    return view


def diff_views(before: dict[str, str], after: dict[str, str]) -> str:
    out = []
    for k in before:
        if before[k] != after.get(k):
            out += difflib.unified_diff(before[k].splitlines(), after.get(k, "").splitlines(), f"{k} before",
                                        f"{k} after", lineterm="", n=0)
    return "\n".join(out)


def nat_pairs(ns, backend) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """((int_ip, ext_ip) of every DNAT rule, (int_ip, ext_ip) of every SNAT rule) in the v4 nat table."""
    dnat, snat = [], []
    for ln in ns.run(backend.save_cmd(4), "-t", "nat").stdout.splitlines():
        if m := _DNAT_RE.search(ln):
            dnat.append((m.group(2), m.group(1)))
        elif m := _SNAT_RE.search(ln):
            snat.append((m.group(1), m.group(2)))
    return dnat, snat


def workload_routes(ns, prefix: str) -> list[tuple[str, str]]:
    """(dst, dev) of every main-table route on an interface starting with `prefix`, both families."""
    out = []
    for fam in ("-4", "-6"):
        for r in json.loads(ns.run("ip", "-j", fam, "route", "show").stdout or "[]"):
            dev, dst = r.get("dev", ""), r.get("dst", "")
            if dev.startswith(prefix) and not dst.startswith("fe80:") and r.get("protocol") != "kernel":
                out.append((dst, dev))
    return out


def covers(dst: str, addr: str) -> bool:
    """True when route destination `dst` ("default", an address, or a CIDR) contains `addr`."""
    a = ipaddress.ip_address(addr)
    if dst == "default":
        return True
    net = ipaddress.ip_network(dst, strict=False)
    return net.version == a.version and a in net


def declared_nat(doc: str) -> set[tuple[str, str]]:
    """(int_ip, ext_ip) pairs an endpoint document asks for (empty for anything not well formed)."""
    try:
        d = json.loads(doc)
        return {(str(n["int_ip"]), str(n["ext_ip"])) for n in d.get("ipv4_nat") or []}
    except (ValueError, TypeError, KeyError, AttributeError):
        return set()
