"""Dataplane writers: each owns one slice of the kernel and applies desired state in batches.

Every side effect goes through an adapter bound to a network namespace
(`cmd.CmdRunner`, pyroute2 `AsyncIPRoute(netns=..., flags=0)`, `sysctl.SysctlWriter`),
so the same writer runs on the host, inside a test namespace, or against a fake.
"""

from felix.dataplane.errors import DataplaneError

FELIX_RT_PROTO = 80
"""Route protocol number that marks routes Felix owns (`ip route ... proto 80`).

Felix finds its own routes by this number and never touches routes with any
other protocol (kernel, boot, static, BIRD's `bird` = 12). 80 is unassigned in
/etc/iproute2/rt_protos and is what Calico's Felix uses too."""

__all__ = ["DataplaneError", "FELIX_RT_PROTO"]
