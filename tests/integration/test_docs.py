"""The documentation site: ``mkdocs build --strict`` succeeds, no built page fetches anything
from the network when opened, and the site covers the API, the pages and the tutorials."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# a resource a browser loads by itself: <script src>, <link href> (stylesheets, icons, fonts),
# <img>/<iframe>/<source> src, CSS url() and @import
_REMOTE = [
    re.compile(r"<(?:script|img|iframe|source|audio|video|embed)\b[^>]*\bsrc=[\"']?(?:https?:)?//",
               re.I),
    re.compile(r"<link\b[^>]*\bhref=[\"']?(?:https?:)?//", re.I),
    re.compile(r"url\(\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"@import\s+[\"'](?:https?:)?//", re.I),
]  # fmt: skip


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    return [p for item in nav for p in _nav_pages(item)]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def _config() -> dict:
    # mkdocs.yml has no custom YAML tags, so the safe loader reads it
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_built_pages_load_nothing_from_the_network(site):
    texts = {
        str(p.relative_to(site)): p.read_text(errors="replace")
        for p in site.rglob("*")
        if p.suffix in (".html", ".css")
    }
    assert len([name for name in texts if name.endswith(".html")]) > 30
    offending = {
        name: m.group(0)[:120]
        for name, text in texts.items()
        for pattern in _REMOTE
        if (m := pattern.search(text))
    }
    assert offending == {}
    # Material loads mermaid.js from a CDN only for pages with a mermaid diagram
    assert [name for name, text in texts.items() if 'class="mermaid"' in text] == []


def test_api_reference_lists_every_public_name(site):
    import sfc_plugin

    names = [n for n in sfc_plugin.__all__ if not inspect.ismodule(getattr(sfc_plugin, n))]
    index = (DOCS / "api" / "index.md").read_text()
    assert len(names) > 30 and [n for n in names if f"[`{n}`]" not in index] == []
    # each one links to a rendered docstring (strict mode fails on a dangling reference)
    html = (site / "api" / "index.html").read_text()
    assert len(set(re.findall(r'href="[^"]*#(sfc_plugin\.[\w.]+)"', html))) == len(names)


def test_every_page_is_in_the_navigation():
    nav = set(_nav_pages(_config()["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - nav == set() and nav - pages == set()


def test_tutorials_page_lists_every_notebook():
    text = (DOCS / "tutorials.md").read_text()
    notebooks = sorted(p.name for p in (ROOT / "tutorials").glob("*.ipynb"))
    assert notebooks and [n for n in notebooks if f"`{n}`" not in text] == []
