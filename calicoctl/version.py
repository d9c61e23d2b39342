"""`calicoctl version`: which build is talking to the datastore (no etcd needed)."""

from __future__ import annotations

from importlib import metadata

from calicoctl.cli import Action, Context, split_options, usage_error

USAGE = """\
Usage:
  calicoctl version

Show the version of calicoctl (the calico-node-py package).
"""


def package_version() -> str:
    """The installed package's version; from a source tree that is not installed, setup.cfg's."""
    try:
        return metadata.version("calico-node-py")
    except metadata.PackageNotFoundError:
        return _source_version() or "unknown"


def _source_version() -> str | None:
    import configparser
    import os

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg"))
    return cfg.get("metadata", "version", fallback=None)


def parse(args: list[str]) -> Action:
    words, _ = split_options(args, usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "version")

    async def show(ctx: Context) -> int:
        ctx.print(f"calicoctl version {package_version()}")
        return 0

    return show
