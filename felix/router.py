"""Each syncer update, once, to whoever needs it: the config store and the calculators.

Why one router: the syncer already parsed every key (`Update.parsed_key`);
before this, the daemon and its add-ons each parsed it again and each decided
on its own which updates were theirs.  Here the decision is made once per
update:

- config keys (`global_config`, `host_config`) go to the ConfigStore; a host's
  tunnel address is also a node's own address, so those keys go on to the
  core calculator too;
- overlay and NAT kinds (pools, block affinities, every node's addresses and
  host config) go to the overlay and NAT calculators;
- everything else goes to the core calculator, with its etcd create revision
  (it ranks claimants of one address or interface).

Until the first in-sync the calculators do not exist (their config is in the
snapshot), so updates are kept, in order, and replayed into them on `attach`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from felix.calc.nat import NatCalculator
from felix.calc.nodes import TUNNEL_PARAMS
from felix.calc.overlay import OverlayCalculator
from felix.config_store import CONFIG_KINDS, ConfigStore
from libcalico.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

ADDON_KINDS = OverlayCalculator.KINDS | NatCalculator.KINDS
CORE, ADDONS = "core", "addons"


@dataclass
class Routed:
    """What one batch touched: the loop decides from this what to recompute and apply."""

    in_sync: bool = False           # the batch carried the syncer's in-sync marker
    updates: int = 0                # updates counted (everything but markers and unknown keys)
    config: bool = False            # our config layers changed
    changed: frozenset[str] = frozenset()   # CORE and/or ADDONS: calculators whose output may differ


class UpdateRouter:
    def __init__(self, config: ConfigStore):
        self.config = config
        self.core = None
        self.overlay: OverlayCalculator | None = None
        self.nat: NatCalculator | None = None
        self._pending: list[tuple[str, str, object, object, int]] = []
        # A flood of bad keys must not become a flood of log lines: a few per second, then a count.
        self._bad_data_log = RateLimitedLog(log)

    @property
    def attached(self) -> bool:
        return self.core is not None

    def attach(self, core, overlay: OverlayCalculator, nat: NatCalculator) -> None:
        """The calculators exist: replay what arrived before them, in arrival order."""
        self.core, self.overlay, self.nat = core, overlay, nat
        pending, self._pending = self._pending, []
        pending.reverse()
        while pending:     # popped as delivered: each parsed value can go once the calculators have it
            target, kind, key, value, created = pending.pop()
            self._deliver(target, kind, key, value, created)
        self.log_errors()

    def route(self, batch: list) -> Routed:
        out = Routed()
        changed: set[str] = set()
        for u in batch:
            if u.kind == "in_sync":
                out.in_sync = True
                continue
            if u.kind == "unknown":
                continue
            out.updates += 1
            key = u.parsed_key   # the syncer's, for refused values and their deletes too
            if key is None:
                continue
            created = u.create_revision or 0
            if key.kind in ADDON_KINDS:
                if self._deliver(ADDONS, u.kind, key, u.value if u.kind == "put" else None, created):
                    changed.add(ADDONS)
            if key.kind in CONFIG_KINDS:
                out.config |= self.config.update(u.kind, key, u.value)
                if not (key.kind == "host_config" and key.param in TUNNEL_PARAMS):
                    continue
            self._deliver(CORE, u.kind, key, u.value if u.kind == "put" else u.error, created)
            changed.add(CORE)
        if self.attached:
            self.log_errors()
        out.changed = frozenset(changed)
        return out

    def _deliver(self, target: str, kind: str, key: object, value: object, created: int) -> bool:
        """Hand one update to its calculator (or keep it for `attach`); True if its output may change."""
        if not self.attached:
            self._pending.append((target, kind, key, value, created))
            return True
        if target == CORE:
            self.core.on_update(kind, key, value, create_revision=created)
            return True
        changed = self.overlay.on_update(kind, key, value)
        return self.nat.on_update(kind, key, value, create_revision=created) | changed

    def flush_log(self) -> None:
        """Once per loop round: report how many invalid-data lines the rate limit held back."""
        self._bad_data_log.flush()

    def log_errors(self) -> None:
        """Once per batch: the core calculator ranks claimants of one address or interface
        when asked, so asking per update would rank a batch of them once per update."""
        for k, reason in self.core.take_errors():
            self._bad_data_log.log("invalid data", logging.WARNING, "ignoring invalid data at %s: %s", k, reason)
        for calc in (self.overlay, self.nat):
            for k, reason in calc.take_errors():
                log.warning("ignoring invalid data at %s: %s", k, reason)
