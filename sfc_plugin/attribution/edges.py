"""Indirect effects of edges between circuit nodes (METHOD.md section 3, eq. 5 and 6).

For an upstream node ``u`` and a downstream node ``d``:

    IE(u -> d) = grad_d m . (dd/du) . (u_ablated - u_clean)                        (eq. 5)

with the Jacobian taken at the clean input while every other node, of every site, is held at
its clean value, so the edge carries only the direct path from ``u`` to ``d``.

How: one forward per batch in which *every* site outputs ``decode(f) + eps`` from leaf
tensors holding its clean values. Each site's output then depends on nothing upstream, so
the gradient of a downstream quantity w.r.t. a site's leaves follows exactly the paths that
avoid all other sites: the direct Jacobian for every upstream site at once. Inside the same
hook each site also computes its own nodes from its input, ``f_d = encode(x)`` and
``eps_d = x - decode(encode(x))``, as differentiable functions: these are the downstream
nodes. The residual-to-residual correction of eq. 6 (subtract the paths through the
intermediate attention/MLP sites) is therefore built in: with those sites held fixed their
paths carry nothing. For parallel-attention blocks this equals eq. 6 exactly; for sequential
blocks eq. 6 as printed leaves the attention -> MLP path in (see docs/method.md), while this
computes the definition. No model family is hard-coded: which sites connect, and through
what, follows from the model's graph and from which hooks have SAEs.

Cost: a downstream node ``d`` needs one vector-Jacobian product, ``grad_d m . dd/d(leaves)``,
for all upstream nodes of all earlier sites together (error nodes included, never one
backward per dimension). Many downstream nodes share one backward through
``torch.autograd.grad(..., is_grads_batched=True)`` (vmap over the backward), ``chunk`` at a
time. The backward from a site stops at the nearest earlier site that blocks every path
(a residual-stream site), so it is short when there are residual sites.

``grad_d m`` is the clean-point gradient for AtP and the IG-averaged gradient for IG, with
the Jacobian at the clean input, as in the reference implementation's ``jvp``.

Edges into the metric: for a site with no later site, the edge weight is the node's own
effect (all its paths to the metric are direct); for other sites it is the direct effect,
``dm/du`` with every later site held fixed, times ``u_ablated - u_clean``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from torch import Tensor

from sfc_plugin.attribution.effects import NodeEffects
from sfc_plugin.attribution.run import Ablation, Aggregation, EffectsRun, SiteTerms, prepare_run
from sfc_plugin.data import Batch
from sfc_plugin.metrics import forward_metric
from sfc_plugin.nodes import METRIC_NODE, check_node_id, node_id
from sfc_plugin.sites import Site, WriteFn, compose, encode, site_hooks

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class KeptNodes:
    """The nodes of one site taking part in edges: feature nodes ``(pos, feature)`` and error
    nodes ``(pos, None)``; ``pos`` is None when effects are summed over positions."""

    site: Site
    nodes: list[tuple[int | None, int | None]]

    @property
    def ids(self) -> list[str]:
        return [node_id(self.site.hook_name, f, p) for p, f in self.nodes]


def kept_nodes(
    sites: Sequence[Site], nodes: Sequence[str], n_pos: int, templatic: bool
) -> dict[str, KeptNodes]:
    """Group node ids by site (every site gets an entry, maybe empty), each checked by
    ``check_node_id``."""
    by_site = {s.hook_name: KeptNodes(s, []) for s in sites}
    by_hook = {s.hook_name: s for s in sites}
    for node in nodes:
        hook, feature, pos = check_node_id(node, by_hook, n_pos, templatic)
        by_site[hook].nodes.append((pos, feature))
    return by_site


def _select(values_f: Tensor, values_e: Tensor, kept: KeptNodes) -> Tensor:
    """Pick kept nodes from aggregated values ``[..., pos, d_sae]`` / ``[..., pos]`` (templatic)
    or ``[..., d_sae]`` / ``[...]`` (sum) -> ``[..., n_kept]``."""
    cols = []
    for pos, feat in kept.nodes:
        if pos is None:
            cols.append(values_e if feat is None else values_f[..., feat])
        else:
            cols.append(values_e[..., pos] if feat is None else values_f[..., pos, feat])
    return torch.stack(cols, -1)


def _edge_values(grads: tuple[Tensor, Tensor], terms: SiteTerms, mask: Tensor, templatic: bool):
    """Per-node sums over the batch of ``grad . delta`` for one upstream site.

    ``grads`` are VJPs w.r.t. the site's leaves with a leading chunk axis ``[k, batch, pos,
    ...]``; returns ``[k, pos, d_sae]``, ``[k, pos]`` (templatic) or ``[k, d_sae]``, ``[k]``.
    """
    g_f, g_e = grads
    eff_f = g_f * terms.delta_f
    eff_e = (g_e * terms.delta_e).sum(-1)
    if templatic:
        return eff_f.sum(1), eff_e.sum(1)
    m = mask[None, :, :]
    return (eff_f * m[..., None]).sum((1, 2)), (eff_e * m).sum((1, 2))


def _targets(kept: KeptNodes, terms: SiteTerms, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Batched grad_outputs for the downstream nodes of one site: ``[k, batch, pos, d_sae]``
    and ``[k, batch, pos, d_in]``, row j holding ``grad_d m`` at node j's place only."""
    k = len(kept.nodes)
    out_f = terms.grad_f.new_zeros(k, *terms.grad_f.shape)
    out_e = terms.grad_e.new_zeros(k, *terms.grad_e.shape)
    for j, (pos, feat) in enumerate(kept.nodes):
        where = slice(None) if pos is None else pos
        if feat is None:
            out_e[j, :, where] = terms.grad_e[:, where]
        else:
            out_f[j, :, where, feat] = terms.grad_f[:, where, feat]
    m = mask[None, :, :]
    return out_f * m[..., None], out_e * m[..., None]


class EdgeAccumulator:
    """Sums of edge effects over examples, one dense block per (downstream, upstream) site."""

    def __init__(self, kept: Mapping[str, KeptNodes]):
        self.kept = kept
        self.blocks: dict[tuple[str, str], Tensor] = {}

    def add_rows(self, down: str, up: str, rows: slice, values: Tensor) -> None:
        """Add ``values`` (``[rows, n_kept_up]``) to the block's downstream ``rows``."""
        key = (down, up)
        if key not in self.blocks:
            n_down = 1 if down == METRIC_NODE else len(self.kept[down].nodes)
            self.blocks[key] = values.new_zeros(n_down, values.shape[-1])
        self.blocks[key][rows] += values

    def frame(self, n_examples: int) -> pd.DataFrame:
        """Edges with a nonzero effect: upstream, downstream, effect (mean over examples)."""
        rows = []
        for (down, up), block in self.blocks.items():
            up_ids = self.kept[up].ids
            down_ids = [METRIC_NODE] if down == METRIC_NODE else self.kept[down].ids
            block = (block / n_examples).cpu()
            for i, j in block.nonzero().tolist():
                rows.append((up_ids[j], down_ids[i], float(block[i, j])))
        return pd.DataFrame(rows, columns=["upstream", "downstream", "effect"])


def batch_edges(
    model,
    run: EffectsRun,
    batch: Batch,
    clean,
    terms: Mapping[str, SiteTerms],
    kept: Mapping[str, KeptNodes],
    acc: EdgeAccumulator,
) -> None:
    """Add this batch's edge effects among ``kept`` nodes, and their direct effects on the
    metric, to ``acc``. ``clean`` and ``terms`` come from ``run.gradient_terms``."""
    sites = run.sites
    leaves = {
        s.hook_name: (
            clean.features[s.hook_name].clone().requires_grad_(),
            clean.errors[s.hook_name].clone().requires_grad_(),
        )
        for s in sites
    }
    down: dict[str, tuple[Tensor, Tensor]] = {}

    def on_write(site: Site) -> WriteFn:
        def write(x_in: Tensor, x: Tensor) -> Tensor:
            down[site.hook_name] = encode(site, x_in, x, grad=True)
            return compose(site, *leaves[site.hook_name], x)

        return write

    hooks = [hook for s in sites for hook in site_hooks(s, on_write(s))]
    with torch.enable_grad():
        m = forward_metric(model, run.metric, batch, hooks=hooks)
    chunk = max(1, run.max_rows // len(batch))
    for i, site in enumerate(sites):
        h = site.hook_name
        ups = [s for s in sites[:i] if kept[s.hook_name].nodes]
        f_d, e_d = down[h]
        if not ups or not kept[h].nodes or not (f_d.requires_grad or e_d.requires_grad):
            continue
        inputs = [t for s in ups for t in leaves[s.hook_name]]
        tgt_f, tgt_e = _targets(kept[h], terms[h], batch.mask)
        for start in range(0, len(kept[h].nodes), chunk):
            rows = slice(start, start + chunk)
            grads = torch.autograd.grad(
                (f_d, e_d),
                inputs,
                grad_outputs=(tgt_f[rows], tgt_e[rows]),
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
            for j, up in enumerate(ups):
                g_f, g_e = grads[2 * j], grads[2 * j + 1]
                if g_f is None:  # f and eps enter the site output together
                    continue  # no path from this site that avoids the sites between
                values = _edge_values((g_f, g_e), terms[up.hook_name], batch.mask, run.templatic)
                acc.add_rows(h, up.hook_name, rows, _select(*values, kept[up.hook_name]))
    # edges into the metric: direct effects of every kept node with later sites held fixed
    inputs = [t for s in sites for t in leaves[s.hook_name]]
    grads = torch.autograd.grad(m.sum(), inputs, allow_unused=True, materialize_grads=True)
    for j, site in enumerate(sites):
        h = site.hook_name
        if not kept[h].nodes:
            continue
        pair = (grads[2 * j][None], grads[2 * j + 1][None])
        values = _edge_values(pair, terms[h], batch.mask, run.templatic)
        acc.add_rows(METRIC_NODE, h, slice(None), _select(*values, kept[h]))


def edge_effects(
    model: HookedTransformer,
    saes,
    data,
    nodes: Sequence[str],
    *,
    effects: NodeEffects | None = None,
    method: Literal["atp", "ig"] = "ig",
    steps: int = 10,
    metric=None,
    ablation: Ablation = "patch",
    aggregation: Aggregation = "templatic",
    batch_size: int = 16,
    max_batch_rows: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Edge effects among ``nodes`` (node ids, e.g. the kept nodes of a circuit) and into the
    metric, as a DataFrame ``upstream, downstream, effect`` (mean over examples).

    Arguments as for ``node_effects``; ``max_batch_rows`` bounds ``k x batch`` for ``k``
    downstream nodes sharing one backward. ``effects`` (the node effects of the same call)
    gives the metric edges of the last site, whose node effects they are.
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
    return run_edge_effects(model, run, nodes, effects=effects, progress=progress)


def run_edge_effects(
    model: HookedTransformer,
    run: EffectsRun,
    nodes: Sequence[str],
    *,
    effects: NodeEffects | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """``edge_effects`` on a prepared run (``prepare_run``); with the run of the node pass and
    its ``cache_bytes``, the gradient terms are reused instead of recomputed."""
    if run.method not in ("atp", "ig"):
        raise ValueError(f"edges are computed with method 'atp' or 'ig', got {run.method!r}")
    kept = kept_nodes(run.sites, nodes, run.tokens.n_pos, run.templatic)
    acc = EdgeAccumulator(kept)
    for batch in run.batches(progress, f"edges ({run.method})"):
        clean, terms = run.gradient_terms(model, batch)
        batch_edges(model, run, batch, clean, terms, kept, acc)
    n = len(run.dataset)
    last = run.sites[-1].hook_name
    if effects is not None and kept[last].nodes:
        totals = _select(effects.features[last], effects.errors[last], kept[last])
        acc.blocks[(METRIC_NODE, last)] = totals[None] * n
    return acc.frame(n)
