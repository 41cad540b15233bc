"""Direct effects in the frozen replacement model (METHOD.md sections 9, 11).

A *target* is a linear readout of the replacement model: the data's metric (a logit
difference for pairs), one token's logit, the difference of two tokens' logits, or a
feature's pre-activation at one position. ``direct_effects`` gives the direct effect of every
upstream node on each target, batched: each row of a frozen forward is one (example, target)
pair, and one backward over the sum of the rows' target values gives every row's effects at
once (the rows do not interact). See ``replacement`` for what is frozen and why this is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.data import read_dataset, tokenize
from sfc_plugin.metrics import Metric, resolve_metric
from sfc_plugin.nodes import METRIC_NODE, node_id, parse_node_id
from sfc_plugin.sites import Site, stop_layer_for
from sfc_plugin.tracing.replacement import (
    FrozenLeaves,
    FrozenState,
    MissingPolicy,
    freeze,
    frozen_forward,
    is_frozen_read,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

TargetSpec = str | tuple[str, str]
"""``"metric"``, a node id ``hook/f<i>@<pos>``, a token (its logit), or a pair of tokens
(the first's logit minus the second's), all at each example's last token."""


@dataclass(frozen=True)
class Target:
    """A parsed target. ``kind``: ``"metric"`` (the data's default metric), ``"logits"``
    (``sum(signs[i] * logit[tokens[i]])`` at the last token) or ``"feature"`` (the
    pre-activation of ``feature`` of the site writing ``hook_name`` at ``position``)."""

    name: str
    kind: Literal["metric", "logits", "feature"]
    tokens: tuple[int, ...] = ()
    signs: tuple[float, ...] = ()
    hook_name: str = ""
    feature: int = -1
    position: int = -1


def as_specs(target: TargetSpec | Sequence[TargetSpec]) -> list[TargetSpec]:
    """One target (a string or a pair of tokens) or a list of them, as a list."""
    if isinstance(target, str):
        return [target]
    if isinstance(target, tuple) and len(target) == 2 and all(isinstance(t, str) for t in target):
        return [(str(target[0]), str(target[1]))]
    return list(target)


def parse_target(model: HookedTransformer, sites: Sequence[Site], spec: TargetSpec) -> Target:
    """Check a target spec against the model and sites (errors name the bad part)."""
    if spec == METRIC_NODE:
        return Target(METRIC_NODE, "metric")
    if isinstance(spec, tuple):
        if len(spec) != 2 or not all(isinstance(t, str) for t in spec):
            raise ValueError(f"target {spec!r}: a pair target is two token strings")
        ids = tuple(_one_token(model, t) for t in spec)
        return Target(f"logit({spec[0]!r})-logit({spec[1]!r})", "logits", ids, (1.0, -1.0))
    if not isinstance(spec, str):
        raise TypeError(f"target {spec!r}: a target is a string or a pair of strings")
    by_hook = {s.hook_name: s for s in sites}
    try:
        hook, feature, position = parse_node_id(spec)
    except ValueError:
        return Target(f"logit({spec!r})", "logits", (_one_token(model, spec),), (1.0,))
    site = by_hook.get(hook)
    if site is None:
        raise ValueError(f"target {spec!r}: {hook!r} is not one of the sites {list(by_hook)}")
    if feature is None or position is None:
        raise ValueError(f"target {spec!r}: a node target is one feature at one position")
    if feature >= site.d_sae:
        raise ValueError(f"target {spec!r}: feature {feature} >= d_sae {site.d_sae}")
    if not is_frozen_read(site):
        raise ValueError(
            f"target {spec!r}: {hook!r} reads {site.read_hook!r}, an MLP output, so its "
            "features' inputs are not linear in the frozen model; use a transcoder there"
        )
    return Target(spec, "feature", hook_name=hook, feature=feature, position=position)


def _one_token(model: HookedTransformer, text: str) -> int:
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        tokenizer = model.tokenizer
        pieces = [tokenizer.decode([t]) for t in ids] if tokenizer is not None else ids
        raise ValueError(
            f"target {text!r} is {len(ids)} tokens {pieces} for this tokenizer, not one; "
            "a logit target is exactly one token (or pass a node id)"
        )
    return int(ids[0])


def row_values(
    state: FrozenState,
    run: FrozenLeaves,
    logits: Tensor | None,
    targets: Sequence[Target],
    metric: Metric | None,
) -> Float[Tensor, " rows"]:
    """Each row's target value in a frozen forward (``targets[r]`` for row ``r``)."""
    rows = len(targets)
    values: list[Tensor] = [torch.zeros(())] * rows
    by_kind: dict[str, list[int]] = {}
    for r, t in enumerate(targets):
        by_kind.setdefault(t.kind, []).append(r)
    batch = state.batch
    examples = run.examples
    for kind, idx in by_kind.items():
        index = torch.tensor(idx, device=examples.device)
        if kind == "feature":
            for r in idx:
                values[r] = _pre_activation(state, run, r, targets[r])
            continue
        if logits is None:
            raise RuntimeError("logit targets need the full forward")
        ex = examples[index]
        last = logits[index, batch.last[ex]]
        if kind == "metric":
            if metric is None:
                raise RuntimeError("a metric target needs the data's metric")
            out = metric(logits[index], batch.select(ex))
        else:
            out = torch.stack(
                [
                    sum(s * last[i, tok] for tok, s in zip(targets[r].tokens, targets[r].signs))
                    for i, r in enumerate(idx)
                ]  # type: ignore[misc]
            )
        for i, r in enumerate(idx):
            values[r] = out[i]
    return torch.stack(values)


def _pre_activation(state: FrozenState, run: FrozenLeaves, row: int, target: Target) -> Tensor:
    """The target feature's pre-activation (SAELens' ``hook_sae_acts_pre``) in row ``row``."""
    site = state.site_by_hook[target.hook_name]
    x = run.reads[site.read_hook][row, target.position]
    seen: dict[str, Tensor] = {}

    def capture(pre: Tensor, hook) -> None:
        seen["pre"] = pre

    sae = site.sae
    inp = x if getattr(sae, "hook_z_reshaping_mode", False) else x.reshape(1, -1)
    with sae.hooks(fwd_hooks=[("hook_sae_acts_pre", capture)]):
        sae.encode(inp.to(sae.dtype))
    return seen["pre"].reshape(-1)[target.feature].to(x.dtype)


def stop_for(state: FrozenState, targets: Sequence[Target]) -> int | None:
    """The ``stop_at_layer`` of a frozen forward that computes ``targets``."""
    if any(t.kind != "feature" for t in targets):
        return None
    by_hook = state.site_by_hook
    return stop_layer_for(
        {by_hook[t.hook_name].read_hook for t in targets}, state.model.cfg.n_layers
    )


def frozen_rows(
    state: FrozenState,
    examples: Int[Tensor, " rows"],
    targets: Sequence[Target],
    metric: Metric | None = None,
) -> tuple[Float[Tensor, " rows"], FrozenLeaves]:
    """One frozen forward and one backward for rows ``(examples[r], targets[r])``: each
    row's target value and the leaves, whose ``direct_effects()`` then hold every node's
    direct effect on that row's target."""
    reads = tuple(
        sorted({state.site_by_hook[t.hook_name].read_hook for t in targets if t.kind == "feature"})
    )
    with torch.enable_grad():
        logits, run = frozen_forward(
            state, examples, read_hooks=reads, stop_at_layer=stop_for(state, targets)
        )
        values = row_values(state, run, logits, targets, metric)
        values.sum().backward()
    return values.detach(), run


def direct_effects(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    data,
    targets: TargetSpec | Sequence[TargetSpec] = METRIC_NODE,
    *,
    missing: MissingPolicy = "error",
    batch_rows: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """The direct effect of every node on each target, per example, in the frozen
    replacement model (``replacement``): one row per (target, example, source) with a
    nonzero effect, columns ``target, example, source, effect``, plus one row per
    (target, example) with ``source = "value"`` holding the target's value.

    ``data``: rows as for circuits (same token length: positions are aligned). ``targets``:
    see ``TargetSpec``. ``batch_rows``: (example, target) pairs per forward+backward.
    ``missing``: MLPs without a transcoder, see ``freeze``. Sources are node ids
    (``hook/f<i>@<pos>``, ``hook/err@<pos>``; embeddings and frozen MLP outputs are error
    nodes of their hooks)."""
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    dataset = read_dataset(data)
    batch = tokenize(model, dataset, same_length=True, need_patch=False).tokens
    state = freeze(model, saes, batch, missing=missing)
    parsed = [parse_target(model, state.sites, t) for t in as_specs(targets)]
    metric = (
        resolve_metric(None, dataset.is_pairs) if any(t.kind == "metric" for t in parsed) else None
    )
    pairs = [(t, e) for t in parsed for e in range(state.n_examples)]
    records: list[tuple[str, int, str, float]] = []
    for start in tqdm(
        range(0, len(pairs), batch_rows), disable=not progress, desc="direct effects"
    ):
        chunk = pairs[start : start + batch_rows]
        examples = torch.tensor([e for _, e in chunk], device=model.cfg.device)
        values, run = frozen_rows(state, examples, [t for t, _ in chunk], metric)
        feats, vectors = run.direct_effects()
        for r, (t, e) in enumerate(chunk):
            records.append((t.name, e, "value", float(values[r])))
            for hook, de in feats.items():
                pos, feat = de[r].nonzero(as_tuple=True)
                for p, f in zip(pos.tolist(), feat.tolist()):
                    records.append((t.name, e, node_id(hook, f, p), float(de[r, p, f])))
            for hook, de in vectors.items():
                for p in de[r].nonzero(as_tuple=True)[0].tolist():
                    records.append((t.name, e, node_id(hook, None, p), float(de[r, p])))
    return pd.DataFrame(records, columns=["target", "example", "source", "effect"])
