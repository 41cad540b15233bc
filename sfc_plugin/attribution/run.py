"""The shared run behind node and edge effects: validated settings, tokenized data, the
clean pass with every site's gradient, the ablated values (patch, zero, mean) and the IG path
(METHOD.md sections 2 and 4).

``prepare_run`` checks every argument once; ``EffectsRun.gradient_terms`` gives, per batch,
each site's ``SiteTerms``: the gradient dm/d(node) (at the clean point for AtP, averaged over
the IG path for IG) and ``delta = ablated - clean``. Node effects (eq. 3, 4) are their
products; edges (eq. 5, 6) reuse the same gradients as their downstream factor.

Cost of IG, against the reference's ``sites x N`` full forward+backward passes:
the ``k = 0`` point is the clean point, shared by all sites with the AtP pass; the ``N - 1``
other points of one site are stacked on the batch axis in one pass; and that pass starts at
the site's own block from the cached clean residual stream (``start_at_layer``), so neither its
forward nor its backward touches the layers below the site.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.data import Batch, Dataset, TokenizedDataset, read_dataset, tokenize
from sfc_plugin.metrics import Metric, forward_metric, read_hook, resolve_metric
from sfc_plugin.sites import Site, attach_saes, compose, make_sites, writes_by

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Method = Literal["exact", "atp", "ig"]

Ablation = Literal["patch", "zero", "mean"]

Aggregation = Literal["templatic", "sum"]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


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
    cache_bytes: int = 0
    _batches: list[Batch] | None = field(default=None, repr=False)
    _cache: dict[int, tuple[CleanPass, dict[str, SiteTerms]]] = field(
        default_factory=dict, repr=False
    )
    _cached_bytes: int = field(default=0, repr=False)

    def batches(self, progress: bool, desc: str) -> Iterator[Batch]:
        """The data's batches, the same objects on every call (so their terms can be kept)."""
        if self._batches is None:
            self._batches = list(self.tokens.batches(self.batch_size))
        return iter(
            tqdm(
                self._batches,
                disable=not progress or len(self._batches) <= 1,
                desc=desc,
            )
        )

    def gradient_terms(self, model, batch: Batch) -> tuple[CleanPass, dict[str, SiteTerms]]:
        """The clean pass and every site's gradient and ablation terms for ``batch``.

        With ``cache_bytes > 0`` the results of a batch are kept (up to that many bytes in
        all) and returned again on the next call for the same batch: a node pass followed by
        an edge pass (``discover_circuit``) then computes the IG gradients once. The kept
        clean pass holds the metric and the clean values only."""
        if id(batch) in self._cache:
            return self._cache[id(batch)]
        clean = clean_pass(model, self.sites, batch, self.metric, grad=True)
        ablated = ablated_values(model, self.sites, batch, self.ablation, self.means, clean)
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
        if self.cache_bytes > 0:
            kept = CleanPass(clean.metric, clean.features, clean.errors, {}, {}, {})
            size = _nbytes(kept.metric, *kept.features.values(), *kept.errors.values())
            size += sum(_nbytes(*vars(t).values()) for t in terms.values())
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[id(batch)] = (kept, terms)
                self._cached_bytes += size
        return clean, terms


def _nbytes(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def check_sites_feed(sites: list[Site], metric: Metric) -> None:
    """For a metric that reads a hook, every site must write at or before that hook."""
    hook = read_hook(metric)
    if hook is None:
        return
    late = [s.hook_name for s in sites if not writes_by(s.hook_name, hook)]
    if late:
        raise ValueError(
            f"site(s) {late} come after {hook!r}, the hook the metric reads, so they cannot "
            "affect it; pass only the SAEs at or before that hook"
        )


def prepare_run(
    model: HookedTransformer,
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
    cache_bytes: int = 0,
) -> EffectsRun:
    """Check every argument (errors name it) and tokenize the data once; ``cache_bytes`` as
    in ``EffectsRun.gradient_terms``."""
    check_choice("method", method, ("exact", "atp", "ig"))
    check_choice("ablation", ablation, ("patch", "zero", "mean"))
    check_choice("aggregation", aggregation, ("templatic", "sum"))
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
    metric = resolve_metric(metric, dataset.is_pairs)
    check_sites_feed(sites, metric)
    templatic = aggregation == "templatic"
    tokens = tokenize(model, dataset, same_length=templatic, need_patch=ablation == "patch")
    means = (
        mean_values(model, sites, tokens.batches(batch_size), templatic)
        if ablation == "mean"
        else None
    )
    return EffectsRun(
        sites=sites,
        dataset=dataset,
        tokens=tokens,
        metric=metric,
        method=method,
        steps=steps,
        ablation=ablation,
        templatic=templatic,
        batch_size=batch_size,
        max_rows=max_batch_rows or batch_size * steps,
        means=means,
        cache_bytes=cache_bytes,
    )


def metric_with_site(
    model, site: Site, f: Tensor, e: Tensor, batch: Batch, start, metric: Metric
) -> Tensor:
    """The metric with ``site``'s output set to ``decode(f) + e`` (other sites untouched)."""
    hook = (site.hook_name, lambda x, hook: compose(site, f, e, x))
    return forward_metric(model, metric, batch, hooks=[hook], start=start)


@dataclass
class CleanPass:
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


def clean_pass(model, sites: list[Site], batch: Batch, metric: Metric, grad: bool) -> CleanPass:
    resid: dict[int, Tensor] = {}

    def save_resid(x: Tensor, hook) -> None:
        resid[int(hook.name.split(".")[1])] = x.detach()

    layers = sorted({s.layer for s in sites if s.layer is not None})
    saves = [(f"blocks.{layer}.hook_resid_pre", save_resid) for layer in layers]
    saes = {s.hook_name: s.sae for s in sites}
    with torch.set_grad_enabled(grad), attach_saes(model, saes, grad=grad) as acts:
        m = forward_metric(model, metric, batch, hooks=saves)
    hooks = [s.hook_name for s in sites]
    grads_f: dict[str, Tensor] = {}
    grads_e: dict[str, Tensor] = {}
    if grad:
        leaves = [acts.features[h] for h in hooks] + [acts.errors[h] for h in hooks]
        grads = torch.autograd.grad(m.sum(), leaves, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
        grads_f = dict(zip(hooks, grads[: len(hooks)]))
        grads_e = dict(zip(hooks, grads[len(hooks) :]))
    return CleanPass(
        metric=m.detach(),
        features={h: acts.features[h].detach() for h in hooks},
        errors={h: acts.errors[h].detach() for h in hooks},
        grad_features=grads_f,
        grad_errors=grads_e,
        resid_pre=resid,
    )


def site_values(model, sites: list[Site], tokens: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Features and errors of every site on ``tokens`` (no gradient)."""
    saes = {s.hook_name: s.sae for s in sites}
    with torch.no_grad(), attach_saes(model, saes, grad=False) as acts:
        model(tokens, padding_side="right")
    return {h: (acts.features[h], acts.errors[h]) for h in saes}


def mean_values(model, sites: list[Site], batches, templatic: bool):
    """Dataset means of features and errors on the clean prefixes: per position ``[1, pos, d]``
    (templatic) or over all real tokens ``[1, 1, d]`` (sum)."""
    sums: dict[str, list[Tensor]] = {}
    count = 0
    for batch in batches:
        values = site_values(model, sites, batch.clean_tokens)
        m = batch.mask[..., None].to(torch.float32)
        for h, (f, e) in values.items():
            if templatic:
                parts = [f.sum(0, keepdim=True), e.sum(0, keepdim=True)]
            else:
                parts = [(f * m).sum((0, 1), keepdim=True), (e * m).sum((0, 1), keepdim=True)]
            sums[h] = parts if h not in sums else [a + b for a, b in zip(sums[h], parts)]
        count += len(batch) if templatic else int(batch.mask.sum())
    return {h: (f / count, e / count) for h, (f, e) in sums.items()}


def ablated_values(model, sites, batch: Batch, ablation: Ablation, means, clean: CleanPass):
    """Per-example ablated values ``(features, errors)`` of every site."""
    if ablation == "patch":
        if batch.patch_tokens is None:
            raise ValueError("ablation='patch' needs the patch prefixes tokenized (need_patch)")
        return site_values(model, sites, batch.patch_tokens)
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
    clean: CleanPass,
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
        m = metric_with_site(model, site, f, e, stacked, clean.start(model, site, n), metric)
        g_f, g_e = torch.autograd.grad(m.sum(), [f, e])
        sum_f += g_f.view(n, *f_c.shape).sum(0)
        sum_e += g_e.view(n, *e_c.shape).sum(0)
    return sum_f / steps, sum_e / steps
