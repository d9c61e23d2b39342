"""Felix's datastore config layers, and the decision what a change to them means.

Why not in the daemon: config keys arrive mixed with everything else, but
what they mean is a rule of its own: this host's keys override the global
ones (another host's keys are not ours), the layers are resolved with env and
file by `felix.config.Config.resolve`, a bad value is warned about once, and a
parameter that cannot change live means a restart (FelixExit with
EXIT_CONFIG_CHANGED), never a half-applied config.
"""

from __future__ import annotations

import logging

from felix.config import EXIT_CONFIG_CHANGED, Config
from felix.policy_apply import FelixExit

log = logging.getLogger(__name__)

CONFIG_KINDS = frozenset({"global_config", "host_config"})


class ConfigStore:
    """The `global_config` / this host's `host_config` keys, and the Config they resolve to."""

    def __init__(self, boot: Config, environ: dict[str, str] | None = None):
        self.boot = boot
        self.hostname: str = boot.FelixHostname
        self.environ = environ
        self.host: dict[str, str] = {}
        self.glob: dict[str, str] = {}
        self.current: Config | None = None       # None until the first in-sync resolved it
        self._warned: set[str] = set()

    def update(self, kind: str, key: object, value: object) -> bool:
        """One config key (`key.kind` in CONFIG_KINDS); True when it is ours (global, or this host's)."""
        if key.kind == "host_config" and key.host != self.hostname:
            return False
        target = self.glob if key.kind == "global_config" else self.host
        if kind == "put" and isinstance(value, str):
            target[key.param] = value
        else:
            target.pop(key.param, None)
        return True

    def resolve(self) -> Config:
        return Config.resolve(self.host, self.glob, environ=self.environ, hostname=self.hostname)

    def first(self) -> Config:
        """At the first in-sync: the full config, each value and its source logged once."""
        cfg = self.resolve()
        cfg.log_all(log, already_warned=set(self.boot.warnings))
        self._warned = set(self.boot.warnings) | set(cfg.warnings)
        self.current = cfg
        return cfg

    def reload(self) -> Config:
        """After a config key changed: the new Config, or FelixExit when it cannot apply live."""
        new = self.resolve()
        for w in new.warnings:
            if w not in self._warned:           # a bad value written after start: logged once
                self._warned.add(w)
                log.warning("config: %s", w)
        changed = self.current.restart_needed(new)
        if changed:
            raise FelixExit(EXIT_CONFIG_CHANGED,
                            f"parameter(s) {', '.join(changed)} changed and cannot apply live: restarting")
        for name, v in new.items():
            if v.value != getattr(self.current, name):
                log.info("config: %s changed to %r (from %s)", name, v.value, v.source)
        self.current = new
        return new
