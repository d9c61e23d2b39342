"""`calicoctl node bgp peer ...`: BGP peers of one node only (default: this node)."""

from __future__ import annotations

from calicoctl.bgp import peer_actions
from calicoctl.cli import Action, hostname_opt, split_options, usage_error

SUMMARY = "BGP peers and route reflection of one node: node bgp peer|route-reflector"

USAGE = """\
Usage:
  calicoctl node bgp peer add <PEER_IP> as <AS_NUM> [--hostname=<HOSTNAME>]
  calicoctl node bgp peer remove <PEER_IP> [--hostname=<HOSTNAME>]
  calicoctl node bgp peer show [--ipv4 | --ipv6] [--hostname=<HOSTNAME>]
  calicoctl node bgp route-reflector set <CLUSTER_ID> [--hostname=<HOSTNAME>]
  calicoctl node bgp route-reflector remove|show [--hostname=<HOSTNAME>]

Description:
  Peers of a single node (in addition to the global peers of 'calicoctl bgp peer').

Options:
  --hostname=<HOSTNAME>  The node (default: $NODENAME, $HOSTNAME, else this machine's hostname)
  --ipv4                 Show only IPv4 peers
  --ipv6                 Show only IPv6 peers
"""


def parse(args: list[str]) -> Action:
    if args[:1] == ["route-reflector"]:
        from calicoctl import node_rr

        words, opts = split_options(args[1:], valued=("--hostname",), usage=node_rr.USAGE)
        return node_rr.parse(words, hostname_opt(opts))
    words, opts = split_options(args, flags=("--ipv4", "--ipv6"), valued=("--hostname",), usage=USAGE)
    if not words or words[0] != "peer":
        raise usage_error(USAGE, words, "node bgp")
    host = hostname_opt(opts)
    opts.pop("--hostname", None)
    return peer_actions(words[1:], opts, USAGE, "node bgp", host=host, what=f"node {host}")
