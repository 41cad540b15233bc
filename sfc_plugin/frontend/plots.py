"""Figures for evaluation results (matplotlib): faithfulness/completeness curves and the
AtP/IG-vs-exact scatter. Each function returns a ``matplotlib.figure.Figure``; save it with
``fig.savefig("x.png")``. No display is needed (the figures are made without pyplot)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import pandas as pd
from matplotlib.figure import Figure

_KIND_STYLE: dict[Hashable, tuple[str | None, str]] = {
    "features": ("tab:blue", "o"),
    "neurons": ("tab:orange", "s"),
}


def plot_faithfulness_curve(
    curve: pd.DataFrame | Mapping[str, pd.DataFrame], title: str | None = None
) -> Figure:
    """Faithfulness (left) and completeness (right) against node count, log x-axis, one line
    per kind (features, neurons). ``curve``: a ``faithfulness_curve`` table, or several keyed
    by a label (e.g. task), drawn as one column of panels each."""
    curves = {"": curve} if isinstance(curve, pd.DataFrame) else dict(curve)
    fig = Figure(figsize=(9, 3.2 * len(curves)), layout="constrained")
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for row, (label, table) in enumerate(curves.items()):
        for col, column in enumerate(("faithfulness", "completeness")):
            ax = axes[row][col]
            for kind, part in table.groupby("kind", sort=False):
                part = part[part.nodes > 0].sort_values("nodes")
                color, marker = _KIND_STYLE.get(kind, (None, "^"))
                ax.plot(part.nodes, part[column], marker=marker, ms=3, color=color, label=kind)
            ax.set_xscale("log")
            ax.axhline(1.0, color="0.7", lw=0.8, ls="--")
            ax.axhline(0.0, color="0.7", lw=0.8)
            ax.set_xlabel("nodes in circuit")
            ax.set_ylabel(column)
            ax.set_title(f"{label}: {column}" if label else column)
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_approximation(table: pd.DataFrame, title: str | None = None) -> Figure:
    """AtP and IG effects against exact patching, one panel per site kind (component), with
    the diagonal. ``table``: an ``approximation_check`` result."""
    components = list(dict.fromkeys(table.component))
    fig = Figure(figsize=(3.4 * len(components), 3.4), layout="constrained")
    axes = fig.subplots(1, len(components), squeeze=False)[0]
    for ax, component in zip(axes, components):
        part = table[table.component == component]
        lo = float(min(part[["atp", "ig", "exact"]].min().min(), 0))
        hi = float(max(part[["atp", "ig", "exact"]].max().max(), 0))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--")
        ax.scatter(part.exact, part.atp, s=12, label="AtP", color="tab:red", alpha=0.7)
        ax.scatter(part.exact, part.ig, s=12, label="IG", color="tab:blue", alpha=0.7)
        ax.set_xlabel("exact patching effect")
        ax.set_ylabel("estimate")
        ax.set_title(component)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
