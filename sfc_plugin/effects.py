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

Cost of IG, against the reference's ``sites x N`` full forward+backward passes:
the ``k = 0`` point is the clean point, shared by all sites with the AtP pass; the ``N - 1``
other points of one site are stacked on the batch axis in one pass; and that pass starts at
the site's own block from the cached clean residual stream (``start_at_layer``), so neither its
forward nor its backward touches the layers below the site.

Per-example effects ``[batch, pos, ...]`` are then aggregated (section 4): ``templatic``
averages over examples per position; ``sum`` sums over each example's real positions, then
averages over examples.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.data import Batch, Dataset, TokenizedDataset, read_dataset, tokenize
from sfc_plugin.metrics import Metric, resolve_metric
from sfc_plugin.sites import Site, attach_saes, compose, make_sites

Method = Literal["exact", "atp", "ig"]
Ablation = Literal["patch", "zero", "mean"]
Aggregation = Literal["templatic", "sum"]


def node_id(hook_name: str, feature: int | None, position: int | None) -> str:
    """The one node-id format: ``blocks.3.hook_mlp_out/f123@5``, ``.../err@5``; no ``@`` when
    effects are summed over positions."""
    kind = "err" if feature is None else f"f{feature}"
    return f"{hook_name}/{kind}" + ("" if position is None else f"@{position}")


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
    model,
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
    templatic = run.templatic
    wanted = None if nodes is None else _wanted_nodes(nodes, run.sites, run.tokens.n_pos, templatic)
    totals_f = {s.hook_name: 0.0 for s in run.sites}
    totals_e = {s.hook_name: 0.0 for s in run.sites}
    metric_sum = 0.0
    for batch in run.batches(progress, f"node effects ({method})"):
        if method == "exact":
            clean = _clean_pass(model, run.sites, batch, run.metric, grad=False)
            ablated = _ablated_values(model, run.sites, batch, ablation, run.means, clean)
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
            totals_f[h] = totals_f[h] + _aggregate(eff_f, batch.mask, templatic)
            totals_e[h] = totals_e[h] + _aggregate(eff_e, batch.mask, templatic)
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
        aggregation=aggregation,
        steps=steps if method == "ig" else None,
        n_examples=n,
        metric_clean=metric_sum / n,
        sites=run.sites,
    )


@dataclass
class SiteTerms:
    """Per-example gradient and ablation terms of one site, ``[batch, pos, ...]``.

    ``grad_*`` is dm/d(node) at the clean point (AtP) or averaged over the IG path (IG);
    ``delta_*`` is ablated minus clean value. Effects are their products (eq. 3, 4).
    """

    grad_f: Tensor
    grad_e: Tensor
    delta_f: Tensor
    delta_e: Tensor

    def effects(self) -> tuple[Tensor, Tensor]:
        """Per-example effects: features ``[batch, pos, d_sae]``, errors ``[batch, pos]``."""
        return self.grad_f * self.delta_f, (self.grad_e * self.delta_e).sum(-1)


@dataclass
class EffectsRun:
    """Validated settings, tokenized data and ablation means shared by node and edge passes."""

    sites: list[Site]
    dataset: Dataset
    tokens: TokenizedDataset
    metric: Metric
    method: Method
    steps: int
    ablation: Ablation
    templatic: bool
    batch_size: int
    max_rows: int
    means: dict[str, tuple[Tensor, Tensor]] | None

    def batches(self, progress: bool, desc: str) -> Iterator[Batch]:
        n = self.tokens.n_batches(self.batch_size)
        return iter(
            tqdm(
                self.tokens.batches(self.batch_size),
                total=n,
                disable=not progress or n <= 1,
                desc=desc,
            )
        )

    def gradient_terms(self, model, batch: Batch) -> tuple[_CleanPass, dict[str, SiteTerms]]:
        """The clean pass and every site's gradient and ablation terms for ``batch``."""
        clean = _clean_pass(model, self.sites, batch, self.metric, grad=True)
        ablated = _ablated_values(model, self.sites, batch, self.ablation, self.means, clean)
        terms = {}
        for site in self.sites:
            h = site.hook_name
            f_a, e_a = ablated[h]
            g_f, g_e = clean.grad_features[h], clean.grad_errors[h]
            if self.method == "ig" and self.steps > 1:
                g_f, g_e = _ig_mean_grads(
                    model, site, batch, self.metric, clean, f_a, e_a, self.steps, self.max_rows
                )
            terms[h] = SiteTerms(g_f, g_e, f_a - clean.features[h], e_a - clean.errors[h])
        return clean, terms


def prepare_run(
    model,
    saes,
    data,
    *,
    method,
    steps,
    metric,
    ablation,
    aggregation,
    batch_size,
    max_batch_rows,
) -> EffectsRun:
    """Check every argument (errors name it) and tokenize the data once."""
    _check_choice("method", method, ("exact", "atp", "ig"))
    _check_choice("ablation", ablation, ("patch", "zero", "mean"))
    _check_choice("aggregation", aggregation, ("templatic", "sum"))
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    sites = make_sites(model, saes)
    dataset = read_dataset(data)
    if ablation == "patch" and not dataset.is_pairs:
        raise ValueError(
            "ablation='patch' needs contrastive pairs (clean_prefix/patch_prefix rows); "
            "use ablation='zero' or 'mean' for single inputs"
        )
    templatic = aggregation == "templatic"
    tokens = tokenize(model, dataset, same_length=templatic, need_patch=ablation == "patch")
    means = (
        _mean_values(model, sites, tokens.batches(batch_size), templatic)
        if ablation == "mean"
        else None
    )
    return EffectsRun(
        sites=sites,
        dataset=dataset,
        tokens=tokens,
        metric=resolve_metric(metric, dataset.is_pairs),
        method=method,
        steps=steps,
        ablation=ablation,
        templatic=templatic,
        batch_size=batch_size,
        max_rows=max_batch_rows or batch_size * steps,
        means=means,
    )


def parse_node_id(node: str) -> tuple[str, int | None, int | None]:
    """``(hook_name, feature or None for the error, position or None)`` of a node id."""
    m = _NODE_ID.match(node)
    if not m:
        raise ValueError(
            f"node id {node!r} is not of the form 'hook/f<feature>@<pos>' or 'hook/err@<pos>'"
        )
    feature = None if m["kind"] == "err" else int(m["kind"][1:])
    return m["hook"], feature, None if m["pos"] is None else int(m["pos"])


_NODE_ID = re.compile(r"^(?P<hook>[^/]+)/(?P<kind>err|f\d+)(?:@(?P<pos>\d+))?$")


def check_node_id(
    node: str, sites: Mapping[str, Site], n_pos: int, templatic: bool
) -> tuple[str, int | None, int | None]:
    """``parse_node_id`` plus checks against the sites and the data: a known site, a
    position exactly when templatic and within the sequence, a feature below ``d_sae``."""
    hook, feature, pos = parse_node_id(node)
    if hook not in sites:
        raise ValueError(f"node {node!r}: {hook!r} is not one of the sites {list(sites)}")
    if (pos is None) == templatic:
        need = "needs a position '@<pos>'" if templatic else "takes no position"
        raise ValueError(
            f"node {node!r}: under {('sum', 'templatic')[templatic]} aggregation a node id {need}"
        )
    if feature is not None and feature >= sites[hook].d_sae:
        raise ValueError(f"node {node!r}: feature {feature} >= d_sae {sites[hook].d_sae}")
    if pos is not None and pos >= n_pos:
        raise ValueError(f"node {node!r}: position {pos} >= sequence length {n_pos}")
    return hook, feature, pos


def _wanted_nodes(nodes, sites: list[Site], n_pos: int, templatic: bool):
    """Per site, boolean masks ``[pos, d_sae]`` and ``[pos]`` of the requested node ids."""
    by_hook = {s.hook_name: s for s in sites}
    wanted = {
        h: (torch.zeros(n_pos, s.d_sae, dtype=torch.bool), torch.zeros(n_pos, dtype=torch.bool))
        for h, s in by_hook.items()
    }
    for node in nodes:
        hook, feature, pos = check_node_id(node, by_hook, n_pos, templatic)
        positions = slice(None) if pos is None else pos
        if feature is None:
            wanted[hook][1][positions] = True
        else:
            wanted[hook][0][positions, feature] = True
    return wanted


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _aggregate(eff: Tensor, mask: Tensor, templatic: bool) -> Tensor:
    """Sum per-example effects ``[batch, pos, ...]`` over examples (templatic: per position;
    sum: over real positions too). Dividing by the example count happens at the end."""
    if templatic:
        return eff.sum(0)
    m = mask.reshape(*mask.shape, *([1] * (eff.dim() - 2)))
    return (eff * m).sum((0, 1))


def _run(model, tokens: Tensor, start: tuple[int, Tensor] | None, hooks) -> Tensor:
    """Logits of ``tokens``, or of the cached residual ``start = (layer, resid_pre)`` run from
    that block on; ``hooks`` are attached for this pass only. Right padding needs no mask."""
    with model.hooks(fwd_hooks=hooks):
        if start is None:
            return model(tokens, padding_side="right")
        layer, resid = start
        return model(resid, start_at_layer=layer, padding_side="right")


def _run_with_site(model, site: Site, f: Tensor, e: Tensor, batch: Batch, start) -> Tensor:
    """Logits with ``site``'s output set to ``decode(f) + e`` (other sites untouched)."""
    hook = (site.hook_name, lambda x, hook: compose(site, f, e, x))
    return _run(model, batch.clean_tokens, start, [hook])


@dataclass
class _CleanPass:
    """Clean values (detached) and, for gradient methods, dm/d(node) at the clean point."""

    metric: Float[Tensor, " batch"]
    features: dict[str, Tensor]
    errors: dict[str, Tensor]
    grad_features: dict[str, Tensor]
    grad_errors: dict[str, Tensor]
    resid_pre: dict[int, Tensor]  # block input per site layer, for passes starting there

    def start(self, model, site: Site, repeat: int) -> tuple[int, Tensor] | None:
        """Where a pass that intervenes at ``site`` can start (None: from the tokens)."""
        if site.layer is None or model.cfg.positional_embedding_type == "shortformer":
            return None
        resid = self.resid_pre[site.layer]
        return site.layer, resid.repeat(repeat, *([1] * (resid.dim() - 1)))


def _clean_pass(model, sites: list[Site], batch: Batch, metric: Metric, grad: bool) -> _CleanPass:
    resid: dict[int, Tensor] = {}

    def save_resid(x: Tensor, hook) -> None:
        resid[int(hook.name.split(".")[1])] = x.detach()

    layers = sorted({s.layer for s in sites if s.layer is not None})
    saves = [(f"blocks.{layer}.hook_resid_pre", save_resid) for layer in layers]
    saes = {s.hook_name: s.sae for s in sites}
    with torch.set_grad_enabled(grad), attach_saes(model, saes, grad=grad) as acts:
        m = metric(_run(model, batch.clean_tokens, None, saves), batch)
    hooks = [s.hook_name for s in sites]
    grads_f: dict[str, Tensor] = {}
    grads_e: dict[str, Tensor] = {}
    if grad:
        leaves = [acts.features[h] for h in hooks] + [acts.errors[h] for h in hooks]
        grads = torch.autograd.grad(m.sum(), leaves, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
        grads_f = dict(zip(hooks, grads[: len(hooks)]))
        grads_e = dict(zip(hooks, grads[len(hooks) :]))
    return _CleanPass(
        metric=m.detach(),
        features={h: acts.features[h].detach() for h in hooks},
        errors={h: acts.errors[h].detach() for h in hooks},
        grad_features=grads_f,
        grad_errors=grads_e,
        resid_pre=resid,
    )


def _site_values(model, sites: list[Site], tokens: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Features and errors of every site on ``tokens`` (no gradient)."""
    saes = {s.hook_name: s.sae for s in sites}
    with torch.no_grad(), attach_saes(model, saes, grad=False) as acts:
        model(tokens, padding_side="right")
    return {h: (acts.features[h], acts.errors[h]) for h in saes}


def _mean_values(model, sites: list[Site], batches, templatic: bool):
    """Dataset means of features and errors on the clean prefixes: per position ``[1, pos, d]``
    (templatic) or over all real tokens ``[1, 1, d]`` (sum)."""
    sums: dict[str, list[Tensor]] = {}
    count = 0
    for batch in batches:
        values = _site_values(model, sites, batch.clean_tokens)
        m = batch.mask[..., None].to(torch.float32)
        for h, (f, e) in values.items():
            if templatic:
                parts = [f.sum(0, keepdim=True), e.sum(0, keepdim=True)]
            else:
                parts = [(f * m).sum((0, 1), keepdim=True), (e * m).sum((0, 1), keepdim=True)]
            sums[h] = parts if h not in sums else [a + b for a, b in zip(sums[h], parts)]
        count += len(batch) if templatic else int(batch.mask.sum())
    return {h: (f / count, e / count) for h, (f, e) in sums.items()}


def _ablated_values(model, sites, batch: Batch, ablation: Ablation, means, clean: _CleanPass):
    """Per-example ablated values ``(features, errors)`` of every site."""
    if ablation == "patch":
        return _site_values(model, sites, batch.patch_tokens)
    if ablation == "mean":
        b, p = batch.clean_tokens.shape
        return {h: (f.expand(b, p, -1), e.expand(b, p, -1)) for h, (f, e) in means.items()}
    return {
        h: (torch.zeros_like(clean.features[h]), torch.zeros_like(clean.errors[h]))
        for h in clean.features
    }


def _ig_mean_grads(
    model,
    site: Site,
    batch: Batch,
    metric: Metric,
    clean: _CleanPass,
    f_a: Tensor,
    e_a: Tensor,
    steps: int,
    max_rows: int,
):
    """Mean over ``k = 0..N-1`` of dm/d(node) at ``(1-k/N) clean + (k/N) ablated`` (eq. 4).

    ``k = 0`` is the clean point (gradient from the shared clean pass); the rest are stacked on
    the batch axis, at most ``max_rows`` sequences per pass."""
    h = site.hook_name
    f_c, e_c = clean.features[h], clean.errors[h]
    sum_f, sum_e = clean.grad_features[h].clone(), clean.grad_errors[h].clone()
    b = len(batch)
    ks = list(range(1, steps))
    per_pass = max(1, max_rows // b)
    for i in range(0, len(ks), per_pass):
        chunk = ks[i : i + per_pass]
        n = len(chunk)
        alpha = torch.tensor([k / steps for k in chunk], dtype=f_c.dtype, device=f_c.device)
        alpha = alpha.repeat_interleave(b)[:, None, None]
        f = ((1 - alpha) * f_c.repeat(n, 1, 1) + alpha * f_a.repeat(n, 1, 1)).requires_grad_()
        e = ((1 - alpha) * e_c.repeat(n, 1, 1) + alpha * e_a.repeat(n, 1, 1)).requires_grad_()
        stacked = batch.repeat(n)
        logits = _run_with_site(model, site, f, e, stacked, clean.start(model, site, n))
        g_f, g_e = torch.autograd.grad(metric(logits, stacked).sum(), [f, e])
        sum_f += g_f.view(n, *f_c.shape).sum(0)
        sum_e += g_e.view(n, *e_c.shape).sum(0)
    return sum_f / steps, sum_e / steps


@torch.no_grad()
def _exact_site(
    model,
    site: Site,
    batch: Batch,
    metric: Metric,
    clean: _CleanPass,
    f_a: Tensor,
    e_a: Tensor,
    max_rows: int,
    wanted: tuple[Tensor, Tensor] | None = None,
):
    """Exact per-example effects of every node of ``site`` (eq. 2), many nodes per forward;
    only the ``wanted`` ones (masks ``[pos, d_sae]``, ``[pos]``) if given."""
    h = site.hook_name
    f_c, e_c = clean.features[h], clean.errors[h]
    b, n_pos, _ = f_c.shape
    eff_f = torch.zeros_like(f_c)
    eff_e = torch.zeros(b, n_pos, dtype=f_c.dtype, device=f_c.device)
    changed = (f_c != f_a) & batch.mask[..., None]
    want_f, want_e = (None, None) if wanted is None else (w.to(f_c.device) for w in wanted)
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
        logits = _run_with_site(model, site, f, e, stacked, clean.start(model, site, n))
        delta = (metric(logits, stacked).view(n, b) - clean.metric[None]).to(f_c.dtype)
        for j, (p, i) in enumerate(chunk):
            if i is None:
                eff_e[:, p] = delta[j] * batch.mask[:, p]
            else:
                eff_f[:, p, i] = delta[j] * changed[:, p, i]
    return eff_f, eff_e
