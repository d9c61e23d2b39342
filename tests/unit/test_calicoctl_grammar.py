"""calicoctl's grammar without a datastore: the classic rule language, option splitting,
tables and the dispatcher's registry."""

from __future__ import annotations

import importlib

import pytest

from calicoctl import cli
from calicoctl.cli import ArgError, HelpRequested, split_options, table
from calicoctl.rules import normalize, parse_rule, rule_text
from libcalico.models import Rule

RULES = [
    ("allow", {"action": "allow"}),
    ("deny", {"action": "deny"}),
    ("allow tcp", {"action": "allow", "protocol": "tcp"}),
    ("allow tcp to ports 80,443,8000:8080",
     {"action": "allow", "protocol": "tcp", "dst_ports": [80, 443, "8000:8080"]}),
    ("deny udp from ports 53 tag dns cidr 10.0.0.0/8 to ports 1:2 tag db cidr fd00::/64",
     {"action": "deny", "protocol": "udp", "src_ports": [53], "src_tag": "dns", "src_net": "10.0.0.0/8",
      "dst_ports": ["1:2"], "dst_tag": "db", "dst_net": "fd00::/64"}),
    ("allow icmp type 8 code 0 from tag a", {"action": "allow", "protocol": "icmp", "icmp_type": 8,
                                             "icmp_code": 0, "src_tag": "a"}),
    ("allow icmpv6 type 128", {"action": "allow", "protocol": "icmpv6", "icmp_type": 128}),
    ("allow from cidr 10.1.2.3/16", {"action": "allow", "src_net": "10.1.0.0/16"}),
    ("deny to tag x", {"action": "deny", "dst_tag": "x"}),
]


@pytest.mark.parametrize("text,expected", RULES, ids=[r[0] for r in RULES])
def test_rule_grammar(text, expected):
    rule = parse_rule(text.split())
    assert rule == expected
    Rule.model_validate(rule)  # what Felix accepts
    # The printed form parses back to the same rule.
    assert parse_rule(rule_text(rule).split()) == rule


def test_rule_text_shows_what_the_grammar_lacks():
    text = rule_text({"action": "deny", "!src_net": "10.0.0.0/8", "src_selector": "role == 'db'",
                      "ip_version": 4})
    assert text.startswith("deny from !cidr 10.0.0.0/8 selector role == 'db'")
    assert "ip_version=4" in text


def test_normalize_compares_rules_by_meaning():
    assert normalize({"protocol": "TCP", "dst_ports": ["80"]}) == normalize(
        {"action": "allow", "protocol": "tcp", "dst_ports": [80]})


@pytest.mark.parametrize("words", [
    [], ["permit"], ["allow", "tcp", "to"], ["allow", "tcp", "to", "ports"], ["allow", "to", "ports", "1"],
    ["allow", "tcp", "to", "ports", "65536"], ["allow", "tcp", "to", "ports", "1-2"],
    ["allow", "from", "tag", "x", "from", "tag", "y"], ["allow", "from", "tag", "x", "tag", "y"],
    ["allow", "icmp", "type", "x"], ["allow", "icmp", "type", "1", "code", "256"], ["allow", "udp", "icmp"],
])
def test_bad_rules(words):
    with pytest.raises(ArgError):
        parse_rule(words)


def test_split_options():
    words, opts = split_options(["a", "--x", "--h=1", "b", "--h", "2", "--", "--x"],
                                flags=("--x",), valued=("--h",))
    assert words == ["a", "b", "--x"] and opts == {"--x": True, "--h": "2"}
    with pytest.raises(ArgError, match="--nope"):
        split_options(["--nope"])
    with pytest.raises(ArgError, match="needs a value"):
        split_options(["--h"], valued=("--h",))
    with pytest.raises(ArgError):
        split_options(["--x=1"], flags=("--x",))
    with pytest.raises(HelpRequested):
        split_options(["a", "-h"], usage="U")


def test_table():
    out = table(["A", "Bee"], [["x", "multi\nline"], ["long value", None]])
    lines = out.splitlines()
    assert lines[0] == "+------------+-------+"
    assert lines[1] == "| A          | Bee   |"
    assert "| x          | multi |" in lines and "|            | line  |" in lines
    assert "| long value |       |" in lines
    assert len({len(line) for line in lines}) == 1
    assert table(["A"], []).count("\n") == 2


DATASTORE_GROUPS = ("pool", "bgp", "node", "profile", "endpoint", "ipam", "config", "version")


def test_every_group_registered_has_usage_and_parse():
    for name in DATASTORE_GROUPS:
        module = importlib.import_module(cli.GROUPS[name])
        assert callable(module.parse), name
        assert module.USAGE.startswith("Usage:"), name


def test_unknown_command_and_help_need_no_datastore(capsys):
    assert cli.run(["nope"]) == 2
    assert capsys.readouterr().err == "calicoctl: unknown command 'nope' (see 'calicoctl --help')\n"
    assert cli.run([]) == 0
    assert "pool" in capsys.readouterr().out
