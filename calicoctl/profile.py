"""`calicoctl profile`: security profiles, their tags and their rules."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from calicoctl.cli import (
    Action,
    ArgError,
    CliError,
    Context,
    check,
    read_modify_write,
    split_options,
    table,
    usage_error,
)
from calicoctl.rules import normalize, parse_rule, rule_text, validation_reason
from libcalico import keys
from libcalico.datastore import create, op_put
from libcalico.models import InvalidValue, ProfileRules, parse_key_value, to_json
from libcalico.validation import validate_name

USAGE = """\
Usage:
  calicoctl profile show [--detailed]
  calicoctl profile add <PROFILE>
  calicoctl profile remove <PROFILE> [--no-check]
  calicoctl profile <PROFILE> tag show
  calicoctl profile <PROFILE> tag (add|remove) <TAG>
  calicoctl profile <PROFILE> rule json
  calicoctl profile <PROFILE> rule show
  calicoctl profile <PROFILE> rule update
  calicoctl profile <PROFILE> rule add (inbound|outbound) [--at=<POSITION>] <RULE>
  calicoctl profile <PROFILE> rule remove (inbound|outbound) (--at=<POSITION> | <RULE>)

Description:
  A new profile allows traffic from endpoints carrying its own tag and all
  outbound traffic. 'rule update' replaces the rules with the JSON read on stdin
  ({"inbound_rules": [...], "outbound_rules": [...]}, as 'rule json' prints it).

  <RULE> is, in the classic grammar:
    allow|deny [(tcp|udp) [from [ports <P>] [tag <T>] [cidr <C>]] [to [ports <P>] [tag <T>] [cidr <C>]]]
    allow|deny (icmp|icmpv6) [type <N> [code <M>]] [from [tag <T>] [cidr <C>]] [to [tag <T>] [cidr <C>]]
    allow|deny [from [tag <T>] [cidr <C>]] [to [tag <T>] [cidr <C>]]
  <P> is a comma list of ports and lo:hi ranges, e.g. 80,443,8000:8080.

Options:
  --detailed           Also list the endpoints that use each profile
  --no-check           Remove the profile even if endpoints still use it
  --at=<POSITION>      Rule position, 1 = first (default for add: append)

Profile and tag names: letters, digits, '-', '_' and '.'.
"""

COMMANDS = ("show", "add", "remove")


def _profile_name(text: str) -> str:
    return check(validate_name, text, "profile name", what="profile name")


def _tag_name(text: str) -> str:
    return check(validate_name, text, "tag", what="tag")


async def profile_exists(client: Any, name: str) -> bool:
    _, kvs = await client.get_prefix(keys.profile_dir(name))
    return bool(kvs)


async def _require(client: Any, name: str) -> None:
    if not await profile_exists(client, name):
        raise CliError(f"profile {name} not found")


def _parse_add(rest: list[str]) -> Action:
    if len(rest) != 1:
        raise usage_error(USAGE, ["add", *rest], "profile")
    name = _profile_name(rest[0])
    rules = to_json(ProfileRules.model_validate({
        "inbound_rules": [{"action": "allow", "src_tag": name}],
        "outbound_rules": [{"action": "allow"}]}))
    tags = to_json([name])

    async def add(ctx: Context) -> int:
        client = await ctx.client()
        if await profile_exists(client, name):
            ctx.print(f"Profile {name} already exists.")
            return 0
        ok, _ = await client.txn(
            [create(keys.profile_rules(name)) == 0, create(keys.profile_tags(name)) == 0],
            [op_put(keys.profile_rules(name), rules), op_put(keys.profile_tags(name), tags)], [],
            what="profile add")
        if not ok:
            ctx.print(f"Profile {name} already exists.")
            return 0
        ctx.print(f"Created profile {name}")
        return 0

    return add


def _parse_remove(rest: list[str], no_check: bool) -> Action:
    if len(rest) != 1:
        raise usage_error(USAGE, ["remove", *rest], "profile")
    name = _profile_name(rest[0])

    async def remove(ctx: Context) -> int:
        client = await ctx.client()
        if not no_check:
            from libcalico.resources import Profiles

            users = await Profiles(client).users(name)
            if users:
                shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
                raise CliError(f"profile {name} is in use by endpoint(s) {shown}; "
                               "use --no-check to remove it anyway")
        if not await client.delete_prefix(keys.profile_dir(name)):
            raise CliError(f"profile {name} not found")
        ctx.print(f"Deleted profile {name}")
        return 0

    return remove


async def _endpoints(client: Any) -> list[tuple[Any, Any]]:
    """(parsed key, WorkloadEndpoint) for every valid workload endpoint."""
    from libcalico.resources import WorkloadEndpoints

    return [(s.key, s.value) for s in await WorkloadEndpoints(client).list()]


def _parse_show(rest: list[str], opts: dict) -> Action:
    if rest:
        raise usage_error(USAGE, ["show", *rest], "profile")
    detailed = bool(opts.get("--detailed"))

    async def show(ctx: Context) -> int:
        client = await ctx.client()
        _, kvs = await client.get_prefix(keys.PROFILE_DIR)
        names = sorted({k.profile for kv in kvs if (k := keys.parse(kv.key)) is not None
                        and k.kind.startswith("profile_")})
        if not detailed:
            ctx.print(table(["Name"], [[n] for n in names]))
            return 0
        by_profile: dict[str, list] = {n: [] for n in names}
        for key, ep in await _endpoints(client):
            for pid in ep.profile_ids:
                by_profile.setdefault(pid, []).append((key, ep))
        rows = []
        for name in sorted(by_profile):
            eps = by_profile[name]
            if not eps:
                rows.append([name, "", "", "", "", "", "", ""])
            for key, ep in sorted(eps, key=lambda e: e[0].path):
                rows.append([name, key.host, key.orchestrator, key.workload, key.endpoint,
                             "\n".join(ep.ipv4_nets + ep.ipv6_nets), ep.mac or "", ep.state])
        ctx.print(table(["Name", "Host", "Orchestrator ID", "Workload ID", "Endpoint ID",
                         "Addresses", "MAC", "State"], rows))
        return 0

    return show


# ---- tags -----------------------------------------------------------------------

def _load_tags(raw: str | None, name: str) -> list[str]:
    if raw is None:
        return []
    try:
        _, tags = parse_key_value(keys.profile_tags(name), raw)
    except InvalidValue as exc:
        raise CliError(f"{exc}; fix or remove that key first") from None
    return list(tags)  # type: ignore[arg-type]


def _parse_tag(name: str, rest: list[str]) -> Action:
    if rest == ["show"]:
        async def show(ctx: Context) -> int:
            client = await ctx.client()
            await _require(client, name)
            for tag in _load_tags(await client.get(keys.profile_tags(name)), name):
                ctx.print(tag)
            return 0

        return show
    if len(rest) != 2 or rest[0] not in ("add", "remove"):
        raise usage_error(USAGE, [name, "tag", *rest], "profile")
    op, tag = rest[0], _tag_name(rest[1])

    async def change_tags(ctx: Context) -> int:
        client = await ctx.client()
        await _require(client, name)
        note: list[str] = []

        def change(raw: str | None) -> str | None:
            tags = _load_tags(raw, name)
            if op == "add":
                if tag in tags:
                    note.append(f"Profile {name} already has tag {tag}")
                    return raw
                tags.append(tag)
            else:
                if tag not in tags:
                    raise CliError(f"profile {name} has no tag {tag}")
                tags.remove(tag)
            return to_json(tags)

        await read_modify_write(client, keys.profile_tags(name), change)
        for line in note:
            ctx.print(line)
        return 0

    return change_tags


# ---- rules ----------------------------------------------------------------------

def _load_rules(raw: str | None, name: str) -> dict[str, list[dict]]:
    if raw is None:
        return {"inbound_rules": [], "outbound_rules": []}
    try:
        _, rules = parse_key_value(keys.profile_rules(name), raw)
    except InvalidValue as exc:
        raise CliError(f"{exc}; replace them with 'calicoctl profile {name} rule update'") from None
    return json.loads(to_json(rules))


def _position(text: str | None, limit: int) -> int | None:
    """1-based --at -> 0-based index; ArgError when out of 1..limit."""
    if text is None:
        return None
    if not (text.isdigit() and text.isascii()) or not 1 <= int(text) <= limit:
        raise ArgError(f"invalid position {text!r}: must be 1..{limit}")
    return int(text) - 1


def _check_position_syntax(text: str | None) -> None:
    if text is not None and not (text.isdigit() and text.isascii() and int(text) >= 1):
        raise ArgError(f"invalid position {text!r}: must be a number from 1")


def _parse_rule(name: str, rest: list[str], opts: dict) -> Action:
    at = opts.get("--at")
    if not rest:
        raise usage_error(USAGE, [name, "rule"], "profile")
    cmd = rest[0]
    if cmd in ("show", "json") and len(rest) == 1 and at is None:
        return _rules_show(name, as_json=cmd == "json")
    if cmd == "update" and len(rest) == 1 and at is None:
        return _rules_update(name)
    if cmd in ("add", "remove"):
        if len(rest) < 2 or rest[1] not in ("inbound", "outbound"):
            raise usage_error(USAGE, [name, "rule", *rest], "profile")
        _check_position_syntax(at)
        words = rest[2:]
        if cmd == "remove" and (at is None) == (not words):
            raise ArgError("'rule remove' needs either --at=<POSITION> or a rule, not both")
        rule = parse_rule(words) if words else None
        if cmd == "add" and rule is None:
            raise ArgError("invalid rule: empty (start with 'allow' or 'deny')")
        return _rules_edit(name, cmd, rest[1], at, rule)
    raise usage_error(USAGE, [name, "rule", *rest], "profile")


def _rules_show(name: str, as_json: bool) -> Action:
    async def show(ctx: Context) -> int:
        client = await ctx.client()
        await _require(client, name)
        rules = _load_rules(await client.get(keys.profile_rules(name)), name)
        if as_json:
            ctx.print(json.dumps(rules, indent=2))
            return 0
        for title, field in (("Inbound rules:", "inbound_rules"), ("Outbound rules:", "outbound_rules")):
            ctx.print(title)
            for i, rule in enumerate(rules.get(field, []), 1):
                ctx.print(f"  {i:>2} {rule_text(rule)}")
        return 0

    return show


def _rules_update(name: str) -> Action:
    async def update(ctx: Context) -> int:
        text = ctx.stdin.read()
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ArgError(f"invalid rules on stdin: malformed JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ArgError("invalid rules on stdin: expected a JSON object with inbound_rules/outbound_rules")
        try:
            model = ProfileRules.model_validate(data)
        except ValidationError as err:
            raise ArgError(f"invalid rules on stdin: {validation_reason(err)}") from None
        client = await ctx.client()
        await _require(client, name)
        await client.put(keys.profile_rules(name), to_json(model))
        return 0

    return update


def _rules_edit(name: str, cmd: str, direction: str, at: str | None, rule: dict | None) -> Action:
    """Add or remove one rule inside a read-modify-write, so a concurrent edit is retried, not lost."""
    field = f"{direction}_rules"

    def change(raw: str | None) -> str | None:
        rules = _load_rules(raw, name)
        lst = rules.setdefault(field, [])
        if cmd == "add":
            pos = _position(at, len(lst) + 1)
            lst.insert(len(lst) if pos is None else pos, rule)
        elif at is not None:
            if not lst:
                raise CliError(f"profile {name} has no {direction} rules")
            del lst[_position(at, len(lst))]
        else:
            target = normalize(rule)  # type: ignore[arg-type]
            idx = next((i for i, r in enumerate(lst) if normalize(r) == target), None)
            if idx is None:
                raise CliError(f"profile {name} has no {direction} rule '{rule_text(target)}'")
            del lst[idx]
        return to_json(ProfileRules.model_validate(rules))

    async def edit(ctx: Context) -> int:
        client = await ctx.client()
        await _require(client, name)
        await read_modify_write(client, keys.profile_rules(name), change)
        return 0

    return edit


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--detailed", "--no-check"), valued=("--at",), usage=USAGE)
    if not words:
        raise usage_error(USAGE, [], "profile")
    first, rest = words[0], words[1:]
    if opts.get("--detailed") and first != "show":
        raise ArgError("--detailed only applies to 'profile show'")
    if opts.get("--no-check") and first != "remove":
        raise ArgError("--no-check only applies to 'profile remove'")
    if "--at" in opts and (len(rest) < 2 or rest[0] != "rule" or rest[1] not in ("add", "remove")):
        raise ArgError("--at only applies to 'profile <PROFILE> rule add|remove'")
    if first == "show":
        return _parse_show(rest, opts)
    if first == "add":
        return _parse_add(rest)
    if first == "remove":
        return _parse_remove(rest, bool(opts.get("--no-check")))
    name = _profile_name(first)
    if not rest:
        raise usage_error(USAGE, words, "profile")
    if rest[0] == "tag":
        return _parse_tag(name, rest[1:])
    if rest[0] == "rule":
        return _parse_rule(name, rest[1:], opts)
    raise usage_error(USAGE, words, "profile")
