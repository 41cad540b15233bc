"""Bundle trained SAEs into the package as a named release (bf16 safetensors).

    sfc bundle SRC_DIR [--release smollm2-135m-sfc] [--model smollm2-135m]

``SRC_DIR`` holds ``SAE.save_model`` directories (e.g. ``OUT/saes`` of ``sfc train``).
Each SAE is stored in bfloat16 under ``sfc_plugin/resources/saes/<release>/<hook_name>/``,
replacing the files of an earlier version (git keeps the history), with its metadata set so
that ``load_saes(release)`` knows where it came from. The release is registered when
``sfc_plugin.dictionaries`` is imported; ``load_saes`` loads it in float32 by default.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sfc_plugin.dictionaries import BUNDLED_DIR, load_saes


def bundle(
    src: str | Path,
    *,
    release: str = "smollm2-135m-sfc",
    model: str = "smollm2-135m",
    dest_root: Path = BUNDLED_DIR,
) -> Path:
    """Copy every SAE under ``src`` into ``dest_root/release`` in bf16, recording ``model``
    (the model they were trained on) as their ``model_name``; returns that directory."""
    saes = load_saes(Path(src), dtype="float32")
    dest = dest_root / release
    if dest.exists():
        shutil.rmtree(dest)
    for hook, sae in saes.items():
        sae = sae.to(dtype=torch.bfloat16)
        meta = sae.cfg.metadata
        meta.model_name = model
        meta.release = release
        meta.sae_id = hook
        sae.save_model(dest / hook)
    return dest
