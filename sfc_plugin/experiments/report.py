"""One circuit, end to end, as a self-contained HTML report: discover on training pairs,
score on held-out pairs, sweep the threshold (features against neurons) and write the page.

``circuit_report`` is what ``make demo`` (``sfc_plugin.demo``) and ``sfc circuit``
(``sfc_plugin.cli``) run. Every stage is timed; the page (``frontend.report_page``) holds the
summary, the interactive circuit, the faithfulness/completeness curves as an inline PNG and
the curve table. Nothing in it needs a network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from sae_lens import SAE

from sfc_plugin.attribution.effects import NodeEffects
from sfc_plugin.attribution.run import Aggregation
from sfc_plugin.circuit import Circuit, circuit_and_effects
from sfc_plugin.data import Dataset, read_dataset
from sfc_plugin.evaluation import (
    ErrorPolicy,
    Evaluator,
    ThresholdChoice,
    faithfulness_curve,
    nodes_to_reach,
    smallest_faithful_threshold,
)
from sfc_plugin.frontend.report_page import report_html

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class CircuitReport:
    """What ``circuit_report`` made: the circuit, its scores on the test data, the curve
    (None if not swept), how its node threshold was chosen on validation pairs (None: it
    was given), timings in seconds per stage, and the page's path."""

    circuit: Circuit
    faithfulness: float
    completeness: float
    curve: pd.DataFrame | None
    choice: ThresholdChoice | None = None
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = None

    def summary(self) -> str:
        """A few lines for a terminal."""
        c = self.circuit
        n_err = int((c.nodes.kind == "error").sum())
        lines = [
            f"circuit: {len(c.nodes)} nodes ({len(c.nodes) - n_err} features, {n_err} errors), "
            f"{len(c.edges)} edges ({c.settings['method']}, node |IE| > "
            f"{c.settings['node_threshold']:.4g}, edge |IE| > "
            f"{c.settings['edge_threshold']:.4g}, {c.settings['n_examples']} training pairs)",
        ]
        if (ch := self.choice) is not None:
            lines.append(
                f"node threshold chosen on validation pairs: the smallest circuit with "
                f"faithfulness >= {ch.target} there"
                + ("" if ch.reached else " (none reached it: the most faithful one)")
                + f" ({ch.nodes} nodes, validation faithfulness {ch.faithfulness:.3f})"
            )
        lines.append(
            f"on held-out pairs: faithfulness {self.faithfulness:.3f}, "
            f"completeness {self.completeness:.3f}"
        )
        if self.curve is not None:
            for level in (0.5, 0.8):
                reach = nodes_to_reach(self.curve, level)
                parts = [f"{k} {v if v is not None else 'not reached'}" for k, v in reach.items()]
                lines.append(f"nodes for faithfulness >= {level}: " + ", ".join(parts))
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        if self.path is not None:
            lines.append(f"report: {self.path}")
        return "\n".join(lines)


def circuit_report(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    data_train: Dataset | str | Path | Sequence[dict[str, Any]],
    data_test: Dataset | str | Path | Sequence[dict[str, Any]],
    out: str | Path | None,
    *,
    method: Literal["atp", "ig"] = "ig",
    steps: int = 10,
    node_threshold: float = 0.1,
    data_validation: Dataset | str | Path | Sequence[dict[str, Any]] | None = None,
    target_faithfulness: float | None = None,
    edge_threshold: float = 0.01,
    aggregation: Aggregation = "templatic",
    metric: Callable | None = None,
    errors: ErrorPolicy = "keep",
    start_layer: int = 0,
    curve: bool = True,
    neurons: bool = True,
    thresholds: Sequence[float] | None = None,
    curve_points: int = 16,
    curve_decades: float = 4.0,
    dashboards: Any = None,
    title: str = "Sparse feature circuit",
    batch_size: int = 16,
    progress: bool = True,
) -> CircuitReport:
    """Discover a circuit on ``data_train`` and score it on ``data_test``; write the HTML page
    to ``out`` (None: no page).

    With ``target_faithfulness``, ``node_threshold`` is not used: the threshold is the
    largest whose circuit reaches that faithfulness on ``data_validation``
    (``smallest_faithful_threshold``), pairs that are neither the training nor the test
    pairs, so the test score stays held out.

    Node effects and their gradients are computed once and shared by the circuit's nodes,
    its edges and the feature curve, and one evaluator scores the circuit and the feature
    curve; with
    ``neurons`` the curve also has neuron circuits (one more node-effects pass).
    ``thresholds``: the curve's node thresholds; None: ``curve_points`` log-spaced from the
    largest ``|effect|`` down ``curve_decades``, per kind (``default_thresholds``).
    ``dashboards``: hover information for the circuit page (``render.render_html``).
    Other arguments as in ``discover_circuit`` and ``faithfulness``.
    """
    if target_faithfulness is not None and data_validation is None:
        raise ValueError("target_faithfulness needs data_validation (pairs to choose on)")
    timings: dict[str, float] = {}
    common: dict[str, Any] = dict(metric=metric, aggregation=aggregation, batch_size=batch_size)
    options: dict[str, Any] = dict(errors=errors, start_layer=start_layer, progress=False)
    choices: list[ThresholdChoice] = []
    choose: Callable[[NodeEffects], float] | None = None
    n_validation = 0
    if target_faithfulness is not None and data_validation is not None:
        t0 = time.perf_counter()
        validation = Evaluator(model, saes, data_validation, **options, **common)
        n_validation = len(validation.tokens.dataset)
        timings["validation ablation values"] = time.perf_counter() - t0
        target = target_faithfulness

        def on_validation(effects: NodeEffects) -> float:
            t = time.perf_counter()
            choices.append(smallest_faithful_threshold(effects, validation, target))
            timings["threshold choice (validation)"] = time.perf_counter() - t
            return choices[-1].threshold

        choose = on_validation

    t0 = time.perf_counter()
    circuit, effects = circuit_and_effects(
        model,
        saes,
        data_train,
        method=method,
        steps=steps,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        choose_threshold=choose,
        progress=progress,
        **common,
    )
    first = read_dataset(data_train).examples[0].clean_prefix
    circuit.settings["tokens"] = model.to_str_tokens(first)
    choice = choices[0] if choices else None
    if choice is not None:
        circuit.settings["threshold_choice"] = {
            "target_faithfulness": choice.target,
            "reached": choice.reached,
            "validation_faithfulness": choice.faithfulness,
            "validation_pairs": n_validation,
        }
    timings["circuit (nodes and edges)"] = (
        time.perf_counter() - t0 - timings.get("threshold choice (validation)", 0.0)
    )
    t0 = time.perf_counter()
    ev = Evaluator(model, saes, data_test, **options, **common)
    scores = ev.scores(circuit)
    timings["evaluation"] = time.perf_counter() - t0
    table = None
    if curve:
        t0 = time.perf_counter()
        table = faithfulness_curve(
            model,
            saes,
            data_train,
            data_test,
            thresholds,
            points=curve_points,
            decades=curve_decades,
            neurons=neurons,
            method=method,
            steps=steps,
            errors=errors,
            start_layer=start_layer,
            effects={"features": effects},
            evaluators={"features": ev},
            progress=progress,
            **common,
        )
        timings["curves"] = time.perf_counter() - t0
    report = CircuitReport(
        circuit, scores.faithfulness, scores.completeness, table, choice, timings
    )
    if out is not None:
        report.path = Path(out)
        report.path.parent.mkdir(parents=True, exist_ok=True)
        page = report_html(
            circuit,
            faithfulness=report.faithfulness,
            completeness=report.completeness,
            curve=table,
            timings=timings,
            title=title,
            dashboards=dashboards,
        )
        report.path.write_text(page, encoding="utf-8")
    return report
