"""Faithfulness and completeness of a circuit (METHOD.md section 5; paper section 3.2).

A circuit ``C`` is a set of nodes. ``m(C)`` is the mean metric over the evaluation data when
every node *outside* ``C`` is ablated, at every site from ``start_layer`` on, in one forward:

    at each site, in forward order:  f = encode(x),  eps = x - decode(f)
                                     f_i   <- ablated value   for feature nodes not in C
                                     eps   <- ablated value   for error nodes not in C
                                     output decode(f) + eps

Each site encodes its *current* input, so ablations upstream propagate (as in the reference
implementation's ``run_with_ablations``). Then

    faithfulness(C) = (m(C) - m(empty)) / (m(M) - m(empty))
    completeness(C) = faithfulness(complement of C)

with ``M`` the model untouched (no site replaced) and ``empty`` every node of every evaluated
site ablated. Both are 1 for the full model and 0 for the empty circuit by construction.

Ablated values: ``"mean"`` is the node's mean over the clean inputs of the evaluation data,
per position for templatic circuits (nodes ``...@pos``) and over all real tokens otherwise;
``"zero"`` is zero. Error-node policies (``errors=``):

* ``"keep"``: error nodes are nodes like features: those in ``C`` keep their values, the
  others are ablated (the reference's ``handle_errors='default'``);
* ``"remove"``: every error node is ablated, in ``C`` or not (feature-only circuits);
* ``"remove_attn_mlp"``: attention- and MLP-output errors are ablated; residual-stream
  errors behave as under ``"keep"`` (the paper's Figure 3 variant).

The policy applies after complementing, so ``C`` and its complement are scored alike.
Sites in blocks below ``start_layer`` are left untouched (given to the circuit for free);
the paper evaluates from layer 2 on. Sites outside the blocks (embeddings) count as layer 0.

``faithfulness_curve`` sweeps the node threshold with one set of node effects, for feature
circuits and for neuron circuits (identity dictionaries at the same hooks, no error nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.circuit import Circuit
from sfc_plugin.data import Batch, Dataset, TokenizedDataset, read_dataset, tokenize
from sfc_plugin.dictionaries import neuron_saes
from sfc_plugin.effects import (
    Aggregation,
    NodeEffects,
    _check_choice,
    _mean_values,
    check_node_id,
    node_effects,
)
from sfc_plugin.metrics import Metric, resolve_metric
from sfc_plugin.sites import Site, compose, encode, make_sites

ErrorPolicy = Literal["keep", "remove", "remove_attn_mlp"]
EvalAblation = Literal["mean", "zero"]
CircuitLike = Circuit | Iterable[str]


@dataclass(frozen=True)
class CircuitScores:
    """Mean metrics and the two scores of one circuit on one dataset.

    ``m_model``: nothing ablated; ``m_empty``: every evaluated node ablated; ``m_circuit``:
    nodes outside the circuit ablated; ``m_complement``: nodes inside it ablated;
    ``n_nodes``: the circuit's nodes at the evaluated sites.
    """

    m_model: float
    m_empty: float
    m_circuit: float
    m_complement: float
    n_nodes: int

    @property
    def faithfulness(self) -> float:
        return _share(self.m_circuit, self.m_model, self.m_empty)

    @property
    def completeness(self) -> float:
        return _share(self.m_complement, self.m_model, self.m_empty)


def _share(m: float, m_model: float, m_empty: float) -> float:
    """``(m - m(empty)) / (m(M) - m(empty))``: the share of the behaviour ``m`` retains."""
    return (m - m_empty) / (m_model - m_empty)


def _count(keep: dict[str, tuple[Tensor, Tensor]]) -> int:
    """Number of kept nodes in per-site masks."""
    return sum(int(f.sum()) + int(e.sum()) for f, e in keep.values())


class Evaluator:
    """Scores any number of circuits on one dataset, sharing the tokenization, the ablation
    values, ``m(M)`` and ``m(empty)`` (what a threshold sweep needs).

    Args: as ``faithfulness``; ``aggregation`` says whether circuits are templatic (node ids
    with ``@pos``, ablation values per position) or summed over positions.
    """

    def __init__(
        self,
        model,
        saes: Mapping[str, SAE],
        data: Dataset | str | Path | Sequence[dict[str, Any]],
        *,
        aggregation: Aggregation = "templatic",
        ablation: EvalAblation = "mean",
        start_layer: int = 0,
        errors: ErrorPolicy = "keep",
        metric: Callable | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ):
        _check_choice("ablation", ablation, ("mean", "zero"))
        _check_choice("errors", errors, ("keep", "remove", "remove_attn_mlp"))
        _check_choice("aggregation", aggregation, ("templatic", "sum"))
        if not isinstance(start_layer, int) or start_layer < 0:
            raise ValueError(f"start_layer must be a non-negative integer, got {start_layer!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.templatic = aggregation == "templatic"
        self.errors = errors
        self.batch_size = batch_size
        self.progress = progress
        self.all_sites = make_sites(model, saes)
        self.sites = [s for s in self.all_sites if (s.layer or 0) >= start_layer]
        if not self.sites:
            raise ValueError(f"no SAE site is at or after start_layer={start_layer}")
        dataset = read_dataset(data)
        self.tokens: TokenizedDataset = tokenize(
            model, dataset, same_length=self.templatic, need_patch=False
        )
        self.metric: Metric = resolve_metric(metric, dataset.is_pairs)
        batches = self.tokens.batches(batch_size)
        if ablation == "mean":
            self.ablated = _mean_values(model, self.sites, batches, self.templatic)
        else:
            self.ablated = {
                s.hook_name: (torch.zeros(1, 1, s.d_sae), torch.zeros(1, 1, s.d_in))
                for s in self.sites
            }
        self.m_model = self._mean_metric(None)
        self.m_empty = self._mean_metric(self._masks([], complement=False))

    def scores(self, circuit: CircuitLike) -> CircuitScores:
        """Mean metric with the circuit kept and with it ablated, plus m(M) and m(empty)."""
        kept = self._kept(_node_ids(circuit))
        keep = self._with_policy(kept, complement=False)
        return CircuitScores(
            m_model=self.m_model,
            m_empty=self.m_empty,
            m_circuit=self._mean_metric(keep),
            m_complement=self._mean_metric(self._with_policy(kept, complement=True)),
            n_nodes=_count(keep),
        )

    def score(self, circuit: CircuitLike, complement: bool = False) -> float:
        """Faithfulness of ``circuit`` (of its complement, if ``complement``)."""
        return _share(self.metric_with(circuit, complement), self.m_model, self.m_empty)

    def count_nodes(self, circuit: CircuitLike) -> int:
        """Nodes of ``circuit`` at the evaluated sites (from ``start_layer`` on), counted under
        the error policy (removed errors do not count)."""
        return _count(self._masks(_node_ids(circuit), complement=False))

    def metric_with(self, circuit: CircuitLike, complement: bool = False) -> float:
        """Mean metric with every node outside ``circuit`` (inside, if ``complement``) ablated."""
        return self._mean_metric(self._masks(_node_ids(circuit), complement))

    def _masks(self, nodes: Sequence[str], complement: bool) -> dict[str, tuple[Tensor, Tensor]]:
        """Per evaluated site, boolean keep-masks for features ``[pos, d_sae]`` and errors
        ``[pos]`` (``[1, ...]`` when summed over positions: one mask for every position)."""
        return self._with_policy(self._kept(nodes), complement)

    def _kept(self, nodes: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
        """The circuit's own nodes as masks (as ``_masks``, before complement and policy)."""
        n_pos = self.tokens.n_pos if self.templatic else 1
        device = self.model.cfg.device
        keep = {
            s.hook_name: (
                torch.zeros(n_pos, s.d_sae, dtype=torch.bool, device=device),
                torch.zeros(n_pos, dtype=torch.bool, device=device),
            )
            for s in self.sites
        }
        by_hook = {s.hook_name: s for s in self.all_sites}
        for node in nodes:
            hook, feature, pos = check_node_id(node, by_hook, self.tokens.n_pos, self.templatic)
            if hook not in keep:  # a site below start_layer: untouched anyway
                continue
            where = 0 if pos is None else pos
            if feature is None:
                keep[hook][1][where] = True
            else:
                keep[hook][0][where, feature] = True
        return keep

    def _with_policy(
        self, kept: dict[str, tuple[Tensor, Tensor]], complement: bool
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """``kept`` (or its complement) with the error policy applied, as new masks."""
        out = {}
        for site in self.sites:
            f, e = kept[site.hook_name]
            if complement:
                f, e = ~f, ~e
            if self.errors == "remove" or (
                self.errors == "remove_attn_mlp" and site.component in ("attn_out", "mlp_out")
            ):
                e = torch.zeros_like(e)
            out[site.hook_name] = (f, e)
        return out

    @torch.no_grad()
    def _mean_metric(self, keep: dict[str, tuple[Tensor, Tensor]] | None) -> float:
        """Mean metric over the data with the given keep-masks (None: the model untouched)."""
        hooks = [] if keep is None else [(s.hook_name, self._hook(s, keep)) for s in self.sites]
        total = 0.0
        n = self.tokens.n_batches(self.batch_size)
        for batch in tqdm(
            self.tokens.batches(self.batch_size),
            total=n,
            disable=not self.progress or n <= 1,
            desc="evaluating circuit",
            leave=False,
        ):
            total += float(self._batch_metric(batch, hooks).sum())
        return total / len(self.tokens.dataset)

    def _batch_metric(self, batch: Batch, hooks) -> Tensor:
        with self.model.hooks(fwd_hooks=hooks):
            logits = self.model(batch.clean_tokens, padding_side="right")
        return self.metric(logits, batch)

    def _hook(self, site: Site, keep: dict[str, tuple[Tensor, Tensor]]):
        keep_f, keep_e = keep[site.hook_name]
        mean_f, mean_e = self.ablated[site.hook_name]
        n_pos = keep_f.shape[0]

        def hook(x: Tensor, hook) -> Tensor:
            f, e = encode(site, x)
            p = x.shape[1] if n_pos > 1 else 1
            m_f, m_e = mean_f[:, :p].to(f), mean_e[:, :p].to(e)
            f = torch.where(keep_f[None, :p], f, m_f)
            e = torch.where(keep_e[None, :p, None], e, m_e)
            return compose(site, f, e, x)

        return hook


def _node_ids(circuit: CircuitLike) -> list[str]:
    if isinstance(circuit, Circuit):
        return list(circuit.nodes.node)
    if isinstance(circuit, str):
        raise TypeError("circuit must be a Circuit or a list of node ids, not one string")
    return list(circuit)


def _aggregation(circuit: CircuitLike, aggregation: Aggregation | None) -> Aggregation:
    """The circuit's own aggregation unless given: from its settings, else from its node ids
    (``@pos`` means templatic); an empty list of ids defaults to templatic."""
    if aggregation is not None:
        return aggregation
    if isinstance(circuit, Circuit) and circuit.settings.get("aggregation"):
        return circuit.settings["aggregation"]
    nodes = _node_ids(circuit)
    return "sum" if nodes and all("@" not in n for n in nodes) else "templatic"


def _evaluator(model, saes, circuit: CircuitLike, data, aggregation, **options: Any) -> Evaluator:
    return Evaluator(model, saes, data, aggregation=_aggregation(circuit, aggregation), **options)


def circuit_scores(
    model,
    saes: Mapping[str, SAE],
    circuit: CircuitLike,
    data: Dataset | str | Path | Sequence[dict[str, Any]],
    *,
    ablation: EvalAblation = "mean",
    start_layer: int = 0,
    errors: ErrorPolicy = "keep",
    aggregation: Aggregation | None = None,
    metric: Callable | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> CircuitScores:
    """Faithfulness and completeness of ``circuit`` together (the four mean metrics).
    Arguments as in ``faithfulness``."""
    options = dict(
        ablation=ablation,
        start_layer=start_layer,
        errors=errors,
        metric=metric,
        batch_size=batch_size,
        progress=progress,
    )
    return _evaluator(model, saes, circuit, data, aggregation, **options).scores(circuit)


def faithfulness(
    model,
    saes: Mapping[str, SAE],
    circuit: CircuitLike,
    data: Dataset | str | Path | Sequence[dict[str, Any]],
    *,
    ablation: EvalAblation = "mean",
    start_layer: int = 0,
    errors: ErrorPolicy = "keep",
    aggregation: Aggregation | None = None,
    metric: Callable | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> float:
    """``(m(C) - m(empty)) / (m(M) - m(empty))``: how much of the behaviour the circuit alone
    carries, every other node ablated (module docstring).

    Args:
        model, saes: as for ``discover_circuit``; every node's site must be in ``saes``.
        circuit: a ``Circuit`` or node ids (``blocks.3.hook_mlp_out/f12@5``, ``.../err@5``).
        data: evaluation data (ideally held out from discovery): pairs or single inputs.
        ablation: ``"mean"`` (over the data's clean inputs, per position when templatic) or
            ``"zero"``.
        start_layer: sites in blocks below it are never ablated.
        errors: ``"keep"``, ``"remove"`` or ``"remove_attn_mlp"`` (module docstring).
        aggregation: ``"templatic"`` or ``"sum"``; default: the circuit's own.
        metric: as in ``node_effects`` (default: logit difference for pairs).
        batch_size: examples per forward.
    """
    options = dict(
        ablation=ablation,
        start_layer=start_layer,
        errors=errors,
        metric=metric,
        batch_size=batch_size,
        progress=progress,
    )
    return _evaluator(model, saes, circuit, data, aggregation, **options).score(circuit)


def completeness(
    model,
    saes: Mapping[str, SAE],
    circuit: CircuitLike,
    data: Dataset | str | Path | Sequence[dict[str, Any]],
    *,
    ablation: EvalAblation = "mean",
    start_layer: int = 0,
    errors: ErrorPolicy = "keep",
    aggregation: Aggregation | None = None,
    metric: Callable | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> float:
    """Faithfulness of the complement of ``circuit`` (its nodes ablated, all others kept):
    near 0 when the circuit is needed for the behaviour. Arguments as in ``faithfulness``."""
    options = dict(
        ablation=ablation,
        start_layer=start_layer,
        errors=errors,
        metric=metric,
        batch_size=batch_size,
        progress=progress,
    )
    ev = _evaluator(model, saes, circuit, data, aggregation, **options)
    return ev.score(circuit, complement=True)


CURVE_COLUMNS = [
    "kind",
    "threshold",
    "nodes",
    "error_nodes",
    "faithfulness",
    "completeness",
    "m_circuit",
    "m_complement",
    "m_model",
    "m_empty",
]


def default_thresholds(effects: NodeEffects, n: int = 16, decades: float = 4.0) -> list[float]:
    """``n`` thresholds spaced evenly in log scale from just under the largest ``|effect|``
    (a one-node circuit) down ``decades`` orders of magnitude."""
    top = max(
        max(float(t.abs().max()) for t in effects.features.values()),
        max(float(t.abs().max()) for t in effects.errors.values()),
    )
    if top == 0:
        return [0.0]
    return [top * 0.999 * 10 ** (-decades * i / (n - 1)) for i in range(n)]


def faithfulness_curve(
    model,
    saes: Mapping[str, SAE],
    data_train: Dataset | str | Path | Sequence[dict[str, Any]],
    data_test: Dataset | str | Path | Sequence[dict[str, Any]],
    thresholds: Sequence[float] | None = None,
    *,
    neurons: bool = True,
    method: Literal["exact", "atp", "ig"] = "ig",
    steps: int = 10,
    discovery_ablation: Literal["patch", "zero", "mean"] = "patch",
    ablation: EvalAblation = "mean",
    start_layer: int = 0,
    errors: ErrorPolicy = "keep",
    aggregation: Aggregation = "templatic",
    metric: Callable | None = None,
    batch_size: int = 16,
    effects: Mapping[str, NodeEffects] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Faithfulness and completeness against circuit size, for feature circuits and (with
    ``neurons``) neuron circuits at the same hooks (``neuron_saes``).

    For each kind, node effects are computed once on ``data_train`` (``method``, ``steps``,
    ``discovery_ablation``; or taken from ``effects[kind]``), and for each threshold the
    circuit ``{|effect| > threshold}`` is scored on ``data_test`` (``ablation``,
    ``start_layer``, ``errors`` as in ``faithfulness``), sharing m(M) and m(empty).
    ``thresholds``: absolute values, or None for ``default_thresholds`` of each kind (their
    effect scales differ).

    Returns one row per (kind, threshold): ``CURVE_COLUMNS`` (``nodes`` counts the nodes at
    evaluated sites, ``error_nodes`` the error nodes among them).
    """
    kinds = {"features": saes}
    if neurons:
        kinds["neurons"] = neuron_saes(model, saes)
    rows = []
    for kind, dictionaries in kinds.items():
        eff = (effects or {}).get(kind)
        if eff is None:
            eff = node_effects(
                model,
                dictionaries,
                data_train,
                method=method,
                steps=steps,
                ablation=discovery_ablation,
                aggregation=aggregation,
                metric=metric,
                batch_size=batch_size,
                progress=progress,
            )
        table = eff.to_frame()
        ev = Evaluator(
            model,
            dictionaries,
            data_test,
            aggregation=aggregation,
            ablation=ablation,
            start_layer=start_layer,
            errors=errors,
            metric=metric,
            batch_size=batch_size,
            progress=False,
        )
        chosen = default_thresholds(eff) if thresholds is None else list(thresholds)
        for t in tqdm(chosen, desc=f"faithfulness curve ({kind})", disable=not progress):
            nodes = list(table.node[table.effect.abs() > t])
            s = ev.scores(nodes)
            errs = ev.count_nodes([n for n in nodes if "/err" in n])
            rows.append(
                (
                    kind,
                    t,
                    s.n_nodes,
                    errs,
                    s.faithfulness,
                    s.completeness,
                    s.m_circuit,
                    s.m_complement,
                    s.m_model,
                    s.m_empty,
                )
            )
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def nodes_to_reach(curve: pd.DataFrame, level: float, column: str = "faithfulness") -> dict:
    """Per kind, the fewest nodes among the curve's circuits whose ``column`` is at least
    ``level`` (None if none reaches it)."""
    out = {}
    for kind, part in curve.groupby("kind", sort=False):
        hit = part[part[column] >= level]
        out[kind] = int(hit.nodes.min()) if len(hit) else None
    return out
