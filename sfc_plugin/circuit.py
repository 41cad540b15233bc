"""Circuits: the nodes whose indirect effect passes a threshold and the edges between them.

``discover_circuit`` runs node effects over the data, keeps nodes with
``|effect| > node_threshold`` (at most ``max_nodes``, largest first), computes edge effects
among the kept nodes and into the metric, and keeps edges with ``|effect| > edge_threshold``.
The result is a ``Circuit``: two DataFrames and the settings that made them, saved and loaded
as versioned JSON (schema below), prunable to tighter thresholds without recomputation.

File schema (``Circuit.save``), version 1::

    {"schema": "sfc_plugin.circuit", "version": 1,
     "settings": {...},                       # see Circuit.settings
     "nodes": [{"node", "hook_name", "layer", "component", "kind", "position", "feature",
                "effect"}, ...],
     "edges": [{"upstream", "downstream", "effect"}, ...]}

Node ids are ``blocks.3.hook_mlp_out/f123@5`` (feature 123 at position 5),
``blocks.3.hook_mlp_out/err@5`` (the SAE error), no ``@pos`` when summed over positions, and
``metric`` for the metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from sae_lens import SAE

from sfc_plugin.attribution.edges import run_edge_effects
from sfc_plugin.attribution.effects import NodeEffects, run_node_effects
from sfc_plugin.attribution.run import Ablation, Aggregation, prepare_run
from sfc_plugin.files import read_document, write_document
from sfc_plugin.nodes import METRIC_NODE
from sfc_plugin.version import __version__

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

SCHEMA = "sfc_plugin.circuit"
SCHEMA_VERSION = 1
NODE_COLUMNS = ["node", "hook_name", "layer", "component", "kind", "position", "feature", "effect"]
EDGE_COLUMNS = ["upstream", "downstream", "effect"]


@dataclass
class Circuit:
    """A sparse feature circuit.

    ``nodes``: one row per node (columns ``NODE_COLUMNS``; kind is "feature" or "error",
    position and feature are None where they do not apply), sorted by ``|effect|``.
    ``edges``: ``upstream, downstream, effect`` (downstream may be ``"metric"``).
    ``settings``: how it was made (model, SAE hooks, method, steps, ablation, aggregation,
    thresholds, number of examples, package version).
    """

    nodes: pd.DataFrame
    edges: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Circuit({len(self.nodes)} nodes, {len(self.edges)} edges; "
            f"{s.get('method')}, node_threshold={s.get('node_threshold')}, "
            f"edge_threshold={s.get('edge_threshold')}, {s.get('n_examples')} examples)"
        )

    def prune(
        self, node_threshold: float | None = None, edge_threshold: float | None = None
    ) -> Circuit:
        """A circuit with tighter thresholds (no recomputation). Edges touching a dropped node
        go too. Looser thresholds than the circuit's own need ``discover_circuit`` again."""
        nt = self.settings["node_threshold"] if node_threshold is None else node_threshold
        et = self.settings["edge_threshold"] if edge_threshold is None else edge_threshold
        for name, new in (("node_threshold", nt), ("edge_threshold", et)):
            if new < self.settings[name]:
                raise ValueError(
                    f"{name}={new} is below the circuit's own {self.settings[name]}: the "
                    "nodes or edges under it were never kept; run discover_circuit again"
                )
        nodes = self.nodes[self.nodes.effect.abs() > nt].reset_index(drop=True)
        keep = set(nodes.node) | {METRIC_NODE}
        edges = self.edges[
            (self.edges.effect.abs() > et)
            & self.edges.upstream.isin(keep)
            & self.edges.downstream.isin(keep)
        ].reset_index(drop=True)
        return Circuit(nodes, edges, {**self.settings, "node_threshold": nt, "edge_threshold": et})

    def to_networkx(self):
        """A ``networkx.DiGraph``: node attributes from ``nodes`` (plus the metric node), edge
        attribute ``effect``."""
        import networkx as nx

        graph = nx.DiGraph()
        for row in self.nodes.to_dict("records"):
            graph.add_node(row["node"], **{str(k): v for k, v in row.items() if k != "node"})
        graph.add_node(METRIC_NODE, kind="metric")
        for row in self.edges.itertuples(index=False):
            graph.add_edge(row.upstream, row.downstream, effect=row.effect)
        return graph

    def _repr_html_(self) -> str:
        """Jupyter display: the interactive picture (``sfc_plugin.frontend.render``)."""
        return str(self.show())

    def show(self, **options: Any) -> str:
        """The interactive picture as HTML that Jupyter displays; ``options`` as in
        ``render.render_html`` (``dashboards=``, ``tokens=``, ``max_nodes=``)."""
        from sfc_plugin.frontend.render import CircuitHTML, render_html

        return CircuitHTML(render_html(self, **options))

    def save_html(self, path: str | Path, **options: Any) -> None:
        """Write the interactive picture as a self-contained page (no network needed)."""
        from sfc_plugin.frontend.render import save_html

        save_html(self, path, **options)

    def save_svg(self, path: str | Path, **options: Any) -> None:
        """Write the picture as a standalone SVG (``tokens=``, ``max_nodes=``)."""
        from sfc_plugin.frontend.render import save_svg

        save_svg(self, path, **options)

    def save_png(self, path: str | Path, **options: Any) -> None:
        """Write the picture as a PNG via headless Chromium (``scale=``, ``tokens=``,
        ``max_nodes=``)."""
        from sfc_plugin.frontend.render import save_png

        save_png(self, path, **options)

    def save(self, path: str | Path) -> None:
        """Write the circuit as JSON (schema in the module docstring), atomically."""
        body = {"settings": self.settings, "nodes": _records(self.nodes)}
        write_document(path, SCHEMA, SCHEMA_VERSION, body | {"edges": _records(self.edges)})

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read a circuit saved by ``save``; clear errors for other files and versions."""
        doc = read_document(path, SCHEMA, SCHEMA_VERSION, "circuit", ("settings", "nodes", "edges"))
        nodes = pd.DataFrame(doc["nodes"], columns=NODE_COLUMNS)
        edges = pd.DataFrame(doc["edges"], columns=EDGE_COLUMNS)
        return cls(typed_nodes(nodes), edges.astype({"effect": float}), doc["settings"])


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (NaN/None positions and features become null)."""
    out = []
    for row in frame.to_dict("records"):
        out.append({k: _plain(v) for k, v in row.items()})
    return out


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    item = getattr(value, "item", None)  # numpy / torch scalars
    if item is not None:
        return item()
    return value


def typed_nodes(nodes: pd.DataFrame) -> pd.DataFrame:
    """``nodes`` with the integer columns that may hold None as pandas' nullable Int64 and
    effect as float."""
    for col in ("layer", "position", "feature"):
        nodes[col] = pd.array(nodes[col].tolist(), dtype="Int64")
    return nodes.astype({"effect": float})


def discover_circuit(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    data,
    *,
    method: Literal["atp", "ig"] = "ig",
    steps: int = 10,
    node_threshold: float = 0.1,
    edge_threshold: float = 0.01,
    aggregation: Aggregation = "templatic",
    metric: Callable | None = None,
    ablation: Ablation = "patch",
    max_nodes: int | None = None,
    batch_size: int = 16,
    max_batch_rows: int | None = None,
    effects: NodeEffects | None = None,
    gradient_cache_bytes: int = 2**30,
    progress: bool = True,
) -> Circuit:
    """Discover the sparse feature circuit of ``model`` with ``saes`` on ``data``.

    Node and edge effects as in ``node_effects`` / ``edge_effects`` (same arguments);
    ``node_threshold`` and ``edge_threshold`` are absolute; ``max_nodes`` caps the node count
    (largest ``|effect|`` first). ``effects``: node effects already computed with these
    settings on this data (skips that pass). The node pass keeps each batch's gradient terms
    (up to ``gradient_cache_bytes`` in all, on the model's device) for the edge pass, so IG
    gradients are computed once; 0 recomputes them. Returns a ``Circuit``.
    """
    return circuit_and_effects(
        model,
        saes,
        data,
        method=method,
        steps=steps,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        aggregation=aggregation,
        metric=metric,
        ablation=ablation,
        max_nodes=max_nodes,
        batch_size=batch_size,
        max_batch_rows=max_batch_rows,
        effects=effects,
        gradient_cache_bytes=gradient_cache_bytes,
        progress=progress,
    )[0]


def circuit_and_effects(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    data,
    *,
    method: Literal["atp", "ig"] = "ig",
    steps: int = 10,
    node_threshold: float = 0.1,
    edge_threshold: float = 0.01,
    aggregation: Aggregation = "templatic",
    metric: Callable | None = None,
    ablation: Ablation = "patch",
    max_nodes: int | None = None,
    batch_size: int = 16,
    max_batch_rows: int | None = None,
    effects: NodeEffects | None = None,
    gradient_cache_bytes: int = 2**30,
    choose_threshold: Callable[[NodeEffects], float] | None = None,
    progress: bool = True,
) -> tuple[Circuit, NodeEffects]:
    """``discover_circuit``, also returning the node effects it computed (or was given),
    for callers that reuse them (threshold sweeps). ``choose_threshold``: called with the
    node effects before the edge pass (whose cached gradients it keeps); the node threshold
    it returns replaces ``node_threshold`` (e.g. ``smallest_faithful_threshold`` on
    validation pairs)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if max_nodes is not None and (not isinstance(max_nodes, int) or max_nodes < 1):
        raise ValueError(f"max_nodes must be a positive integer or None, got {max_nodes!r}")
    if method not in ("atp", "ig"):
        raise ValueError(f"method must be 'atp' or 'ig' for circuits, got {method!r}")
    run = prepare_run(
        model,
        saes,
        data,
        method=method,
        steps=steps,
        metric=metric,
        ablation=ablation,
        aggregation=aggregation,
        batch_size=batch_size,
        max_batch_rows=max_batch_rows,
        cache_bytes=gradient_cache_bytes if effects is None else 0,
    )
    if effects is None:
        effects = run_node_effects(model, run, progress=progress)
    else:
        given = (effects.method, effects.ablation, effects.aggregation, effects.steps)
        wanted = (method, ablation, aggregation, steps if method == "ig" else None)
        if given != wanted:
            raise ValueError(
                f"effects were computed with (method, ablation, aggregation, steps) = {given}, "
                f"not {wanted}"
            )
    if choose_threshold is not None:
        node_threshold = float(choose_threshold(effects))
    table = effects.to_frame()
    nodes = table[table.effect.abs() > node_threshold]
    if max_nodes is not None:
        nodes = nodes.head(max_nodes)
    nodes = nodes.reset_index(drop=True)
    edges = pd.DataFrame(columns=EDGE_COLUMNS)
    if len(nodes):
        edges = run_edge_effects(model, run, list(nodes.node), effects=effects, progress=progress)
        edges = edges[edges.effect.abs() > edge_threshold].reset_index(drop=True)
    settings = {
        "model": getattr(model.cfg, "model_name", None),
        "saes": sae_ids(saes),
        "method": method,
        "steps": steps if method == "ig" else None,
        "ablation": ablation,
        "aggregation": aggregation,
        "metric": "default" if metric is None else getattr(metric, "__name__", repr(metric)),
        "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
        "max_nodes": max_nodes,
        "n_examples": effects.n_examples,
        "metric_clean": effects.metric_clean,
        "sfc_plugin_version": __version__,
    }
    return Circuit(typed_nodes(nodes[NODE_COLUMNS].copy()), edges, settings), effects


def sae_ids(saes: Mapping[str, SAE]) -> dict[str, dict[str, Any]]:
    """Per hook: what identifies the SAE (release / id / architecture / width) for the record."""
    out = {}
    for hook, sae in saes.items():
        meta = sae.cfg.metadata
        out[hook] = {
            "release": meta.get("release") if hasattr(meta, "get") else None,
            "sae_id": meta.get("sae_id") if hasattr(meta, "get") else None,
            "architecture": sae.cfg.architecture(),
            "d_sae": sae.cfg.d_sae,
        }
    return out
