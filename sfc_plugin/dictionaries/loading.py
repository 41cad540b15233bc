"""Loading sparse autoencoders (the "dictionaries" of sparse feature circuits).

:func:`load_saes` turns any of the usual ways of naming a set of SAELens SAEs into one
``dict[hook_name, SAE]``, keyed by the TransformerLens hook each dictionary writes
(``sae.cfg.metadata.hook_name``; a transcoder's ``hook_name_out``) and ordered as the model
computes those hooks (see :func:`sfc_plugin.sites.hook_sort_key`). Accepted sources:

* a release name: either an installed release (a data package declaring an entry point in
  the ``sfc_plugin.releases`` group, such as the embedded model's :data:`COMPANION_RELEASES`,
  or a directory given to :func:`register_release`) or a SAELens pretrained release (a key
  of SAELens' ``pretrained_saes.yaml``), with ``sae_ids`` choosing some of its SAEs (all of
  them if ``None``);
* a directory written by ``SAE.save_model`` (``cfg.json`` + ``sae_weights.safetensors``),
  a directory whose immediate subdirectories are such directories, or a list of either;
* Dunefsky et al.'s transcoder files (``final_sparse_autoencoder_<model>_blocks.<L>.<hook>_
  <d_sae>.pt``, see :mod:`~sfc_plugin.dictionaries.dunefsky`): one file, or a directory
  holding them (beside or instead of ``save_model`` subdirectories);
* SAE objects: one ``SAE``, a list of them, or a dict ``hook_name -> SAE``.

Installed releases are plain directories of ``SAE.save_model`` subdirectories, one per SAE
id (the id is the subdirectory name); they load offline and take precedence over SAELens'
names.
"""

from __future__ import annotations

import difflib
import functools
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE, Transcoder

from sfc_plugin.dictionaries.dunefsky import is_dunefsky_file, load_dunefsky_transcoder
from sfc_plugin.sites import hook_sort_key

__all__ = [
    "COMPANION_RELEASES",
    "ReleaseNotInstalledError",
    "load_saes",
    "register_release",
    "registered_releases",
    "unregister_release",
]

SAESource = str | os.PathLike | SAE | Sequence[str | os.PathLike | SAE] | Mapping[str, SAE]

_BUNDLED_RELEASES: dict[str, Path] = {}


def _site_key(sae: SAE) -> str | None:
    """The hook a dictionary is keyed by: the one it writes. That is its ``hook_name`` for an
    SAE and ``hook_name_out`` for a transcoder that records one (``sites.read_hook_of``)."""
    meta = sae.cfg.metadata
    if isinstance(sae, Transcoder) and meta.get("hook_name_out"):
        return meta.get("hook_name_out")
    return meta.hook_name


# --------------------------------------------------------------------------- registry


def register_release(name: str, directory: str | os.PathLike) -> None:
    """Register a bundled release: ``load_saes(name, sae_ids=...)`` then loads, offline, the
    ``SAE.save_model`` subdirectories of ``directory`` whose names are the requested ids.

    Registering an existing name again replaces its directory. Bundled names shadow SAELens
    pretrained releases of the same name.
    """
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"release {name!r}: directory {str(path)!r} does not exist")
    _BUNDLED_RELEASES[name] = path.resolve()


def unregister_release(name: str) -> None:
    """Forget a bundled release registered with :func:`register_release` (no-op if unknown)."""
    _BUNDLED_RELEASES.pop(name, None)


def registered_releases() -> dict[str, Path]:
    """The bundled releases: name -> directory (a copy)."""
    return dict(_BUNDLED_RELEASES)


RELEASES_ENTRY_POINTS = "sfc_plugin.releases"
"""The entry-point group of installed releases: each entry is ``name = "module:DIRECTORY"``,
the directory of one ``SAE.save_model`` subdirectory per SAE id."""

COMPANION_RELEASES: dict[str, str] = {
    "smollm2-135m-sfc": "sfc-plugin-smollm2-135m-sfc",
    "smollm2-135m-sfc-attn": "sfc-plugin-smollm2-135m-sfc-attn",
    "smollm2-135m-sfc-transcoders": "sfc-plugin-smollm2-135m-sfc-transcoders",
}
"""The embedded model's releases: name -> the distribution that ships it (all three come with
``pip install "sfc_plugin[smollm2]"``). They are data packages of their own, as their
weights (50-80 MB each) would take the main wheel over PyPI's 100 MB per-file limit."""


class ReleaseNotInstalledError(ValueError):
    """A release of :data:`COMPANION_RELEASES` was asked for, but its package is not
    installed."""


def _register_installed_releases() -> None:
    """Register every release that an installed distribution declares in the
    :data:`RELEASES_ENTRY_POINTS` group; a broken entry is skipped with a warning."""
    for entry in entry_points(group=RELEASES_ENTRY_POINTS):
        try:
            register_release(entry.name, entry.load())
        except Exception as e:  # a broken third-party package must not break the import
            warnings.warn(
                f"release {entry.name!r} ({entry.value}) could not be registered: {e}",
                stacklevel=2,
            )


_register_installed_releases()


# --------------------------------------------------------------------------- helpers


# Only SAELens' public API is used here (the top-level ``sae_lens`` names): the file names
# ``SAE.save_model`` writes, the dtype names SAELens accepts and its list of pretrained
# releases are restated below, as they are not exported by ``sae_lens``.
SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype_str(dtype: str | torch.dtype) -> str:
    """SAELens' name of a dtype (``torch.float32 -> "float32"``); strings pass unchanged."""
    if not isinstance(dtype, torch.dtype):
        return dtype
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"Invalid dtype: {dtype}. Must be one of {list(_DTYPES.values())}")


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The ``torch.dtype`` of a SAELens dtype name (``"float32"`` or ``"torch.float32"``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"Invalid dtype: {dtype}. Must be one of {list(_DTYPES)}")
    return _DTYPES[name]


@functools.cache
def _pretrained_releases() -> dict[str, dict[str, Any]]:
    """SAELens' pretrained releases, as listed in the ``pretrained_saes.yaml`` it ships: release
    name -> entry (``repo_id``, ``model``, ``conversion_func``, ``saes``: a list of ``{"id",
    "path", ...}``). Read here because SAELens' reader of that file is not public API."""
    import yaml  # a dependency of SAELens

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with files("sae_lens").joinpath("pretrained_saes.yaml").open("r") as f:
        return yaml.load(f, Loader=loader)


def _pretrained_ids(release: str) -> list[str]:
    """The SAE ids of a SAELens pretrained release, in the order of its yaml entry."""
    return list(dict.fromkeys(sae["id"] for sae in _pretrained_releases()[release]["saes"]))


def _looks_like_path(source: str | os.PathLike) -> bool:
    """Whether a string is meant as a filesystem path rather than a release name."""
    if not isinstance(source, str):
        return True
    return (
        os.sep in source
        or "/" in source
        or source.startswith((".", "~"))
        or (os.altsep is not None and os.altsep in source)
    )


def _few(choices: Iterable[str], bad: str, n: int = 8) -> str:
    """A short human-readable list of valid choices, closest matches to ``bad`` first."""
    choices = list(choices)
    close = difflib.get_close_matches(bad, choices, n=3, cutoff=0.6)
    shown = close + [c for c in choices if c not in close][: max(0, n - len(close))]
    more = f", ... ({len(choices)} in all)" if len(choices) > len(shown) else ""
    return ", ".join(repr(c) for c in shown) + more


def _normalise_ids(sae_ids: str | Sequence[str] | None) -> list[str] | None:
    if sae_ids is None:
        return None
    ids = [sae_ids] if isinstance(sae_ids, str) else list(sae_ids)
    if not ids:
        raise ValueError("sae_ids is empty: pass None to load every SAE of the release")
    return ids


def _is_sae_dir(path: Path) -> bool:
    return (path / SAE_CFG_FILENAME).is_file()


def _load_sae_dir(path: Path, device: str, dtype: str) -> SAE:
    weights = path / SAE_WEIGHTS_FILENAME
    if not weights.is_file():
        raise FileNotFoundError(f"SAE directory {str(path)!r} has no {SAE_WEIGHTS_FILENAME}")
    return SAE.load_from_disk(path, device=device, dtype=dtype)


def _load_path(path: str | os.PathLike, device: str, dtype: str) -> list[tuple[str, SAE]]:
    """Load an SAE directory, a Dunefsky file, or every SAE subdirectory and Dunefsky file of
    a directory."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"SAE path {str(path)!r} does not exist")
    if p.is_file() and is_dunefsky_file(p):
        return [(str(p), load_dunefsky_transcoder(p, device, dtype))]
    if not p.is_dir():
        raise ValueError(
            f"SAE path {str(path)!r} is not a directory; expected a directory saved by "
            f"SAE.save_model (with {SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME}), a "
            "directory of such directories, or a Dunefsky transcoder file "
            "(final_sparse_autoencoder_<model>_<hook>_<d_sae>.pt)"
        )
    if _is_sae_dir(p):
        return [(str(p), _load_sae_dir(p, device, dtype))]
    subdirs = sorted(c for c in p.iterdir() if c.is_dir() and _is_sae_dir(c))
    pt_files = sorted(c for c in p.iterdir() if c.is_file() and is_dunefsky_file(c))
    if not subdirs and not pt_files:
        raise ValueError(
            f"directory {str(path)!r} holds no SAE: neither it nor any immediate subdirectory "
            f"contains {SAE_CFG_FILENAME}, and it holds no Dunefsky transcoder file"
        )
    return [(str(c), _load_sae_dir(c, device, dtype)) for c in subdirs] + [
        (str(c), load_dunefsky_transcoder(c, device, dtype)) for c in pt_files
    ]


def _load_bundled(
    name: str, ids: list[str] | None, device: str, dtype: str
) -> list[tuple[str, SAE]]:
    root = _BUNDLED_RELEASES[name]
    if not root.is_dir():
        raise FileNotFoundError(f"bundled release {name!r}: directory {str(root)!r} is missing")
    available = sorted(c.name for c in root.iterdir() if c.is_dir() and _is_sae_dir(c))
    if ids is None:
        ids = available
        if not ids:
            raise ValueError(f"bundled release {name!r} ({str(root)!r}) contains no SAE")
    for sae_id in ids:
        if sae_id not in available:
            raise ValueError(
                f"sae_ids: {sae_id!r} is not an SAE of bundled release {name!r}; "
                f"valid ids: {_few(available, sae_id) or '(none)'}"
            )
    return [(f"{name}:{i}", _load_sae_dir(root / i, device, dtype)) for i in ids]


def _load_pretrained(
    release: str, ids: list[str] | None, device: str, dtype: str
) -> list[tuple[str, SAE]]:
    available = _pretrained_ids(release)
    if ids is None:
        ids = available
    # Check every id before loading anything, so a typo does not cost a partial download.
    for sae_id in ids:
        if sae_id not in available:
            raise ValueError(
                f"sae_ids: {sae_id!r} is not an SAE of SAELens release {release!r}; "
                f"valid ids: {_few(available, sae_id)}"
            )
    return [
        (f"{release}:{i}", SAE.from_pretrained(release, i, device=device, dtype=dtype)) for i in ids
    ]


def _load_release_or_path(
    source: str | os.PathLike, ids: list[str] | None, device: str, dtype: str
) -> list[tuple[str, SAE]]:
    if isinstance(source, str) and source in _BUNDLED_RELEASES:
        return _load_bundled(source, ids, device, dtype)
    if isinstance(source, str) and not _looks_like_path(source):
        directory = _pretrained_releases()
        if source in directory:
            return _load_pretrained(source, ids, device, dtype)
        if source in COMPANION_RELEASES:
            raise ReleaseNotInstalledError(
                f"source: release {source!r} is a package of its own and is not installed: "
                f'pip install {COMPANION_RELEASES[source]} (or "sfc_plugin[smollm2]" for all '
                "of the embedded model's releases)"
            )
        if not Path(source).exists():
            releases = [*_BUNDLED_RELEASES, *directory]
            raise ValueError(
                f"source: {source!r} is neither a known SAE release nor an existing path; "
                f"known releases include {_few(releases, source)}"
            )
    if ids is not None:
        raise ValueError("sae_ids only applies when source is a release name")
    return _load_path(source, device, dtype)


def _move(sae: SAE, device: str | None, dtype: str | torch.dtype | None) -> SAE:
    if device is not None or dtype is not None:
        sae = sae.to(
            device=device,
            dtype=None if dtype is None else _torch_dtype(dtype),
        )
    return sae


# --------------------------------------------------------------------------- public API


def load_saes(
    source: SAESource,
    sae_ids: str | Sequence[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> dict[str, SAE]:
    """Load SAEs from ``source`` and key them by the hook name each one reads.

    Args:
        source: a release name (bundled, see :func:`register_release`, or SAELens pretrained),
            an ``SAE.save_model`` directory, a directory of such directories, a list of such
            directories, an ``SAE``, a list of SAEs, or a dict ``hook_name -> SAE`` (see the
            module docstring).
        sae_ids: with a release name, the SAE id(s) to load (a string or a list); ``None``
            loads every SAE of the release. Not allowed with other sources.
        device: where to put the SAEs. ``None`` means ``"cuda"`` if available else ``"cpu"``
            for SAEs loaded from files, and "leave where they are" for SAE objects.
        dtype: SAE parameter dtype (``"float32"``, ``"bfloat16"``, ... or a ``torch.dtype``).
            ``None`` means ``"float32"`` for SAEs loaded from files, and "leave as they are"
            for SAE objects.

    Returns:
        ``{hook_name: SAE}`` in the model's forward order (:func:`hook_sort_key`). SAE objects
        passed in are returned themselves (moved in place if ``device``/``dtype`` are given).

    Raises:
        ValueError: empty source; unknown release or SAE id (the message lists valid
            choices); ``sae_ids`` with a non-release source; an SAE without a hook name in its
            metadata; two SAEs reading the same hook; a dict key that disagrees with its SAE.
        FileNotFoundError: a path (or a file an SAE directory needs) does not exist.
    """
    load_device = str(device) if device is not None else _default_device()
    load_dtype = _dtype_str(dtype) if dtype is not None else "float32"
    obj_device = str(device) if device is not None else None
    ids = _normalise_ids(sae_ids)
    if ids is not None and not isinstance(source, (str, os.PathLike)):
        raise ValueError("sae_ids only applies when source is a release name")

    # (description of where the SAE came from, SAE), in source order.
    items: list[tuple[str, SAE]] = []
    if isinstance(source, SAE):
        items.append(("the SAE passed as source", _move(source, obj_device, dtype)))
    elif isinstance(source, Mapping):
        for key, sae in source.items():
            if not isinstance(sae, SAE):
                raise TypeError(f"source[{key!r}] is a {type(sae).__name__}, not an SAE")
            hook = _site_key(sae)
            if hook and hook != key:
                raise ValueError(
                    f"source[{key!r}]: the key disagrees with the hook the SAE writes {hook!r}"
                )
            items.append((f"source[{key!r}]", _move(sae, obj_device, dtype)))
    elif isinstance(source, (str, os.PathLike)):
        items.extend(_load_release_or_path(source, ids, load_device, load_dtype))
    elif isinstance(source, Sequence):
        for i, item in enumerate(source):
            if isinstance(item, SAE):
                items.append((f"source[{i}] (an SAE)", _move(item, obj_device, dtype)))
            elif isinstance(item, (str, os.PathLike)):
                items.extend(_load_path(item, load_device, load_dtype))
            else:
                raise TypeError(
                    f"source[{i}] is a {type(item).__name__}; expected an SAE or a directory"
                )
    else:
        raise TypeError(f"cannot load SAEs from a {type(source).__name__}")
    if not items:
        raise ValueError("source is empty: no SAE to load")

    by_hook: dict[str, tuple[str, SAE]] = {}
    for origin, sae in items:
        hook = _site_key(sae)
        if not hook:
            raise ValueError(f"{origin}: SAE has no hook_name in cfg.metadata")
        if hook in by_hook:
            raise ValueError(
                f"two dictionaries write hook {hook!r}: {by_hook[hook][0]} and {origin}; "
                "load_saes keeps one per hook"
            )
        by_hook[hook] = (origin, sae)
    return {hook: by_hook[hook][1] for hook in sorted(by_hook, key=hook_sort_key)}
