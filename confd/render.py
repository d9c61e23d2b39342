"""Render confd templates: a pure function from a template directory and a context to text.

StrictUndefined makes a template that names a missing variable fail loudly
instead of printing an empty string into BIRD's config, and the output carries
no timestamps, so identical inputs give identical bytes (confd writes only on
change).
"""

from __future__ import annotations

import os
from typing import Any

import jinja2

PACKAGE_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


class RenderError(Exception):
    """A template failed to load or render; the message names the template and the cause."""


def environment(template_dir: str) -> jinja2.Environment:
    """A fresh environment: templates are re-read when their files change (operator edits)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=True,
    )


def render(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    """Render template `name`; RenderError names the template (and line) on any failure."""
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(f"template {e.filename or name} line {e.lineno}: {e.message}") from None
    except jinja2.TemplateNotFound as e:
        raise RenderError(f"template {name}: {e.name} not found in {env.loader.searchpath}") from None  # type: ignore[union-attr]
    except Exception as e:  # noqa: BLE001 - any template bug must become a clear error, not a crash
        raise RenderError(f"template {name} failed to render: {e.__class__.__name__}: {e}") from None


def render_text(template_dir: str, name: str, context: dict[str, Any]) -> str:
    """One-shot render (tests, benchmarks)."""
    return render(environment(template_dir), name, context)
