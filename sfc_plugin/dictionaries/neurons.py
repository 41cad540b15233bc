"""Neuron dictionaries: the identity at a hook, so a hook's coordinates ("neurons") are the
nodes and the error is exactly zero: the paper's baseline for feature circuits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig

from sfc_plugin.sites import hook_sort_key, hook_widths

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


class NeuronDictionary(StandardSAE):
    """The identity dictionary at one hook: its features are the hook's coordinates
    ("neurons"), ``encode(x) = x`` and ``decode(f) = f``, so the error is exactly zero.

    With these in place of SAEs every part of the method (effects, circuits, edges,
    evaluation) runs on neurons, the paper's baseline. ``W_enc`` and ``W_dec`` are identity
    matrices for code that reads them (dashboards' output tokens)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return feature_acts


def neuron_saes(
    model: HookedTransformer, hooks: Iterable[str] | Mapping[str, SAE]
) -> dict[str, SAE]:
    """Identity dictionaries (``NeuronDictionary``) at ``hooks``: hook names, or the dict of
    SAEs whose hook points to mirror (``neuron_saes(model, saes)``). Each has ``d_sae =
    d_in``, the hook's width per position (heads x d_head at ``hook_z``)."""
    names = list(hooks)
    if not names:
        raise ValueError("no hooks given for neuron dictionaries")
    names = sorted(names, key=hook_sort_key)
    for name in names:
        if name not in model.hook_dict:
            raise ValueError(f"{name!r} is not a hook point of this model")
    widths = hook_widths(model, names)
    out = {}
    for name in names:
        width = widths[name]
        cfg = StandardSAEConfig(
            d_in=width,
            d_sae=width,
            dtype=str(model.cfg.dtype).removeprefix("torch."),  # torch.float32 -> "float32"
            device=str(model.cfg.device),
        )
        # The default metadata takes any attribute (SAELens' metadata class is not exported).
        cfg.metadata.hook_name = name
        cfg.metadata.release = "neurons"
        cfg.metadata.sae_id = name
        sae = NeuronDictionary(cfg)
        with torch.no_grad():
            eye = torch.eye(width, dtype=sae.W_enc.dtype, device=sae.W_enc.device)
            sae.W_enc.copy_(eye)
            sae.W_dec.copy_(eye)
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        out[name] = sae
    return out
