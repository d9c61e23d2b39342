"""confd's identity and paths, and its readiness as a probe reads it.

Kept apart from the daemon so that `calico-confd --check-ready`, exec'd by
`calico-node -ready` on every probe, reads one status file without loading
the daemon's templates engine, datastore client and validators.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass
class Settings:
    host: str
    ip4: str | None
    ip6: str | None
    run_dir: str
    conf_dir: str
    router_id: str | None = None

    @property
    def confd_dir(self) -> str:
        return os.path.join(self.conf_dir, "confd")

    @property
    def status_path(self) -> str:
        return os.path.join(self.run_dir, "confd.status")

    def placeholders(self) -> dict[str, str]:
        return {"conf_dir": self.conf_dir, "run_dir": self.run_dir, "host": self.host}

    def prefixes(self) -> list[str]:
        # Every host's block affinities, not only ours: a block another host claimed first is not ours
        # to announce.
        return ["/calico/bgp/v1/", "/calico/v1/ipam/", "/calico/ipam/v2/host/"]


def check_ready(status_path: str) -> tuple[bool, str]:
    """Readiness from the status file confd keeps in the run dir (and its pid still alive)."""
    try:
        with open(status_path) as f:
            status = json.load(f)
    except (OSError, ValueError) as e:
        return False, f"no confd status ({status_path}: {e})"
    try:
        os.kill(int(status["pid"]), 0)
    except (OSError, KeyError, ValueError, TypeError):
        return False, f"confd (pid {status.get('pid')}) is not running"
    if status.get("ready"):
        return True, "confd ready"
    return False, "confd not ready: " + " | ".join(status.get("problems") or ["unknown"])
