"""Names of felix chains and ipsets, derived from ids, within the kernel's limits.

The dataplane owns the naming rule (`chain_name`/`ipset_name`: the id as is
when it fits 28/31 chars, else `_` + a hash; `_`-ids are always hashed, so
names never collide); this module only decides the prefixes and suffixes.
Profile chains append `-i`/`-o` to the id before hashing, which stays
injective because the suffix is always present.
"""

from __future__ import annotations

from functools import lru_cache

from felix.dataplane.ipsets import ipset_name
from felix.dataplane.iptables import chain_name

PREFIX = "felix-"

INPUT = "felix-INPUT"
FORWARD = "felix-FORWARD"
OUTPUT = "felix-OUTPUT"
FROM_ENDPOINT = "felix-FROM-ENDPOINT"
TO_ENDPOINT = "felix-TO-ENDPOINT"
BASE_CHAINS = (INPUT, FORWARD, OUTPUT, FROM_ENDPOINT, TO_ENDPOINT)


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
    """`felix-p-<id>-i` (inbound) / `felix-p-<id>-o` (outbound)."""
    assert direction in ("i", "o")
    return chain_name(f"{PREFIX}p-", f"{profile_id}-{direction}")


@lru_cache(maxsize=65536)
def tag_ipset(tag: str, version: int) -> str:
    """`felix-v4-<tag>` / `felix-v6-<tag>`."""
    return ipset_name(version, tag)


def selector_ipset(unique_id: str, version: int) -> str:
    """`felix-v4-s:<uid>` for rule selectors (issue 5); `:` cannot occur in a tag."""
    return ipset_name(version, f"s:{unique_id}")
