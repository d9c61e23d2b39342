"""`calicoctl get`: see calicoctl.manifest (declarative resources, one transaction per batch)."""

from calicoctl.manifest import command

USAGE, parse = command("get")
