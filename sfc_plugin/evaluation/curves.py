"""Faithfulness and completeness against circuit size (METHOD.md section 5): one set of node
effects per kind, circuits ``{|effect| > threshold}`` scored by one ``Evaluator``, for feature
circuits and for neuron circuits (identity dictionaries at the same hooks, no error nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from sae_lens import SAE
from tqdm.auto import tqdm

from sfc_plugin.attribution.effects import NodeEffects, node_effects
from sfc_plugin.attribution.run import Aggregation
from sfc_plugin.data import Dataset
from sfc_plugin.dictionaries.neurons import neuron_saes
from sfc_plugin.evaluation.scores import ErrorPolicy, EvalAblation, Evaluator
from sfc_plugin.nodes import is_error

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

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


@dataclass
class ThresholdChoice:
    """What ``smallest_faithful_threshold`` chose: the node threshold, the size and
    faithfulness of its circuit on the selection data, whether that reached the target, and
    the sweep (``threshold``, ``nodes``, ``faithfulness``; smallest circuit first)."""

    threshold: float
    nodes: int
    faithfulness: float
    target: float
    reached: bool
    sweep: pd.DataFrame


def smallest_faithful_threshold(
    effects: NodeEffects,
    evaluator: Evaluator,
    target: float = 0.5,
    thresholds: Sequence[float] | None = None,
) -> ThresholdChoice:
    """The largest node threshold whose circuit ``{|effect| > threshold}`` has faithfulness
    at least ``target`` on ``evaluator``'s data: the smallest threshold circuit that explains
    the behaviour there. Use held-out *validation* pairs for ``evaluator``, not the pairs the
    circuit will be scored on, or the choice overfits the score.

    ``thresholds`` (default ``default_thresholds(effects, n=33)``: ratio 1.33 between
    neighbours) are tried from the largest down and the sweep stops at the first that
    reaches ``target``; thresholds that keep the same nodes as the one before are skipped.
    If none reaches it, the most faithful circuit of the sweep is chosen (``reached`` False).
    """
    table = effects.to_frame()
    size = table.effect.abs()
    chosen = default_thresholds(effects, n=33) if thresholds is None else list(thresholds)
    rows: list[tuple[float, int, float]] = []
    previous = -1
    for t in sorted(chosen, reverse=True):
        keep = size > t
        n_kept = int(keep.sum())
        if n_kept == previous:
            continue
        previous = n_kept
        nodes = list(table.node[keep])
        rows.append((t, evaluator.count_nodes(nodes), evaluator.score(nodes)))
        if rows[-1][2] >= target:
            break
    if not rows:
        raise ValueError("no threshold to try: thresholds is empty")
    sweep = pd.DataFrame(rows, columns=["threshold", "nodes", "faithfulness"])
    reached = bool(sweep.faithfulness.iloc[-1] >= target)
    best = sweep.iloc[-1 if reached else int(sweep.faithfulness.to_numpy().argmax())]
    return ThresholdChoice(
        threshold=float(best.threshold),
        nodes=int(best.nodes),
        faithfulness=float(best.faithfulness),
        target=target,
        reached=reached,
        sweep=sweep,
    )


def faithfulness_curve(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    data_train: Dataset | str | Path | Sequence[dict[str, Any]],
    data_test: Dataset | str | Path | Sequence[dict[str, Any]],
    thresholds: Sequence[float] | None = None,
    *,
    points: int = 16,
    decades: float = 4.0,
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
    evaluators: Mapping[str, Evaluator] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Faithfulness and completeness against circuit size, for feature circuits and (with
    ``neurons``) neuron circuits at the same hooks (``neuron_saes``).

    For each kind, node effects are computed once on ``data_train`` (``method``, ``steps``,
    ``discovery_ablation``; or taken from ``effects[kind]``), and for each threshold the
    circuit ``{|effect| > threshold}`` is scored on ``data_test`` (``ablation``,
    ``start_layer``, ``errors`` as in ``faithfulness``), sharing m(M) and m(empty), by one
    ``Evaluator`` per kind (or ``evaluators[kind]``, built by the caller on ``data_test``
    with these dictionaries and settings).
    ``thresholds``: absolute values, or None for ``default_thresholds`` of each kind (their
    effect scales differ): ``points`` values over ``decades`` below the largest ``|effect|``.

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
        ev = (evaluators or {}).get(kind)
        if ev is not None and (ev.errors, ev.templatic) != (errors, aggregation == "templatic"):
            raise ValueError(
                f"evaluators[{kind!r}] scores with errors={ev.errors!r}, templatic="
                f"{ev.templatic}; the curve asks for errors={errors!r}, {aggregation!r}"
            )
        if ev is None:
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
        chosen = (
            default_thresholds(eff, points, decades) if thresholds is None else list(thresholds)
        )
        for t in tqdm(chosen, desc=f"faithfulness curve ({kind})", disable=not progress):
            nodes = list(table.node[table.effect.abs() > t])
            s = ev.scores(nodes)
            errs = ev.count_nodes([n for n in nodes if is_error(n)])
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


def interpolated_nodes(
    curve: pd.DataFrame, level: float, column: str = "faithfulness"
) -> float | None:
    """The circuit size at which one curve (``nodes`` and ``column``) first reaches
    ``level``, log-linear between the sweep points around the crossing (None if it never
    does; the smallest size if the first point already does)."""
    part = curve[curve.nodes > 0].sort_values("nodes").reset_index(drop=True)
    above = part.index[part[column] >= level]
    if len(above) == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(part.nodes[0])
    lo, hi = part.iloc[i - 1], part.iloc[i]
    t = (level - lo[column]) / (hi[column] - lo[column])
    return float(np.exp(np.log(lo.nodes) + t * (np.log(hi.nodes) - np.log(lo.nodes))))
