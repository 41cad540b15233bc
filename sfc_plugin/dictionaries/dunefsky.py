"""Dunefsky et al.'s GPT-2 small transcoders (the hierarchical-tracing seed's system) as
SAELens ``Transcoder`` objects.

Their per-layer files, ``final_sparse_autoencoder_gpt2-small_blocks.{L}.ln2.hook_normalized_
24576.pt``, are ``torch.save({"cfg": LanguageModelSAERunnerConfig, "state_dict": ...})`` of
the ``transcoder_circuits`` training code. The state dict holds ``W_enc [d_in, d_sae]``,
``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec [d_in]`` (subtracted from the input before
encoding) and ``b_dec_out [d_out]``; the features are ``ReLU((x - b_dec) W_enc + b_enc)`` and
the output ``f W_dec + b_dec_out``. The input bias folds into the encoder bias exactly:

    SAELens Transcoder:  W_enc, b_enc - b_dec W_enc, W_dec, b_dec := b_dec_out

The files are read with ``torch.load(weights_only=True)``: their config class is stood in for
by a plain record, so neither their code nor arbitrary pickles are loaded. Read and write
hooks come from the config (``hook_point``, ``out_hook_point``), else from the file name
(``blocks.{L}.ln2.hook_normalized`` -> ``blocks.{L}.hook_mlp_out``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from sae_lens import Transcoder, TranscoderConfig

__all__ = ["DUNEFSKY_FILE_RE", "is_dunefsky_file", "load_dunefsky_transcoder"]

DUNEFSKY_FILE_RE = re.compile(
    r"^final_sparse_autoencoder_(?P<model>.+?)_(?P<hook>blocks\.(?P<layer>\d+)\.[\w.]+?)_"
    r"(?P<d_sae>\d+)\.pt$"
)
REQUIRED_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out")


class _RunnerConfig:
    """Stands in for ``sae_training.config``'s dataclasses when unpickling: keeps the fields."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _stand_in(name: str) -> type:
    cls = type(name, (_RunnerConfig,), {})
    cls.__module__ = "sae_training.config"
    return cls


_STAND_INS: list[Any] = [
    _stand_in(n)
    for n in ("LanguageModelSAERunnerConfig", "RunnerConfig", "CacheActivationsRunnerConfig")
]


def is_dunefsky_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like one of Dunefsky et al.'s transcoder files."""
    return DUNEFSKY_FILE_RE.match(Path(path).name) is not None


def load_dunefsky_transcoder(
    path: str | os.PathLike, device: str = "cpu", dtype: str = "float32"
) -> Transcoder:
    """Load one Dunefsky transcoder file as a SAELens ``Transcoder`` (ReLU), keyed by
    ``cfg.metadata.hook_name`` (read) and ``hook_name_out`` (written).

    Raises ``ValueError`` naming the file for a missing key, a shape that does not fit, or
    hooks that neither the config nor the file name give.
    """
    path = Path(path)
    with torch.serialization.safe_globals(_STAND_INS):
        blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ValueError(f"{path}: expected a dict with 'cfg' and 'state_dict' (a Dunefsky file)")
    state = blob["state_dict"]
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(
            f"{path}: state_dict lacks {missing} (has {sorted(state)}); a Dunefsky transcoder "
            f"has {list(REQUIRED_KEYS)}"
        )
    w_enc, b_enc, w_dec, b_dec, b_out = (state[k].float() for k in REQUIRED_KEYS)
    d_in, d_sae = w_enc.shape
    d_out = w_dec.shape[1]
    shapes = {
        "b_enc": (b_enc.shape, (d_sae,)),
        "W_dec": (w_dec.shape, (d_sae, d_out)),
        "b_dec": (b_dec.shape, (d_in,)),
        "b_dec_out": (b_out.shape, (d_out,)),
    }
    for key, (got, want) in shapes.items():
        if tuple(got) != want:
            raise ValueError(
                f"{path}: {key} has shape {tuple(got)}, expected {want} from W_enc "
                f"{tuple(w_enc.shape)} and W_dec {tuple(w_dec.shape)}"
            )
    read, write, model_name = _hooks(path, blob.get("cfg"))
    cfg = TranscoderConfig(
        d_in=d_in,
        d_sae=d_sae,
        d_out=d_out,
        dtype=dtype,
        device=device,
        apply_b_dec_to_input=False,
        normalize_activations="none",
    )
    meta = cfg.metadata
    meta.hook_name, meta.hook_name_out, meta.model_name = read, write, model_name
    meta.sae_id = path.name
    tc = Transcoder(cfg)
    tc.load_state_dict(
        {"W_enc": w_enc, "b_enc": b_enc - b_dec @ w_enc, "W_dec": w_dec, "b_dec": b_out}
    )
    return tc  # built on ``device`` in ``dtype`` (cfg); load_state_dict copies into it


def _hooks(path: Path, cfg: Any) -> tuple[str, str, str | None]:
    """(read hook, write hook, model name) from the pickled config, else the file name."""
    fields = vars(cfg) if cfg is not None and hasattr(cfg, "__dict__") else {}
    match = DUNEFSKY_FILE_RE.match(path.name)
    read = fields.get("hook_point") or (match and match.group("hook"))
    write = fields.get("out_hook_point")
    if not write and match is not None:
        write = f"blocks.{match.group('layer')}.hook_mlp_out"
    if not read or not write:
        raise ValueError(
            f"{path}: cannot tell which hooks it reads and writes (no hook_point / "
            "out_hook_point in its cfg, and the name is not final_sparse_autoencoder_<model>_"
            "blocks.<L>.<hook>_<d_sae>.pt)"
        )
    model = fields.get("model_name") or (match and match.group("model")) or None
    return str(read), str(write), model
