"""Template resources: the `conf.d/*.toml` files operators know from confd.

A resource names a template (`src`), where its output goes (`dest`), which
datastore keys it depends on (`prefix` + `keys`), how to check a staged file
(`check_cmd`, `{{.src}}` = the staged path) and how to make the consumer reload
(`reload_cmd`).  A `reload_cmd` of the form `birdc -s SOCKET configure` is not
run as a process (birdc exits 0 even when BIRD refuses the config): confd does
the same thing through the control socket and checks BIRD's reply code.

Placeholders `{{.conf_dir}}`, `{{.run_dir}}` and `{{.host}}` are filled from
confd's settings; anything else in `{{ }}` is an error naming the file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass, field

PACKAGE_CONF_D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf.d")
PACKAGE_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*\.([A-Za-z_]+)\s*\}\}")


class ResourceError(Exception):
    """A resource file that cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class Resource:
    name: str
    src: str
    dest: str
    keys: tuple[str, ...]
    check_cmd: str | None = None
    reload_cmd: str | None = None
    mode: int = 0o644
    path: str = field(default="", compare=False)

    def watches(self, key: str) -> bool:
        return any(key.startswith(k) for k in self.keys)

    def check_argv(self, staged: str) -> list[str] | None:
        if not self.check_cmd:
            return None
        return [a.replace("{{.src}}", staged) for a in shlex.split(self.check_cmd)]

    def bird_socket(self) -> str | None:
        """The control socket when reload_cmd is `birdc[6] -s SOCKET configure`, else None."""
        if not self.reload_cmd:
            return None
        argv = shlex.split(self.reload_cmd)
        if not argv or os.path.basename(argv[0]) not in ("birdc", "birdc6", "birdcl"):
            return None
        if argv[-1:] != ["configure"] or "-s" not in argv[:-1]:
            return None
        i = argv.index("-s")
        return argv[i + 1] if i + 1 < len(argv) - 1 else None

    def reload_argv(self) -> list[str] | None:
        return shlex.split(self.reload_cmd) if self.reload_cmd else None


def _fill(text: str, values: dict[str, str], where: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name == "src":
            return m.group(0)  # filled per check with the staged path
        if name not in values:
            raise ResourceError(f"{where}: unknown placeholder {m.group(0)}")
        return values[name]
    return _PLACEHOLDER_RE.sub(sub, text)


def load_resource(path: str, values: dict[str, str]) -> Resource:
    """Parse one toml resource; ResourceError names the file and what is wrong."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ResourceError(f"{path}: {e}") from None
    t = data.get("template")
    if not isinstance(t, dict):
        raise ResourceError(f"{path}: missing [template] table")

    def s(fld: str, required: bool = True) -> str | None:
        v = t.get(fld)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v.strip():
            raise ResourceError(f"{path}: [template].{fld} must be a non-empty string")
        return _fill(v, values, f"{path}: [template].{fld}")

    src = s("src")
    dest = s("dest")
    assert src is not None and dest is not None
    if os.sep in src or src.startswith("."):
        raise ResourceError(f"{path}: [template].src must be a file name in the templates directory")
    if not os.path.isabs(dest):
        raise ResourceError(f"{path}: [template].dest must be an absolute path")
    prefix = s("prefix", required=False) or ""
    keys = t.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ResourceError(f"{path}: [template].keys must be a list of key prefixes")
    full = tuple(_fill(prefix.rstrip("/") + "/" + k.strip("/"), values, f"{path}: keys") for k in keys)
    mode = t.get("mode", "0644")
    try:
        mode_i = int(str(mode), 8)
    except ValueError:
        raise ResourceError(f"{path}: [template].mode {mode!r} is not an octal mode") from None
    return Resource(name=name[:-5] if name.endswith(".toml") else name, src=src, dest=dest, keys=full,
                    check_cmd=s("check_cmd", required=False), reload_cmd=s("reload_cmd", required=False),
                    mode=mode_i, path=path)


def load_resources(conf_d: str, values: dict[str, str]) -> tuple[list[Resource], list[str]]:
    """Every `*.toml` in conf_d, sorted; returns (resources, errors) so one bad file spares the rest."""
    out: list[Resource] = []
    errors: list[str] = []
    try:
        names = sorted(n for n in os.listdir(conf_d) if n.endswith(".toml"))
    except OSError as e:
        return [], [f"{conf_d}: {e}"]
    for n in names:
        try:
            out.append(load_resource(os.path.join(conf_d, n), values))
        except ResourceError as e:
            errors.append(str(e))
    return out, errors


def install_defaults(confd_dir: str) -> list[str]:
    """Copy the packaged conf.d/ and templates/ into confd_dir when absent (first start only)."""
    installed = []
    for sub, src in (("conf.d", PACKAGE_CONF_D), ("templates", PACKAGE_TEMPLATES)):
        dst = os.path.join(confd_dir, sub)
        if not os.path.isdir(dst):
            os.makedirs(confd_dir, exist_ok=True)
            shutil.copytree(src, dst)
            installed.append(dst)
    return installed
