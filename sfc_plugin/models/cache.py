"""The on-disk cache of built artefacts (converted model weights, tokenizers, dashboard
indexes): ``$SFC_PLUGIN_CACHE`` or ``~/.cache/sfc_plugin``. Each entry is built in a
temporary sibling directory and renamed into place only when complete, so an interrupted
build never leaves a half-written entry."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

META_FILE = "sfc_cache.json"
"""Metadata file of a cache entry, written last: an entry without it is incomplete."""
STALE_TMP_SECONDS = 3600.0


def cache_dir() -> Path:
    """Root of the on-disk cache: ``$SFC_PLUGIN_CACHE`` if set, else ``~/.cache/sfc_plugin``.

    The environment variable is read on every call, not at import time.
    """
    root = os.environ.get("SFC_PLUGIN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "sfc_plugin"


def _is_valid_entry(path: Path, meta: dict[str, Any]) -> bool:
    try:
        found = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return all(found.get(k) == v for k, v in meta.items())


def _remove_stale_tmp_dirs(parent: Path, prefix: str) -> None:
    """Delete temp dirs from builds that were interrupted more than an hour ago."""
    now = time.time()
    for path in parent.glob(f"{prefix}*"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def ensure_cache_entry(final: Path, meta: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Make sure the cache directory ``final`` exists and is complete. Build it if needed.

    ``build(tmp)`` writes the files into an empty temporary directory beside ``final``. The
    metadata file is written last, and then the directory is renamed to ``final``. An
    interrupted build leaves only a ``.<name>.tmp-*`` directory. Later loads ignore it and
    delete it once it is stale. If another process finishes first, its entry is used.
    """
    if _is_valid_entry(final, meta):
        return final
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    _remove_stale_tmp_dirs(parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        build(tmp)
        (tmp / META_FILE).write_text(json.dumps({**meta, "created": time.time()}, indent=1))
        if final.exists():
            if _is_valid_entry(final, meta):  # a concurrent build won the race
                return final
            # Outdated or foreign entry: move it aside, then swap the new one in.
            old = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            os.replace(final, old / "old")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_valid_entry(final, meta):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return final
