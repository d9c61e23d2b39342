"""Reading and writing resource documents (YAML or JSON) for `calicoctl create|apply|...`.

Operators keep resources in files and pipe them between commands, so every
shape calicoctl 1.x accepted is read here: one document, several separated by
`---`, a `kind: List` with `items`, or a top-level array.  The input is bounded
(size, document count) and YAML anchors/aliases are refused: an alias bomb
expands a few hundred bytes into gigabytes before any validator sees it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from calicoctl.cli import CliError

MAX_INPUT_BYTES = 4 * 1024 * 1024
MAX_DOCUMENTS = 500


class DocumentError(CliError):
    """Input that is not a list of resource documents (message names where)."""


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases (see the module docstring)."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise DocumentError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                "supported; write the value out")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise DocumentError(f"line {event.start_mark.line + 1}: YAML anchors (&{event.anchor}) are not "
                                "supported; write the value out")
        return super().compose_node(parent, index)


# YAML 1.1 reads `1:30` as the base-60 integer 90; in a ports list that silently turns the
# range 1:30 into port 90.  This loader keeps YAML 1.1's other int/float forms only.
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NoAliasLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_NoAliasLoader.add_implicit_resolver(_INT, re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
_NoAliasLoader.add_implicit_resolver(_FLOAT, re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def _flatten(doc: Any, out: list[Any]) -> None:
    if isinstance(doc, list):
        for item in doc:
            _flatten(item, out)
    elif isinstance(doc, dict) and doc.get("kind") == "List":
        items = doc.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise DocumentError("a List's items must be a list of resources")
        for item in items:
            _flatten(item, out)
    elif doc is not None:  # an empty document between two `---` is skipped, as YAML readers do
        out.append(doc)


def load_documents(text: str, source: str = "input") -> list[Any]:
    """The resource documents in `text`, in order (each still unvalidated)."""
    if len(text) > MAX_INPUT_BYTES:
        raise DocumentError(f"{source}: larger than {MAX_INPUT_BYTES} bytes")
    stripped = text.lstrip()
    docs: list[Any]
    if stripped.startswith(("{", "[")):
        try:
            docs = [json.loads(text)]
        except (ValueError, RecursionError):
            docs = None  # type: ignore[assignment]  # YAML flow style starts the same way
        else:
            out: list[Any] = []
            _flatten(docs, out)
            return _bounded(out, source)
    try:
        docs = list(yaml.load_all(text, Loader=_NoAliasLoader))  # noqa: S506 - a SafeLoader subclass
    except DocumentError as e:
        raise DocumentError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DocumentError(f"{source}:{where}: not valid YAML or JSON ({problem})") from None
    except RecursionError:
        raise DocumentError(f"{source}: nested too deeply") from None
    out = []
    _flatten(docs, out)
    return _bounded(out, source)


def _bounded(docs: list[Any], source: str) -> list[Any]:
    if len(docs) > MAX_DOCUMENTS:
        raise DocumentError(f"{source}: {len(docs)} documents exceed the limit of {MAX_DOCUMENTS}")
    return docs


def read_source(path: str, stdin: Any) -> tuple[str, str]:
    """(text, name) of `-f PATH` (`-` = stdin)."""
    if path == "-":
        return stdin.read(MAX_INPUT_BYTES + 1), "stdin"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(MAX_INPUT_BYTES + 1), path
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: not UTF-8 text") from None


def dump(docs: list[dict], fmt: str, single: bool) -> str:
    """YAML or JSON text of `docs`: one document when `single`, else a `kind: List`."""
    value: Any = docs[0] if single and len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": docs}
    if fmt == "json":
        return json.dumps(value, indent=2)
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip("\n")
