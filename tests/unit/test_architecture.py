"""The house rules of docs/architecture.md, read off the source: each room imports only the
rooms its row allows (data flows one way), no module imports another module's private
(underscore) names, and the rooms import each other without a cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import sfc_plugin

PACKAGE = Path(sfc_plugin.__file__).parent

# room -> rooms it may import (lazy imports inside functions count too). The same table is in
# docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "version": set(),
    "files": {"version"},
    "nodes": {"sites"},  # for type hints only
    "sites": set(),
    "data": set(),
    "metrics": {"data", "sites"},
    "models": set(),
    "datasets": {"data"},
    "dictionaries": {"sites", "datasets"},
    "attribution": {"sites", "data", "metrics", "nodes"},
    "frontend": {"files", "nodes", "sites", "models", "datasets"},
    # frontend: display methods
    "circuit": {"version", "files", "attribution", "nodes", "frontend"},
    "evaluation": {"attribution", "circuit", "data", "metrics", "nodes", "sites", "dictionaries"},
    "training": {"dictionaries", "models", "sites", "datasets"},
    "judges": {"nodes", "datasets", "frontend"},  # frontend: type hints only
    "tracing": {
        "version",
        "files",
        "circuit",
        "data",
        "frontend",  # type hints only
        "judges",
        "metrics",
        "nodes",
        "sites",
    },
    "behaviours": {
        "files",
        "circuit",
        "data",
        "datasets",
        "evaluation",
        "frontend",
        "metrics",
        "sites",
    },
    "experiments": {
        "behaviours",
        "shift",
        "tracing",
        "judges",
        "attribution",
        "circuit",
        "data",
        "datasets",
        "dictionaries",
        "evaluation",
        "frontend",
        "models",
        "nodes",
        "sites",
    },
    "shift": {
        "files",
        "judges",
        "attribution",
        "circuit",
        "data",
        "datasets",
        "dictionaries",
        "evaluation",
        "frontend",
        "metrics",
        "nodes",
        "sites",
    },
    "cli": {
        "circuit",
        "tracing",
        "datasets",
        "dictionaries",
        "evaluation",
        "experiments",
        "models",
        "training",
    },
    "__main__": {"cli"},
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> list[tuple[str, str, list[str]]]:
    """(importing module, imported module, imported names) for every sfc_plugin import."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sfc_plugin"):
                found.append((module, node.module or "", [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [(module, a.name, []) for a in node.names if a.name.startswith("sfc_")]
    return found


def test_rooms_import_only_what_their_row_allows():
    imports = _imports()
    assert len(imports) > 50
    bad = []
    for module, imported, _ in imports:
        src, dst = _room(module), _room(imported)
        if src == "__init__" or src == dst:
            continue  # the public API re-exports every room, lazily
        if dst not in ALLOWED[src]:
            bad.append(f"{module} imports {imported} ({src} may import {sorted(ALLOWED[src])})")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    bad = [
        f"{module}: from {imported} import {name}"
        for module, imported, names in _imports()
        for name in names
        if name.startswith("_") and name != "__version__"
    ]
    assert not bad, "\n".join(bad)


def test_rooms_have_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for module, imported, _ in _imports():
        src, dst = _room(module), _room(imported)
        if src not in ("__init__", dst) and dst != "__init__":
            graph.setdefault(src, set()).add(dst)
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle between rooms: {e.args[1]}") from None
    assert order.index("sites") < order.index("attribution") < order.index("circuit")
