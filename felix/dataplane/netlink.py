"""pyroute2's rtnetlink classes without running pyroute2's package `__init__`.

Why: `import pyroute2` (or any `from pyroute2.x import y`, which runs the
package first) loads every family pyroute2 ships (NDB, IPDB, wireguard,
nl80211, ipvs, plan9...): ~65 modules, ~6 MB RSS and ~35 ms of CPU per Felix
that Felix never uses.  Felix needs only `AsyncIPRoute`, the link multicast
group and `NetlinkError`, so the package is registered as a bare namespace
whose submodules load on demand.  Anything that later asks the package itself
for a public name (`from pyroute2 import IPRoute`) gets pyroute2's real
`__init__` run on first use, so other code in the same process is unaffected.

One visible consequence: pyroute2's `config.log`, which only the package
`__init__` loads, sets the "pyroute2" logger to NOTSET when imported, which
undid the WARNING level `felix.daemon.setup_logging` gives it whenever
pyroute2 loaded after logging was set up.  Now the WARNING holds, so Felix
at debug level no longer logs pyroute2's per-message debug lines.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _lean_package() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a regular package: let the imports below fail or succeed as they would
    pkg = types.ModuleType("pyroute2")
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__package__ = "pyroute2"
    loader = spec.loader

    def full_package(name: str) -> object:
        """PEP 562 hook: a submodule is imported alone (what `from pyroute2 import config` inside
        pyroute2 asks for); any other name runs the real `__init__` once, into this module."""
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")
        del pkg.__getattr__  # run once: the real __init__ defines (or not) every public name
        loader.exec_module(pkg)
        try:
            return pkg.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    pkg.__getattr__ = full_package  # type: ignore[method-assign]
    sys.modules["pyroute2"] = pkg


_lean_package()

from pyroute2.iproute.linux import AsyncIPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.rtnl import RTMGRP_LINK  # noqa: E402

__all__ = ["AsyncIPRoute", "NetlinkError", "RTMGRP_LINK"]
