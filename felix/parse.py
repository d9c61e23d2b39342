"""The syncer's parser for Felix: plain workload endpoints straight to Felix's own Endpoint.

Why: at cluster scale nearly every key is a remote workload endpoint, and the
generic path (a pydantic model per value, converted again by the calculator)
was most of a cold start.  `felix.calc.model.endpoint_from_json` takes the
plain ones directly; every other value, and every endpoint it declines, goes
through `libcalico.models.parse_key_value` exactly as before (same errors,
same rate-limited log line naming the key).
"""

from __future__ import annotations

from felix.calc.model import endpoint_from_json
from libcalico import keys, models


def parse_key_value(path: str, raw: str | bytes | None) -> tuple[keys.Key | None, object]:
    if type(raw) is str and "/workload/" in path:
        key = keys.parse(path)
        if key is not None and key.kind == "workload_endpoint":
            ep = endpoint_from_json(key, raw)
            if ep is not None:
                return key, ep
    return models.parse_key_value(path, raw)
