"""The files pages are made of: CSS and JavaScript in ``assets/``, jinja2 templates in
``templates/`` (both shipped as package data, read with ``importlib.resources``).

Templates autoescape; text that is already HTML (SVG pictures, rendered fragments, the
CircuitsVis bundle) is passed as ``markupsafe.Markup``. In templates, ``asset(name)`` inlines an
asset, ``x|fmt(spec)`` is ``format(x, spec)`` and ``token|visible`` shows newlines as ``↵``.
"""

from __future__ import annotations

from functools import cache, lru_cache
from importlib.resources import files
from typing import Any

import jinja2
from markupsafe import Markup

__all__ = ["asset", "environment", "render_template", "visible"]


@cache
def asset(name: str) -> Markup:
    """The text of ``assets/<name>``, trusted (inlined unescaped into ``<style>`` or
    ``<script>``)."""
    path = files("sfc_plugin.frontend") / "assets" / name
    return Markup(path.read_text(encoding="utf-8"))


def visible(token: str) -> str:
    """A token as text: newlines shown as ``↵``."""
    return token.replace("\n", "\u21b5")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The jinja2 environment of the templates (HTML autoescaped, undefined names are errors)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sfc_plugin.frontend", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["asset"] = asset
    env.filters["fmt"] = format
    env.filters["visible"] = visible
    env.policies["json.dumps_kwargs"] = {}  # |tojson keeps the key order
    return env


def render_template(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with ``context``."""
    return environment().get_template(name).render(**context)
