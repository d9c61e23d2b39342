"""What the driver remembers, kept in etcd so a restarted driver (or node) loses nothing.

- one record per Docker network per host (`keys.libnetwork_network`): whether
  addresses come from calico-ipam, the subnets, and the network's name once
  Docker has told us (the name is the profile);
- one marker per profile the driver created (`keys.libnetwork_profile`), so
  `docker network rm` of the last network of that name on any host removes
  the profile it made, and never one an operator made.

A record that does not parse is treated as absent and reported, and hurts only
its own network.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

from libcalico import keys
from libcalico.datastore import DatastoreClient
from libcalico.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)
MAX_RECORD = 64 * 1024


@dataclass
class NetworkRecord:
    network_id: str
    calico_ipam: bool
    subnets: list[str] = field(default_factory=list)
    name: str = ""  # filled in by the first CreateEndpoint (Docker's CreateNetwork does not say it)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def parse(cls, key: str, raw: str) -> NetworkRecord | None:
        try:
            if len(raw) > MAX_RECORD:
                raise ValueError(f"{len(raw)} bytes")
            d = json.loads(raw)
            rec = cls(network_id=str(d["network_id"]), calico_ipam=bool(d["calico_ipam"]),
                      subnets=[str(s) for s in d.get("subnets") or []], name=str(d.get("name") or ""))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            limited.log("record", logging.WARNING, "%s: unreadable network record (%s); ignored", key, e)
            return None
        return rec


class Records:
    def __init__(self, client: DatastoreClient, host: str):
        self.client = client
        self.host = host

    async def put_network(self, rec: NetworkRecord) -> None:
        await self.client.put(keys.libnetwork_network(self.host, rec.network_id), rec.to_json())

    async def network(self, network_id: str) -> NetworkRecord | None:
        key = keys.libnetwork_network(self.host, network_id)
        raw = await self.client.get(key)
        return None if raw is None else NetworkRecord.parse(key, raw)

    async def delete_network(self, network_id: str) -> None:
        await self.client.delete(keys.libnetwork_network(self.host, network_id))

    async def networks_named(self, name: str) -> list[tuple[str, NetworkRecord]]:
        """Every host's record of a network with this name: [(key, record)]."""
        _, kvs = await self.client.get_prefix(keys.libnetwork_networks())
        out = []
        for kv in kvs:
            rec = NetworkRecord.parse(kv.key, kv.value)
            if rec is not None and rec.name == name:
                out.append((kv.key, rec))
        return out

    async def mark_profile(self, profile: str, network_id: str) -> None:
        await self.client.put(keys.libnetwork_profile(profile),
                              json.dumps({"host": self.host, "network_id": network_id}, separators=(",", ":")))

    async def profile_marked(self, profile: str) -> bool:
        return await self.client.get(keys.libnetwork_profile(profile)) is not None

    async def unmark_profile(self, profile: str) -> None:
        await self.client.delete(keys.libnetwork_profile(profile))
