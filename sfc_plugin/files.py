"""Result files: atomic writes (nothing half-written on disk) and versioned JSON documents
(``{"schema": ..., "version": ..., ...}``) read back with errors that say what is wrong."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfc_plugin.version import __version__


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, renamed
    into place: an interrupted write leaves the old file (or none), never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_document(path: str | Path, schema: str, version: int, body: dict[str, Any]) -> None:
    """``body`` as a JSON document of ``schema`` and ``version``, written atomically."""
    doc = {"schema": schema, "version": version, **body}
    write_atomic(path, json.dumps(doc, indent=1))


def read_document(
    path: str | Path, schema: str, version: int, what: str, required: Sequence[str] = ()
) -> dict[str, Any]:
    """The JSON document at ``path``, checked: JSON, of ``schema``, of ``version``, with the
    ``required`` keys; each failure a ``ValueError`` naming the file and ``what`` it should
    be (e.g. "circuit")."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not a complete {what} file (truncated or not JSON: {e})"
        ) from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        raise ValueError(f"{path} is not a sfc_plugin {what} file (no schema {schema!r})")
    if doc.get("version") != version:
        raise ValueError(
            f"{path} has {what} schema version {doc.get('version')!r}; this sfc_plugin "
            f"({__version__}) reads version {version}"
        )
    missing = [k for k in required if k not in doc]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    return doc


def check_run_settings(out: str | Path, settings: dict[str, Any], what: str) -> None:
    """Record ``settings`` in ``out/settings.json``, or check them against the recorded ones:
    results made with other settings in the same directory must not be mixed with new ones
    (``what`` names the results in the error, e.g. "samples"). Settings are compared as JSON
    (tuples and lists alike)."""
    path = Path(out) / "settings.json"
    key = json.loads(json.dumps(settings))
    if path.exists():
        old = json.loads(path.read_text())
        if old != key:
            changed = sorted(k for k in key.keys() | old.keys() if old.get(k) != key.get(k))
            raise ValueError(
                f"{out} holds {what} made with other settings ({changed}); use a new out "
                "directory or delete it"
            )
    else:
        write_atomic(path, json.dumps(key, indent=1))
