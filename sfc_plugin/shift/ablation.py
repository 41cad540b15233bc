"""Ablating chosen features at every position (METHOD.md section 7, steps 4 and 6).

SHIFT zero-ablates the features a judge marks spurious and keeps each SAE's error, as the
reference does: the site's output becomes ``decode(f') + (x - decode(f))`` with ``f'`` the
features with the chosen ones set to zero, so only those features' contributions leave the
model. The neuron skyline instead sets neurons (identity dictionaries, zero error) to their
mean over the data. Hooks from ``ablation_hooks`` go to ``pooled_activations(fwd_hooks=...)``
to score or retrain a probe under the ablation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

from sfc_plugin.nodes import node_id, parse_node_id
from sfc_plugin.shift.probe import check_texts, text_batches
from sfc_plugin.sites import Site, WriteFn, compose, encode, make_sites, site_hooks, stop_layer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def feature_sets(nodes: Sequence[str]) -> dict[str, list[int]]:
    """``hook/f<i>`` ids grouped by hook, ``{hook: [features]}``; an error node or an id with
    a position is an error naming it (features are ablated at every position)."""
    if isinstance(nodes, str):
        raise TypeError("nodes must be a list of node ids, not one string")
    out: dict[str, list[int]] = {}
    for node in nodes:
        hook, feature, pos = parse_node_id(node)
        if feature is None or pos is not None:
            raise ValueError(
                f"node {node!r}: only features summed over positions ('hook/f<i>') can be "
                "ablated at every position"
            )
        out.setdefault(hook, []).append(feature)
    return out


def ablation_hooks(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    nodes: Sequence[str],
    *,
    values: Mapping[str, Float[Tensor, " d_sae"]] | None = None,
) -> list[tuple[str, Callable]]:
    """Forward hooks that set every listed feature to zero (or to ``values[hook][i]``) at
    every position, keeping each site's error. No nodes: no hooks."""
    sets = feature_sets(nodes)
    if not sets:
        return []
    unknown = sorted(set(sets) - set(saes))
    if unknown:
        raise ValueError(f"nodes at {unknown}, which have no SAE among {list(saes)}")
    hooks: list[tuple[str, Callable]] = []
    for site in make_sites(model, {h: saes[h] for h in sets}):
        features = sets[site.hook_name]
        bad = [i for i in features if not 0 <= i < site.d_sae]
        if bad:
            raise ValueError(
                f"node {node_id(site.hook_name, bad[0], None)}: feature {bad[0]} is out of "
                f"range (d_sae {site.d_sae})"
            )
        fill = None if values is None else values[site.hook_name][features]
        hooks += site_hooks(site, _ablate(site, torch.tensor(features), fill))
    return hooks


def _ablate(site: Site, features: Tensor, fill: Tensor | None) -> WriteFn:
    def on_write(x_in: Tensor, x: Tensor) -> Tensor:
        f, e = encode(site, x_in, x)
        idx = features.to(f.device)
        f[..., idx] = 0.0 if fill is None else fill.to(f)
        return compose(site, f, e, x)

    return on_write


def random_features(
    saes: Mapping[str, SAE], k: int, *, seed: int = 0, exclude: Sequence[str] = ()
) -> list[str]:
    """``k`` feature ids drawn uniformly without replacement from every feature of ``saes``
    (not in ``exclude``), seeded: the random-ablation baseline."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if k == 0:
        return []
    hooks = list(saes)
    sizes = torch.tensor([saes[h].cfg.d_sae for h in hooks])
    offsets = torch.cumsum(sizes, 0) - sizes
    skip = set(exclude)
    generator = torch.Generator().manual_seed(seed)
    out: list[str] = []
    for flat in torch.randperm(int(sizes.sum()), generator=generator).tolist():
        j = int(torch.searchsorted(offsets, flat, right=True)) - 1
        node = node_id(hooks[j], flat - int(offsets[j]), None)
        if node not in skip:
            out.append(node)
        if len(out) == k:
            return out
    raise ValueError(f"cannot draw {k} features from {int(sizes.sum())} minus {len(skip)}")


@torch.no_grad()
def mean_features(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_tokens: int = 256,
) -> dict[str, Float[Tensor, " d_sae"]]:
    """Each SAE's features averaged over the real tokens (BOS excluded) of ``texts``: the
    values of mean ablation."""
    texts = check_texts(texts)
    sites = make_sites(model, saes)
    last = max(sites, key=lambda s: s.layer or 0).hook_name
    sums = {s.hook_name: torch.zeros(s.d_sae, device=model.cfg.device) for s in sites}
    count = 0
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def record(site: Site) -> WriteFn:
        def on_write(x_in: Tensor, x: Tensor) -> Tensor:
            seen[site.hook_name] = encode(site, x_in, x)
            return x

        return on_write

    hooks: list[Any] = [h for s in sites for h in site_hooks(s, record(s))]
    for _, tokens, mask in text_batches(model, texts, batch_size, max_tokens):
        with model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=stop_layer(last, model.cfg.n_layers))
        m = mask[..., None].float()
        for h, (f, _) in seen.items():
            sums[h] += (f.float() * m).sum((0, 1))
        count += int(mask.sum())
    return {h: s / count for h, s in sums.items()}
