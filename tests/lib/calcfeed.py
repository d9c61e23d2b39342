"""Feed datastore keys into Felix's pure calculator the way the daemon does (parse, then
put / delete / invalid), for the calculator unit tests."""

from __future__ import annotations

import json

from felix.calc import CalcConfig, Calculator
from libcalico import keys, models


class CalcFeed:
    def __init__(self, host: str = "h1", **cfg):
        self.c = Calculator(CalcConfig(host, **cfg))

    def put(self, path: str, value) -> None:
        raw = value if isinstance(value, str) else json.dumps(value)
        try:
            k, v = models.parse_key_value(path, raw)
        except models.InvalidValue as e:
            self.c.on_update("invalid", keys.parse(path), str(e))
            return
        self.c.on_update("put", k, v)

    def delete(self, path: str) -> None:
        self.c.on_update("delete", keys.parse(path))
