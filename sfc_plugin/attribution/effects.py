"""Indirect effects of SAE feature and error nodes (METHOD.md sections 2 and 4).

For a metric ``m`` and a node ``a`` (one feature at one position, or the error vector at one
position) with clean value ``a_c`` and ablated value ``a_p`` (the patch input's value, zero, or
the dataset mean):

* ``exact`` (eq. 2): ``m(clean | do(a = a_p)) - m(clean)``, one patched forward per node
  (batched: many nodes ride one forward, stacked on the batch axis).  Nodes whose value does not
  change are skipped: their effect is zero.
* ``atp`` (eq. 3): ``grad_a m |clean . (a_p - a_c)``: one clean forward+backward gives the
  gradient at every site (sites pass gradients through, see ``sites``), one forward the
  ablated values.
* ``ig`` (eq. 4): ``(1/N) sum_k grad_a m |_{a = (1-k/N) a_c + (k/N) a_p} . (a_p - a_c)`` for
  ``k = 0..N-1`` (the reference implementation's points), all nodes of one site interpolated
  together while the other sites run unmodified.

IG's cost and the shared clean pass are described in ``attribution.run``.

Per-example effects ``[batch, pos, ...]`` are then aggregated (section 4): ``templatic``
averages over examples per position; ``sum`` sums over each example's real positions, then
averages over examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from sae_lens import SAE
from torch import Tensor

from sfc_plugin.attribution.run import (
    Ablation,
    Aggregation,
    CleanPass,
    EffectsRun,
    Method,
    ablated_values,
    clean_pass,
    metric_with_site,
    prepare_run,
)
from sfc_plugin.data import Batch, Dataset
from sfc_plugin.metrics import Metric
from sfc_plugin.nodes import node_id, node_masks
from sfc_plugin.sites import Site

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class NodeEffects:
    """Indirect effects of every node at every site.

    ``features[h]``: ``[pos, d_sae]`` (templatic) or ``[d_sae]`` (sum);
    ``errors[h]``: ``[pos]`` (templatic) or a 0-dim tensor (sum).
    ``metric_clean`` is the mean metric on the clean inputs.
    """

    features: dict[str, Tensor]
    errors: dict[str, Tensor]
    method: Method
    ablation: Ablation
    aggregation: Aggregation
    steps: int | None
    n_examples: int
    metric_clean: float
    sites: list[Site] = field(repr=False, default_factory=list)

    def to_frame(self, threshold: float = 0.0) -> pd.DataFrame:
        """Nodes with ``|effect| > threshold`` as a DataFrame sorted by ``|effect|``.

        Columns: node, hook_name, layer, component, kind ("feature"/"error"), position (None
        when summed), feature (None for errors), effect.
        """
        rows = []
        for site in self.sites:
            h = site.hook_name
            for kind, eff in (("feature", self.features[h]), ("error", self.errors[h])):
                if self.aggregation == "sum":
                    eff = eff.unsqueeze(0)
                if kind == "error":
                    eff = eff.unsqueeze(-1)
                for pos, feat in (eff.abs() > threshold).nonzero().tolist():
                    position = pos if self.aggregation == "templatic" else None
                    feature = feat if kind == "feature" else None
                    rows.append(
                        (
                            node_id(h, feature, position),
                            h,
                            site.layer,
                            site.component,
                            kind,
                            position,
                            feature,
                            float(eff[pos, feat]),
                        )
                    )
        cols = ["node", "hook_name", "layer", "component", "kind", "position", "feature", "effect"]
        df = pd.DataFrame(rows, columns=cols)
        return df.reindex(df.effect.abs().sort_values(ascending=False).index).reset_index(drop=True)


def node_effects(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    data: Dataset | str | Path | Sequence[dict[str, Any]],
    *,
    method: Method = "ig",
    steps: int = 10,
    metric: Callable | None = None,
    ablation: Ablation = "patch",
    aggregation: Aggregation = "templatic",
    batch_size: int = 16,
    max_batch_rows: int | None = None,
    nodes: Sequence[str] | None = None,
    skip_bos: bool = False,
    progress: bool = True,
) -> NodeEffects:
    """Indirect effects of every feature and error node at every SAE site.

    Args:
        model: a TransformerLens ``HookedTransformer`` (e.g. ``HookedSAETransformer``).
        saes: hook name -> SAELens SAE (``load_saes``).
        data: contrastive pairs or single inputs: a JSONL path, a list of dicts or a Dataset.
        method: ``"exact"`` (eq. 2), ``"atp"`` (eq. 3) or ``"ig"`` (eq. 4).
        steps: IG interpolation steps N.
        metric: ``metric(logits, batch) -> [batch]``; default logit(patch_answer) -
            logit(clean_answer) for pairs, log p(answer) for single inputs (last token).
        ablation: ``"patch"`` (pairs), ``"zero"`` or ``"mean"`` (per position when templatic).
        aggregation: ``"templatic"`` (mean over examples per position) or ``"sum"``.
        batch_size: examples per batch.
        max_batch_rows: bound on sequences per forward when IG steps or exact-patching nodes
            are stacked on the batch axis (default ``batch_size * steps``); memory per forward
            scales with it.
        nodes: with ``method="exact"``, patch only these node ids (``node_id`` format, e.g.
            ``"blocks.3.hook_mlp_out/f12@5"``; no ``@pos`` under sum aggregation) and leave NaN
            for the rest: exact values for the few nodes you want to check.
        skip_bos: under ``sum`` aggregation, leave the BOS position out of each example's sum
            (the model must prepend BOS). Its nodes can be attention-sink features whose
            ablation moves everything; the reference drops them before selecting (SHIFT).
        progress: show a progress bar when there is more than one batch.

    Returns:
        NodeEffects with sign ``m(clean | do(node = ablated)) - m(clean)``.
    """
    run = prepare_run(
        model,
        saes,
        data,
        method=method,
        steps=steps,
        metric=metric,
        ablation=ablation,
        aggregation=aggregation,
        batch_size=batch_size,
        max_batch_rows=max_batch_rows,
    )
    if nodes is not None and method != "exact":
        raise ValueError("nodes= selects nodes for method='exact' only; AtP and IG get all nodes")
    return run_node_effects(model, run, nodes=nodes, skip_bos=skip_bos, progress=progress)


def run_node_effects(
    model: HookedTransformer,
    run: EffectsRun,
    *,
    nodes: Sequence[str] | None = None,
    skip_bos: bool = False,
    progress: bool = True,
) -> NodeEffects:
    """``node_effects`` on a prepared run (``prepare_run``), e.g. one an edge pass shares."""
    method, ablation = run.method, run.ablation
    templatic = run.templatic
    if skip_bos and (templatic or not model.cfg.default_prepend_bos):
        raise ValueError(
            "skip_bos needs aggregation='sum' and a model that prepends BOS "
            "(model.cfg.default_prepend_bos)"
        )
    wanted = None
    if nodes is not None:
        wanted = node_masks(nodes, run.sites, run.tokens.n_pos, templatic)
    totals_f: dict[str, Tensor] = {}
    totals_e: dict[str, Tensor] = {}
    metric_sum = 0.0
    for batch in run.batches(progress, f"node effects ({method})"):
        if method == "exact":
            clean = clean_pass(model, run.sites, batch, run.metric, grad=False)
            ablated = ablated_values(model, run.sites, batch, ablation, run.means, clean)
            effects = {
                s.hook_name: _exact_site(
                    model,
                    s,
                    batch,
                    run.metric,
                    clean,
                    *ablated[s.hook_name],
                    run.max_rows,
                    None if wanted is None else wanted[s.hook_name],
                )
                for s in run.sites
            }
        else:
            clean, terms = run.gradient_terms(model, batch)
            effects = {h: t.effects() for h, t in terms.items()}
        metric_sum += float(clean.metric.sum())
        for h, (eff_f, eff_e) in effects.items():
            for totals, eff in ((totals_f, eff_f), (totals_e, eff_e)):
                part = _aggregate(eff, _summed(batch.mask, skip_bos), templatic)
                totals[h] = totals[h] + part if h in totals else part
    n = len(run.dataset)
    features = {h: t / n for h, t in totals_f.items()}
    errors = {h: t / n for h, t in totals_e.items()}
    for h, (want_f, want_e) in (wanted or {}).items():
        features[h][~(want_f if templatic else want_f.any(0))] = float("nan")
        errors[h][~(want_e if templatic else want_e.any(0))] = float("nan")
    return NodeEffects(
        features=features,
        errors=errors,
        method=method,
        ablation=ablation,
        aggregation="templatic" if templatic else "sum",
        steps=run.steps if method == "ig" else None,
        n_examples=n,
        metric_clean=metric_sum / n,
        sites=run.sites,
    )


def _summed(mask: Tensor, skip_bos: bool) -> Tensor:
    """The positions an example's effects are summed over."""
    if not skip_bos:
        return mask
    out = mask.clone()
    out[:, 0] = False
    return out


def _aggregate(eff: Tensor, mask: Tensor, templatic: bool) -> Tensor:
    """Sum per-example effects ``[batch, pos, ...]`` over examples (templatic: per position;
    sum: over real positions too). Dividing by the example count happens at the end."""
    if templatic:
        return eff.sum(0)
    m = mask.reshape(*mask.shape, *([1] * (eff.dim() - 2)))
    return (eff * m).sum((0, 1))


@torch.no_grad()
def _exact_site(
    model,
    site: Site,
    batch: Batch,
    metric: Metric,
    clean: CleanPass,
    f_a: Tensor,
    e_a: Tensor,
    max_rows: int,
    wanted: tuple[Tensor, Tensor] | None = None,
):
    """Exact per-example effects of every node of ``site`` (eq. 2), many nodes per forward;
    only the ``wanted`` ones (``node_masks``: ``[pos or 1, d_sae]``, ``[pos or 1]``) if given."""
    h = site.hook_name
    f_c, e_c = clean.features[h], clean.errors[h]
    b, n_pos, _ = f_c.shape
    eff_f = torch.zeros_like(f_c)
    eff_e = torch.zeros(b, n_pos, dtype=f_c.dtype, device=f_c.device)
    changed = (f_c != f_a) & batch.mask[..., None]
    want_f, want_e = (None, None)
    if wanted is not None:
        want_f, want_e = (w.to(f_c.device).expand(n_pos, *w.shape[1:]) for w in wanted)
    todo = changed.any(0) if want_f is None else changed.any(0) & want_f
    nodes = [(p, i) for p, i in todo.nonzero().tolist()]
    nodes += [
        (p, None) for p in range(n_pos) if batch.mask[:, p].any() and (want_e is None or want_e[p])
    ]
    per_pass = max(1, max_rows // b)
    for start in range(0, len(nodes), per_pass):
        chunk = nodes[start : start + per_pass]
        n = len(chunk)
        f = f_c.repeat(n, 1, 1)
        e = e_c.repeat(n, 1, 1)
        for j, (p, i) in enumerate(chunk):
            rows = slice(j * b, (j + 1) * b)
            if i is None:
                e[rows, p] = e_a[:, p]
            else:
                f[rows, p, i] = f_a[:, p, i]
        stacked = batch.repeat(n)
        m = metric_with_site(model, site, f, e, stacked, clean.start(model, site, n), metric)
        delta = (m.view(n, b) - clean.metric[None]).to(f_c.dtype)
        for j, (p, i) in enumerate(chunk):
            if i is None:
                eff_e[:, p] = delta[j] * batch.mask[:, p]
            else:
                eff_f[:, p, i] = delta[j] * changed[:, p, i]
    return eff_f, eff_e
