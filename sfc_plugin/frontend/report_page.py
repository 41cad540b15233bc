"""The circuit report page (``experiments.report.circuit_report`` writes it): a summary table,
the interactive circuit (``render.render_html``), and the faithfulness/completeness curves as an
inline PNG with their table. One self-contained document (``templates/report.html``,
``assets/report.css``); nothing in it needs a network.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import pandas as pd
from markupsafe import Markup

from sfc_plugin.frontend.plots import plot_faithfulness_curve
from sfc_plugin.frontend.render import CircuitData, render_html
from sfc_plugin.frontend.templating import render_template

__all__ = ["figure_png", "report_html"]


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _choice_rows(choice: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """How the node threshold was chosen (``circuit_report(target_faithfulness=)``)."""
    if not choice:
        return []
    how = f"smallest circuit with faithfulness >= {choice['target_faithfulness']}"
    if not choice["reached"]:
        how += " (not reached: the most faithful of the sweep)"
    return [
        ("node threshold chosen on", f"{choice['validation_pairs']} validation pairs: {how}"),
        ("faithfulness (validation)", f"{choice['validation_faithfulness']:.3f}"),
    ]


def report_html(
    circuit: CircuitData,
    *,
    faithfulness: float,
    completeness: float,
    curve: pd.DataFrame | None,
    timings: Mapping[str, float],
    title: str,
    dashboards: Any = None,
) -> str:
    """The report page (a whole HTML document): ``circuit`` with its held-out scores, the
    ``faithfulness_curve`` table ``curve`` (None: no curve section), seconds per stage
    ``timings``; ``dashboards``: hover information for the circuit (``render.render_html``)."""
    s = circuit.settings
    rows = [
        ("model", s.get("model")),
        ("SAE sites", len(s.get("saes") or {})),
        ("method", f"{s['method']}" + (f" ({s['steps']} steps)" if s.get("steps") else "")),
        ("training pairs", s.get("n_examples")),
        ("node / edge threshold", f"{s['node_threshold']:.4g} / {s['edge_threshold']:.4g}"),
        (
            "nodes",
            f"{len(circuit.nodes)} ({int((circuit.nodes.kind == 'error').sum())} error nodes)",
        ),
        ("edges", len(circuit.edges)),
        *_choice_rows(s.get("threshold_choice")),
        ("faithfulness (held out)", f"{faithfulness:.3f}"),
        ("completeness (held out)", f"{completeness:.3f}"),
    ]
    rows += [(f"time: {k}", f"{v:.1f} s") for k, v in timings.items()]
    png = table = None
    if curve is not None:
        png = base64.b64encode(figure_png(plot_faithfulness_curve(curve))).decode()
        table = Markup(curve.to_html(index=False, float_format=lambda x: f"{x:.4g}"))
    return render_template(
        "report.html",
        title=title,
        rows=rows,
        circuit=Markup(render_html(circuit, dashboards=dashboards)),
        curve_png=png,
        curve_table=table,
    )
