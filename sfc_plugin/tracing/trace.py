"""Hierarchical tracing: a circuit of direct effects, traced backwards from a target
(Dunefsky et al.'s hierarchical tracing, seed 002; METHOD.md section 9).

In the frozen replacement model (``replacement``) every node's effect on a target is the sum
of direct effects along the traced graph. ``trace``:

1. **Local tracing from the target.** One row per example gives the direct effect of every
   node on the target (``direct.frozen_rows``).
2. **Recursion.** Nodes are visited hook by hook, latest first. A node's *influence*
   ``I(s)`` on the target is the sum, over the traced nodes ``t`` it feeds, of
   ``DE(s -> t) * dm/dpre_t``, where ``dm/dpre_t = I(t) / a_t`` for an active feature (its
   activation is its pre-activation) and 0 for an inactive one: the target's units at every
   depth, so one ``node_threshold`` serves all of them, and the value is the direct-effect
   attribution of ``s`` to the target through the traced graph. A node whose mean influence
   over the examples passes ``node_threshold`` is kept, and a kept feature is traced in turn
   (one row per example with a nonzero weight ``dm/dpre_t``), until ``max_depth``.
   Because every node that a node feeds comes later in the forward order, a node's
   influence is complete when it is visited: the local traces merge into one global graph
   as they go.
3. **Edges** ``s -> t`` carry ``DE(s -> t) * dm/dpre_t`` (mean over examples), the target's
   units again, as SFC edges carry the metric's; kept when ``|effect| > edge_threshold``
   and both ends are kept.

Errors, embeddings and frozen MLP outputs are leaves (they have no encoder to trace into);
so are features of a site that reads an MLP output. The result is a ``Circuit`` whose
settings say ``effects: "direct"``; it prunes, saves, renders and evaluates like an SFC
circuit (nodes at frozen hooks have no dictionary to ablate: the evaluator leaves them
alone). Positions must align across examples (templatic aggregation).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.circuit import EDGE_COLUMNS, NODE_COLUMNS, Circuit, sae_ids, typed_nodes
from sfc_plugin.data import read_dataset, tokenize
from sfc_plugin.metrics import resolve_metric
from sfc_plugin.nodes import METRIC_NODE, node_id, parse_node_id
from sfc_plugin.sites import hook_sort_key, make_sites
from sfc_plugin.tracing.direct import Target, TargetSpec, as_specs, frozen_rows, parse_target
from sfc_plugin.tracing.replacement import (
    FrozenState,
    MissingPolicy,
    freeze,
    is_frozen_read,
)
from sfc_plugin.version import __version__

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

BudgetPolicy = Literal["error", "stop"]
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")
_NEVER = 1 << 30


class TraceBudgetError(RuntimeError):
    """More nodes pass the threshold than ``max_nodes`` allows."""


@dataclass
class _Job:
    """Trace one node (or the target): rows for examples with ``weight != 0``."""

    target: Target
    down: str
    weight: Tensor  # [n] dm/dpre of the traced node per example
    depth: int


class _Tracer:
    """Influence accumulators, the edges found so far and the rows run."""

    def __init__(self, state: FrozenState, batch_rows: int, progress: bool):
        self.state = state
        self.batch_rows = batch_rows
        self.progress = progress
        n, p = state.n_examples, state.n_pos
        self.feat = {s.hook_name: torch.zeros(n, p, s.d_sae) for s in state.sites}
        vector_hooks = [s.hook_name for s in state.sites] + list(state.leaves)
        self.vec = {h: torch.zeros(n, p) for h in vector_hooks}
        self.depth_feat = {h: torch.full(t.shape[1:], _NEVER) for h, t in self.feat.items()}
        self.depth_vec = {h: torch.full((p,), _NEVER) for h in self.vec}
        self.edges: list[tuple[str, str, float]] = []
        self.rows = 0

    def run(self, jobs: list[_Job], metric, edge_threshold: float) -> None:
        """All rows of ``jobs``: influences add up, edges over the threshold are kept."""
        rows = [(j, e) for j, job in enumerate(jobs) for e in job.weight.nonzero()[:, 0].tolist()]
        left = [int((job.weight != 0).sum()) for job in jobs]
        acc: dict[int, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}
        n = self.state.n_examples
        device = self.state.model.cfg.device
        for start in tqdm(
            range(0, len(rows), self.batch_rows),
            disable=not self.progress or len(rows) <= self.batch_rows,
            desc="tracing rows",
            leave=False,
        ):
            chunk = rows[start : start + self.batch_rows]
            examples = torch.tensor([e for _, e in chunk], device=device)
            _, leaves = frozen_rows(
                self.state, examples, [jobs[j].target for j, _ in chunk], metric
            )
            feats, vectors = leaves.direct_effects()
            w = torch.stack([jobs[j].weight[e] for j, e in chunk]).cpu()
            ex = examples.cpu()
            for store, effects in ((self.feat, feats), (self.vec, vectors)):
                for hook, de in effects.items():
                    c = de.cpu() * w.reshape(-1, *[1] * (de.dim() - 1))
                    store[hook].index_add_(0, ex, c)
                    effects[hook] = c
            for j in sorted({j for j, _ in chunk}):
                mine = torch.tensor([r for r, (jj, _) in enumerate(chunk) if jj == j])
                f_acc, v_acc = acc.setdefault(j, ({}, {}))
                for into, effects in ((f_acc, feats), (v_acc, vectors)):
                    for hook, c in effects.items():
                        into[hook] = into.get(hook, 0) + c[mine].sum(0)
                left[j] -= len(mine)
                if left[j] == 0:
                    self._flush(jobs[j], *acc.pop(j), n, edge_threshold)
            self.rows += len(chunk)

    def _flush(self, job: _Job, f_acc, v_acc, n: int, edge_threshold: float) -> None:
        for hook, total in f_acc.items():
            mean = total / n
            reached = mean != 0
            self.depth_feat[hook][reached] = self.depth_feat[hook][reached].clamp(max=job.depth + 1)
            for p, f in (mean.abs() > edge_threshold).nonzero().tolist():
                self.edges.append((node_id(hook, f, p), job.down, float(mean[p, f])))
        for hook, total in v_acc.items():
            mean = total / n
            reached = mean != 0
            self.depth_vec[hook][reached] = self.depth_vec[hook][reached].clamp(max=job.depth + 1)
            for p in (mean.abs() > edge_threshold).nonzero()[:, 0].tolist():
                self.edges.append((node_id(hook, None, p), job.down, float(mean[p])))


def trace(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    data,
    target: TargetSpec | Sequence[TargetSpec] = METRIC_NODE,
    *,
    node_threshold: float = 0.1,
    edge_threshold: float = 0.01,
    max_depth: int | None = None,
    max_nodes: int = 1000,
    on_budget: BudgetPolicy = "error",
    missing: MissingPolicy = "error",
    batch_rows: int = 32,
    progress: bool = True,
) -> Circuit:
    """Trace the circuit of direct effects behind ``target`` (module docstring).

    Args:
        model, saes: the model and its dictionaries keyed by the hook each writes
            (transcoders at the MLPs and SAEs at the attention outputs make it exact).
        data: rows as for circuits, all of one token length (positions aligned).
        target: ``"metric"`` (the data's default metric: for pairs, logit(patch answer) -
            logit(clean answer)), a token (its logit), a pair of tokens (their logit
            difference), a feature node id ``hook/f<i>@<pos>`` (its pre-activation), or a
            list of these (their sum: the local traces merge into one graph).
        node_threshold: keep a node whose mean influence on the target exceeds this (the
            target's units; for the metric, those of SFC's node threshold).
        edge_threshold: keep an edge whose mean effect (target's units) exceeds this.
        max_depth: trace kept features at most this many hops from the target (None: all).
        max_nodes: the node budget; ``on_budget="error"`` raises ``TraceBudgetError`` when
            more nodes pass the threshold, ``"stop"`` keeps the largest up to the budget,
            stops tracing and warns (``settings["stopped"]`` says where).
        missing: an MLP without a transcoder: ``"error"`` (one frozen error node per
            position) or ``"refuse"`` (raise, naming it).
        batch_rows: (example, node) rows per frozen forward+backward.

    Returns:
        A ``Circuit`` (nodes with their influence as ``effect``; edges; ``settings`` with
        ``effects="direct"``, the targets, ``rows`` traced and the frozen hooks).
    """
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    for name, value, low in (("max_nodes", max_nodes, 1), ("batch_rows", batch_rows, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_depth is not None and (
        isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1
    ):
        raise ValueError(f"max_depth must be a positive integer or None, got {max_depth!r}")
    if on_budget not in ("error", "stop"):
        raise ValueError(f"on_budget must be 'error' or 'stop', got {on_budget!r}")
    dataset = read_dataset(data)
    batch = tokenize(model, dataset, same_length=True, need_patch=False).tokens
    sites = make_sites(model, saes)
    specs = as_specs(target)
    if not specs:
        raise ValueError("target is an empty list")
    targets = [parse_target(model, sites, t) for t in specs]
    read_of = {s.hook_name: s.read_hook for s in sites}
    latest = max(
        (hook_sort_key(read_of[t.hook_name]) if t.kind == "feature" else (float("inf"), 0, ""))
        for t in targets
    )
    state = freeze(model, saes, batch, missing=missing, crossed=lambda h: hook_sort_key(h) < latest)
    metric = resolve_metric(None, dataset.is_pairs)
    n = state.n_examples
    tracer = _Tracer(state, batch_rows, progress)
    ones = torch.ones(n)
    sink_jobs = [_Job(t, METRIC_NODE, ones, 0) for t in targets if t.kind != "feature"]
    tracer.run(sink_jobs, metric, edge_threshold)
    seeds = {(t.hook_name, t.position, t.feature): t for t in targets if t.kind == "feature"}

    kept: dict[str, float] = {}
    stopped = None
    hooks = sorted(tracer.vec, key=hook_sort_key, reverse=True)
    for hook in tqdm(hooks, disable=not progress, desc="tracing"):
        new: dict[str, float] = {}
        expand: list[tuple[int, int]] = []
        if hook in tracer.feat:
            mean = tracer.feat[hook].mean(0)
            pick = mean.abs() > node_threshold
            for h, p, f in seeds:
                if h == hook:
                    pick[p, f] = True
            for p, f in pick.nonzero().tolist():
                new[node_id(hook, f, p)] = float(mean[p, f])
                expand.append((p, f))
        mean_v = tracer.vec[hook].mean(0)
        for p in (mean_v.abs() > node_threshold).nonzero()[:, 0].tolist():
            new[node_id(hook, None, p)] = float(mean_v[p])
        n_targets = sum(1 for h, p, f in seeds if h == hook)
        if len(kept) + len(new) - n_targets > max_nodes:
            message = (
                f"trace: {len(kept) + len(new) - n_targets} nodes pass node_threshold="
                f"{node_threshold} by {hook} (max_nodes={max_nodes})"
            )
            if on_budget == "error":
                raise TraceBudgetError(
                    message + "; raise node_threshold or max_nodes, or pass on_budget='stop' "
                    "for the graph traced so far"
                )
            room = max_nodes - len(kept)
            best = sorted(new, key=lambda k: -abs(new[k]))[:room]
            kept.update((k, new[k]) for k in best)
            stopped = message + f"; kept the {len(best)} largest there and stopped tracing"
            warnings.warn(stopped, stacklevel=2)
            break
        kept.update(new)
        site = state.site_by_hook.get(hook)
        if site is None or not is_frozen_read(site) or not expand:
            continue
        jobs = []
        acts = state.features[hook]
        for p, f in expand:
            seed = seeds.get((hook, p, f))
            depth = 0 if seed is not None else int(tracer.depth_feat[hook][p, f])
            if seed is None and max_depth is not None and depth >= max_depth:
                continue
            a = acts[:, p, f].cpu()
            infl = tracer.feat[hook][:, p, f]
            weight = torch.where(a > 0, infl / a.clamp(min=1e-30), torch.zeros(()))
            if seed is not None:
                weight = weight + 1.0
            jobs.append(
                _Job(
                    seed or Target(node_id(hook, f, p), "feature", (), (), hook, f, p),
                    node_id(hook, f, p),
                    weight,
                    depth,
                )
            )
        tracer.run(jobs, metric, edge_threshold)

    for (h, p, f), t in seeds.items():
        value = float(state.features[h][:, p, f].mean())
        kept[t.name] = kept.get(t.name, 0.0) + value
    nodes = _node_frame(kept, state)
    keep = set(nodes.node) | {METRIC_NODE}
    edges = pd.DataFrame(tracer.edges, columns=EDGE_COLUMNS)
    edges = edges[edges.upstream.isin(keep) & edges.downstream.isin(keep)]
    edges = edges.groupby(["upstream", "downstream"], as_index=False, sort=False).effect.sum()
    edges = edges.sort_values("effect", key=abs, ascending=False).reset_index(drop=True)
    metric_clean = None
    if any(t.kind == "metric" for t in targets):
        with torch.no_grad():
            metric_clean = float(
                metric(model(batch.clean_tokens, padding_side="right"), batch).mean()
            )
    first = batch.clean_tokens[0, : int(batch.last[0]) + 1].tolist()
    tokenizer = model.tokenizer
    settings = {
        "model": getattr(model.cfg, "model_name", None),
        "saes": sae_ids(saes),
        "method": "direct",
        "effects": "direct",
        "targets": [t.name for t in targets],
        "steps": None,
        "ablation": None,
        "aggregation": "templatic",
        "metric": "default",
        "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
        "max_depth": max_depth,
        "max_nodes": max_nodes,
        "missing": missing,
        "frozen_hooks": sorted(state.leaves, key=hook_sort_key),
        "n_examples": n,
        "rows": tracer.rows,
        "stopped": stopped,
        "metric_clean": metric_clean,
        "tokens": [tokenizer.decode([t]) for t in first] if tokenizer is not None else None,
        "token_ids": first,
        "sfc_plugin_version": __version__,
    }
    return Circuit(nodes, edges[EDGE_COLUMNS], settings)


def _node_frame(kept: Mapping[str, float], state: FrozenState) -> pd.DataFrame:
    frozen = set(state.leaves)
    records = []
    for node, effect in kept.items():
        hook, feature, position = parse_node_id(node)
        m = _BLOCK.match(hook)
        layer = int(m.group(1)) if m else None
        component = (m.group(2) if m else hook).replace("hook_", "")
        kind = "feature" if feature is not None else "error"
        if hook in frozen and not m:
            kind = "embedding"
        records.append((node, hook, layer, component, kind, position, feature, effect))
    frame = pd.DataFrame(records, columns=NODE_COLUMNS)
    return typed_nodes(frame.sort_values("effect", key=abs, ascending=False).reset_index(drop=True))
