"""The probe's circuit (METHOD.md section 7, step 3; paper section 4, Appendix E).

The metric is the reference's: the probe's logit when the label is 0 and minus it when the
label is 1, i.e. the evidence against the true label, computed from the probe's own pooling
(mean over real tokens, BOS excluded) of the activation at its hook. Node effects (eq. 3, 4)
use zero ablation (no patch input) and are summed over positions, then averaged over the
examples; a node's effect ``m(ablated) - m(clean)`` is positive when the probe relies on it
to get the label right. Only SAE sites writing at or before the probe's hook take part. As in
the reference, the BOS position is left out of the sum when the model prepends one: there
the residual stream is an attention sink, and features active on it (dense, sink-like ones)
would have large effects unrelated to the text.

The circuit's features are those with the largest positive effects (the reference keeps
those above a hand-set threshold: 67 features on Pythia-70M, 46 on Gemma-2-2B); error nodes
are reported but never ablated.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
from sae_lens import SAE
from torch import Tensor

from sfc_plugin.attribution import NodeEffects, node_effects
from sfc_plugin.data import Batch
from sfc_plugin.metrics import ActivationMetric
from sfc_plugin.shift.probe import Probe, check_labels, check_texts, pool
from sfc_plugin.sites import hook_sort_key, writes_by

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def probe_metric(
    model: HookedTransformer, probe: Probe, labels: Sequence[int] | Tensor
) -> ActivationMetric:
    """The probe's logit signed against each row's label (``+`` for 0, ``-`` for 1): a
    metric of the activation at ``probe.hook``, one value per row. ``labels[i]`` is row
    ``i``'s label, found through ``Batch.rows``."""
    sign = 1.0 - 2.0 * check_labels(labels, len(labels)).to(model.cfg.device)
    first = 1 if model.cfg.default_prepend_bos else 0

    def signed_logit(x: Tensor, batch: Batch) -> Tensor:
        if batch.rows is None:
            raise ValueError("the probe metric needs each batch's row indices (Batch.rows)")
        mask = batch.mask.clone()
        mask[:, :first] = False
        pooled = pool(x.reshape(*mask.shape, -1), mask)
        return sign[batch.rows].to(x.dtype) * probe.logits_of(pooled).to(x.dtype)

    return ActivationMetric(probe.hook, signed_logit, "probe logit against the label")


def probe_sites(saes: Mapping[str, SAE], probe: Probe) -> dict[str, SAE]:
    """The SAEs that write at or before the probe's hook (the only ones that can affect it)."""
    keep = {h: sae for h, sae in saes.items() if writes_by(h, probe.hook)}
    if not keep:
        raise ValueError(
            f"no SAE writes at or before the probe's hook {probe.hook!r} (SAEs at "
            f"{sorted(saes, key=hook_sort_key)}): nothing upstream of the probe to attribute"
        )
    return keep


@dataclass
class ProbeCircuit:
    """The probe's circuit: the chosen ``features`` (DataFrame ``node, hook_name, feature,
    effect``, largest effect first), the error nodes above the smallest chosen effect
    (``errors``), all node ``effects``, and the wall time in seconds."""

    features: pd.DataFrame
    errors: pd.DataFrame
    effects: NodeEffects
    seconds: float

    @property
    def nodes(self) -> list[str]:
        """Node ids of the chosen features (summed over positions: ``hook/f<i>``)."""
        return list(self.features.node)

    def __repr__(self) -> str:
        return (
            f"ProbeCircuit({len(self.features)} features, {len(self.errors)} error nodes above "
            f"them, {self.effects.n_examples} examples, {self.seconds:.1f} s)"
        )


def probe_circuit(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    probe: Probe,
    texts: Sequence[str],
    labels: Sequence[int] | Tensor,
    *,
    n_features: int | None = 50,
    threshold: float | None = None,
    method: Literal["atp", "ig"] = "ig",
    steps: int = 10,
    batch_size: int = 4,
    progress: bool = True,
) -> ProbeCircuit:
    """Node effects on ``probe_metric`` of every feature of the SAEs at or before the probe's
    hook, with zero ablation and effects summed over positions, averaged over ``texts``; the
    circuit keeps the features with positive effect above ``threshold`` if given, otherwise
    the ``n_features`` largest positive ones.

    Args:
        texts, labels: the examples (the reference: 100 ambiguous training texts).
        method, steps: ``"ig"`` with ``steps`` points (the reference) or ``"atp"``.
        batch_size: texts per batch (IG stacks ``steps`` copies of each on the batch axis).
    """
    texts = check_texts(texts)
    want = check_labels(labels, len(texts))
    if threshold is None and (not isinstance(n_features, int) or n_features < 1):
        raise ValueError(f"n_features must be a positive integer, got {n_features!r}")
    start = time.perf_counter()
    effects = node_effects(
        model,
        probe_sites(saes, probe),
        [{"prefix": t} for t in texts],
        method=method,
        steps=steps,
        metric=probe_metric(model, probe, want),
        ablation="zero",
        aggregation="sum",
        batch_size=batch_size,
        skip_bos=bool(model.cfg.default_prepend_bos),
        progress=progress,
    )
    frame = effects.to_frame()
    feats = frame[(frame.kind == "feature") & (frame.effect > 0)]
    feats = feats.sort_values("effect", ascending=False, kind="stable")
    feats = feats[feats.effect > threshold] if threshold is not None else feats.head(n_features)
    floor = float(feats.effect.min()) if len(feats) else float("inf")
    errors = frame[(frame.kind == "error") & (frame.effect.abs() >= floor)]
    return ProbeCircuit(
        features=feats[["node", "hook_name", "feature", "effect"]]
        .astype({"feature": "Int64"})
        .reset_index(drop=True),
        errors=errors[["node", "hook_name", "effect"]].reset_index(drop=True),
        effects=effects,
        seconds=time.perf_counter() - start,
    )
