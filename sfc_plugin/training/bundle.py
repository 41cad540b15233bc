"""Bundle trained SAEs as a named release (bf16 safetensors).

    sfc bundle SRC_DIR [--release smollm2-135m-sfc] [--model smollm2-135m] [--dest DIR]

``SRC_DIR`` holds ``SAE.save_model`` directories (e.g. ``OUT/saes`` of ``sfc train``).
Each SAE is stored in bfloat16 under ``<dest>/<hook_name>/``, with its metadata set so that
``load_saes(release)`` knows where it came from. ``dest`` defaults to the directory of the
installed release (for the embedded model's releases, the data packages under ``releases/``
of the repository, installed editable by ``make``): its SAE directories are replaced, its
other files kept. A new release needs ``--dest`` (the package directory of a new data
package; see ``releases/README.md``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sfc_plugin.dictionaries import load_saes, registered_releases
from sfc_plugin.dictionaries.loading import SAE_CFG_FILENAME


def bundle(
    src: str | Path,
    *,
    release: str = "smollm2-135m-sfc",
    model: str = "smollm2-135m",
    dest: str | Path | None = None,
) -> Path:
    """Write every SAE under ``src`` into ``dest`` (default: the installed release's
    directory) in bf16, recording ``model`` (the model they were trained on) as their
    ``model_name`` and ``release`` as their release; returns that directory.

    Raises:
        ValueError: ``dest`` is not given and no installed release is called ``release``.
    """
    saes = load_saes(Path(src), dtype="float32")
    if dest is None:
        installed = registered_releases()
        if release not in installed:
            raise ValueError(
                f"release: {release!r} is not an installed release (installed: "
                f"{sorted(installed) or 'none'}); pass dest= (--dest) to write a new one"
            )
        dest = installed[release]
    dest = Path(dest)
    if dest.is_dir():  # replace the earlier version's SAEs, keep everything else
        for old in dest.iterdir():
            if (old / SAE_CFG_FILENAME).is_file():
                shutil.rmtree(old)
    for hook, sae in saes.items():
        sae = sae.to(dtype=torch.bfloat16)
        meta = sae.cfg.metadata
        meta.model_name = model
        meta.release = release
        meta.sae_id = hook
        sae.save_model(dest / hook)
    return dest
