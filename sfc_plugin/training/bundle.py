"""Bundle trained SAEs into the package as a named release (bf16 safetensors).

    python -m sfc_plugin.bundle SRC_DIR [--release smollm2-135m-sfc] [--model smollm2-135m]

``SRC_DIR`` holds ``SAE.save_model`` directories (e.g. ``OUT/saes`` of ``sfc_plugin.train``).
Each SAE is stored in bfloat16 under ``sfc_plugin/resources/saes/<release>/<hook_name>/``,
replacing the files of an earlier version (git keeps the history), with its metadata set so
that ``load_saes(release)`` knows where it came from. The release is registered when
``sfc_plugin.dictionaries`` is imported; ``load_saes`` loads it in float32 by default.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from sfc_plugin.dictionaries import BUNDLED_DIR, load_saes


def bundle_saes(
    src: str | Path, release: str, model_name: str, dest_root: Path = BUNDLED_DIR
) -> Path:
    """Copy every SAE under ``src`` into ``dest_root/release`` in bf16; returns that dir."""
    saes = load_saes(Path(src), dtype="float32")
    dest = dest_root / release
    if dest.exists():
        shutil.rmtree(dest)
    for hook, sae in saes.items():
        sae = sae.to(dtype=torch.bfloat16)
        meta = sae.cfg.metadata
        meta.model_name = model_name
        meta.release = release
        meta.sae_id = hook
        sae.save_model(dest / hook)
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Bundle trained SAEs as a package release.")
    ap.add_argument("src", help="directory of SAE.save_model directories")
    ap.add_argument("--release", default="smollm2-135m-sfc")
    ap.add_argument("--model", default="smollm2-135m", help="model the SAEs were trained on")
    args = ap.parse_args(argv)
    dest = bundle_saes(args.src, args.release, args.model)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"bundled {len(list(dest.iterdir()))} SAEs into {dest} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
