"""The one naming authority for every iptables chain and ipset Felix creates.

Why one place: names are the only thing two writers of the same kernel
object share.  When a user-chosen id (a tag, a profile, an interface, a
selector) can spell the same name as one of Felix's own objects, two parts
of Felix fight over it (a profile tag `masq-ipam-pools` once filled NAT
outgoing's pool set with workload addresses).  So every name is built here,
and the grammar keeps the namespaces disjoint by construction:

Chains (`felix-` + at most 22 chars; iptables allows 28):
- internal: `felix-` + an upper-case word (`felix-INPUT`, `felix-NAT-OUTGOING`);
- user-derived: `felix-<p>-<id>` with `<p>` lower-case letters (`to`, `from`,
  `td`, `fd`, `p`, `pi`, `po`, `hi`, `ho`, `r`).  A lower-case letter right after
  `felix-` can never start an internal name, and two such prefixes can never
  both match one name (each ends at its first `-`).
Ipsets (`felix-v<N>-` + at most 22 chars; ipset allows 31):
- tags: the tag itself (tags are `[A-Za-z0-9_.-]`, never `:`);
- selectors: `s:<unique id>`;
- internal: `i:<id>` (`felix-v4-i:masq-ipam-pools`).
In both, an id that does not fit, starts with `_` or holds any other
character becomes `_` + base32(sha256(namespace, id)), cut to fit: such a body
starts with `_`, which no verbatim body does, and the namespace is part of
what is hashed, so hashed names of different namespaces cannot meet either.
The ipset writer's scratch set `felix-v<N>-_tmp` is lower case after the `_`
and hashed bodies are upper-case base32, so it never meets a name from here.

This module is neutral ground between the calculators (felix.calc), which
make every name, and the writers (felix.dataplane), which only check names;
it imports neither.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache

PREFIX = "felix-"
MAX_CHAIN_LEN = 28  # iptables' limit (XT_EXTENSION_MAXNAMELEN 29 incl. NUL)
MAX_SET_NAME = 31   # IPSET_MAXNAMELEN 32 incl. NUL

_ID_RE = re.compile(r"[A-Za-z0-9_.-]+")          # what a verbatim id may hold (libcalico's SAFE_ID charset)
_USER_CHAIN_PREFIX_RE = re.compile(r"felix-[a-z]+-")
_INTERNAL_CHAIN_RE = re.compile(r"felix-[A-Z][A-Z-]*")
_INTERNAL_SET_ID_RE = re.compile(r"[a-z][a-z0-9-]*")


def _internal_chain(name: str) -> str:
    if not _INTERNAL_CHAIN_RE.fullmatch(name) or len(name) > MAX_CHAIN_LEN:
        raise ValueError(f"internal chain {name!r} must be felix-<UPPER-CASE> within {MAX_CHAIN_LEN} chars")
    return name


# ---- internal chains -------------------------------------------------------------------------
INPUT = _internal_chain("felix-INPUT")
FORWARD = _internal_chain("felix-FORWARD")
OUTPUT = _internal_chain("felix-OUTPUT")
FROM_ENDPOINT = _internal_chain("felix-FROM-ENDPOINT")
TO_ENDPOINT = _internal_chain("felix-TO-ENDPOINT")
BASE_CHAINS = (INPUT, FORWARD, OUTPUT, FROM_ENDPOINT, TO_ENDPOINT)

NAT_PREROUTING = _internal_chain("felix-PREROUTING")
NAT_OUTPUT = _internal_chain("felix-OUTPUT")
NAT_POSTROUTING = _internal_chain("felix-POSTROUTING")
NAT_FIP_DNAT = _internal_chain("felix-FIP-DNAT")
NAT_FIP_SNAT = _internal_chain("felix-FIP-SNAT")
NAT_OUTGOING = _internal_chain("felix-NAT-OUTGOING")

# ---- internal ipset ids ----------------------------------------------------------------------
MASQ_POOLS = "masq-ipam-pools"   # pools with masquerade on
ALL_POOLS = "all-ipam-pools"     # every pool


def _digest(namespace: str, ident: str, length: int) -> str:
    d = hashlib.sha256(f"{namespace}\0{ident}".encode()).digest()
    return base64.b32encode(d).decode().rstrip("=")[:length]


def _verbatim(ident: str, room: int) -> bool:
    return len(ident) <= room and bool(_ID_RE.fullmatch(ident)) and not ident.startswith("_")


def chain_name(prefix: str, ident: str) -> str:
    """A user-derived chain: `prefix + ident` when it fits, else `prefix + "_" + hash`.

    `prefix` must be `felix-<lower-case letters>-`, the namespace no internal
    chain can enter.
    """
    if not _USER_CHAIN_PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"chain prefix {prefix!r} must be felix-<lower-case letters>-")
    room = MAX_CHAIN_LEN - len(prefix)
    if room < 9:
        raise ValueError(f"chain prefix {prefix!r} leaves no room for an id")
    if _verbatim(ident, room):
        return prefix + ident
    return prefix + "_" + _digest(prefix, ident, room - 1)


def set_prefix(version: int) -> str:
    if version not in (4, 6):
        raise ValueError(f"IP version {version!r} is not 4 or 6")
    return f"{PREFIX}v{version}-"


def _set_name(version: int, namespace: str, ident: str) -> str:
    prefix = set_prefix(version)
    room = MAX_SET_NAME - len(prefix)
    if _verbatim(ident, room - len(namespace)):
        return prefix + namespace + ident
    return prefix + "_" + _digest(namespace or "tag", ident, room - 1)


@lru_cache(maxsize=65536)
def endpoint_chain(direction: str, ifname: str) -> str:
    """`felix-to-<if>` (traffic to the workload) or `felix-from-<if>`; ifnames are <= 15 chars."""
    assert direction in ("to", "from")
    return chain_name(f"{PREFIX}{direction}-", ifname)


@lru_cache(maxsize=65536)
def dispatch_chain(direction: str, iface_prefix: str) -> str:
    """A branch of the endpoint dispatch tree: `felix-fd-<prefix>` / `felix-td-<prefix>`."""
    assert direction in ("to", "from")
    return chain_name(f"{PREFIX}{direction[0]}d-", iface_prefix)


@lru_cache(maxsize=65536)
def profile_chain(profile_id: str, direction: str) -> str:
    """`felix-p-<id>-i` (inbound) / `felix-p-<id>-o` (outbound); the suffix is always present, so
    appending it stays injective."""
    assert direction in ("i", "o")
    return chain_name(f"{PREFIX}p-", f"{profile_id}-{direction}")


@lru_cache(maxsize=65536)
def policy_chain(tier: str, policy: str, direction: str) -> str:
    """`felix-pi-<hash>` / `felix-po-<hash>`: the `/` between tier and policy makes it always hashed."""
    assert direction in ("i", "o")
    return chain_name(f"{PREFIX}p{direction}-", f"{tier}/{policy}")


@lru_cache(maxsize=65536)
def host_endpoint_chain(direction: str, ifname: str) -> str:
    """`felix-hi-<if>` (arriving through the interface) / `felix-ho-<if>` (leaving)."""
    assert direction in ("i", "o")
    return chain_name(f"{PREFIX}h{direction}-", ifname)


@lru_cache(maxsize=65536)
def rule_chain(parent: str, index: int, part: int) -> str:
    """`felix-r-<hash>`: a sub-chain of rule `index` of chain `parent` (part 1, 2: a rule's port
    lists too long for one line); the `/` makes it always hashed, distinct per parent chain."""
    return chain_name(f"{PREFIX}r-", f"{parent}/{index}/{part}")


@lru_cache(maxsize=65536)
def tag_ipset(tag: str, version: int) -> str:
    """`felix-v4-<tag>` / `felix-v6-<tag>`."""
    return _set_name(version, "", tag)


def selector_ipset(unique_id: str, version: int) -> str:
    """`felix-v4-s:<uid>` for rule selectors; `:` cannot occur in a tag."""
    return _set_name(version, "s:", unique_id)


def internal_ipset(ident: str, version: int) -> str:
    """`felix-v4-i:<id>` for Felix's own sets (NAT outgoing's pools)."""
    if not _INTERNAL_SET_ID_RE.fullmatch(ident) or len(ident) + 2 > MAX_SET_NAME - len(set_prefix(version)):
        raise ValueError(f"internal ipset id {ident!r} must be short lower-case")
    return _set_name(version, "i:", ident)
