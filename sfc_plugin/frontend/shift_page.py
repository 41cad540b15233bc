"""The SHIFT report page (``experiment.run_shift`` writes it): the table beside the paper's,
the run's settings and times, and every circuit feature with the judge's decision, its reason
and its dashboard. One self-contained document (``templates/shift.html``,
``assets/report.css``); nothing in it needs a network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from markupsafe import Markup

from sfc_plugin.frontend.dashboards import Dashboard, circuitsvis_script
from sfc_plugin.frontend.templating import render_template

__all__ = ["shift_report_html"]


def _percent(frame: pd.DataFrame) -> Markup:
    return Markup(frame.to_html(float_format=lambda x: f"{100 * x:.1f}", na_rep=""))


def shift_report_html(
    table: pd.DataFrame,
    features: pd.DataFrame,
    *,
    settings: Mapping[str, Any],
    timings: Mapping[str, float],
    title: str,
    references: Mapping[str, pd.DataFrame] | None = None,
    dashboards: Mapping[str, Dashboard] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The page as a whole HTML document.

    ``table``: the SHIFT table (accuracies as fractions; column ``n_ablated``); ``features``:
    the circuit's features with ``node, effect, spurious, reason, judge``; ``references``:
    other tables to show beside it (the paper's), same columns; ``dashboards``: node ->
    dashboard shown under each feature."""
    accuracy = [c for c in table.columns if c != "n_ablated"]
    shown = table[accuracy]
    others = [(name, _percent(ref)) for name, ref in (references or {}).items()]
    rows = [(k, v) for k, v in settings.items()]
    rows += [(f"time: {k}", f"{v:.1f} s") for k, v in timings.items()]
    items = []
    for row in features.itertuples():
        board = (dashboards or {}).get(str(row.node))
        items.append(
            dict(
                node=row.node,
                effect=float(row.effect),  # type: ignore[arg-type]
                spurious=bool(row.spurious),
                reason=row.reason,
                judge=row.judge,
                dashboard=Markup(board.to_html(bundle=False)) if board else None,
            )
        )
    return render_template(
        "shift.html",
        title=title,
        table=_percent(shown),
        n_ablated=Markup(table[["n_ablated"]].to_html()) if "n_ablated" in table else None,
        references=others,
        rows=rows,
        features=items,
        notes=list(notes),
        bundle=Markup(circuitsvis_script() if dashboards else ""),
    )
