"""Pictures of circuits: an interactive offline HTML page, a standalone SVG and a PNG.

Layout, as in the figures of Marks et al.::

                           ( metric )                    <- the sink, at the top
    L1 resid_post   [f14] [f2]  △       |  [f9]  △       <- one row per site, in forward order
    L1 mlp_out       △  [f1]            |   △               (``hook_sort_key``), early layers
    L0 resid_post   [f12] △ [+3]        |  [f0] [f5] △      at the bottom
                         1               |      4         <- templatic circuits: one column per
                        cat              |     dog           token position (index and token)

* Features are rectangles labelled ``f<index>``, SAE errors triangles, ``+n`` dashed boxes stand
  for nodes collapsed away; fill blue for a positive indirect effect and red for a negative
  one, shade by ``|effect|`` relative to the largest ``|effect|`` of the circuit.
* Edges are curves from the top of the upstream node to the bottom of the downstream one,
  width and opacity by ``|effect|`` (relative to the largest edge), colour by sign.
* Templatic circuits (``position`` set) have one column per token position, labelled with
  the position and, when ``tokens=`` or ``settings["tokens"]`` gives the clean prompt, its
  token (then every position of the prompt gets a column). Summed circuits (``position`` None)
  spread each site's nodes over one centred row.
* Inside a cell (site x position) nodes are ordered by the weighted mean x of their
  neighbours (one upward and one downward sweep), which untangles most crossings.
* Above ``max_nodes`` circuit nodes the layout collapses: each cell keeps its ``k`` largest
  nodes (the largest ``k`` that fits) and one ``+n`` aggregate carrying the rest, whose
  effect and edges are the sums of its members'.

The HTML (``render_html``; ``Circuit._repr_html_`` / ``show`` / ``save_html``) embeds that SVG
with a small inline script: hover a node to highlight its edges and see its id, effect,
strongest edges and, given ``dashboards=``, its top activating contexts and promoted /
suppressed output tokens; click to pin. Two sliders hide nodes and edges below a chosen
``|effect|``. The URL fragment ``#node_threshold=..&edge_threshold=..&select=<node id>`` sets
them on load. Nothing is fetched from the network: the page is one self-contained file, put
together by ``templates/circuit.html`` (and ``templates/page.html`` for a whole document) from
the script ``assets/circuit.js``, the style ``assets/circuit.css``, the SVG and the data.
CircuitsVis is only inlined (once, via ``dashboards.circuitsvis_script``) when hover HTML
given by the caller uses it.

``render_svg`` (``save_svg``) is the same picture without script, with ``<title>`` tooltips;
``save_png`` screenshots it (``templates/figure.html``) with headless Chromium.

Everything here reads a circuit through ``CircuitData`` (``sfc_plugin.circuit.Circuit`` is one).
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeGuard

import pandas as pd
from markupsafe import Markup

from sfc_plugin.frontend.templating import render_template
from sfc_plugin.nodes import METRIC_NODE
from sfc_plugin.sites import hook_sort_key

__all__ = [
    "MAX_NODES",
    "CircuitData",
    "CircuitHTML",
    "Dashboards",
    "Layout",
    "Shape",
    "find_chromium",
    "layout",
    "render_html",
    "render_svg",
    "run_chromium",
    "save_html",
    "save_png",
    "save_svg",
]

MAX_NODES = 60
"""Circuits with more nodes than this are collapsed by default."""


class CircuitData(Protocol):
    """What the pictures read from a circuit (``sfc_plugin.circuit.Circuit``): ``nodes``
    (columns ``node, hook_name, kind, position, feature, effect``), ``edges`` (``upstream,
    downstream, effect``) and ``settings``."""

    nodes: pd.DataFrame
    edges: pd.DataFrame
    settings: dict[str, Any]


class FeatureIndexLike(Protocol):
    """What ``dashboards.FeatureIndex`` offers hover panels."""

    def dashboard(self, site: str, feature: int, *, n_contexts: int, n_outputs: int) -> Any: ...


Dashboards = Mapping[str, Any] | Callable[[str], Any] | FeatureIndexLike
"""Hover information: a mapping node id -> dict / HTML string / object with ``to_dict()`` (ids
with ``@pos`` fall back to the summed id), a callable node id -> the same, or a feature index
(``dashboards.FeatureIndex``). Dict fields are those of ``Dashboard.to_dict()``: ``contexts``
(``tokens``, ``values``, ``focus``), ``promoted`` / ``suppressed`` (``token``, ``value``),
``firing_rate``, ``max_activation``, plus an optional ``label``."""

ShapeKind = Literal["feature", "error", "more", "metric"]

# Geometry (px).
NODE_W, NODE_H, SLOT = 44, 22, 50  # a node and the horizontal space it takes
ROW_H = 78  # vertical distance between site rows
PAD = 14  # padding around columns and the picture
LEGEND_H = 26  # band at the top holding the legend
LABEL_H = 34  # band at the bottom holding the column labels
LEGEND_W = 600  # width the legend needs
CHAR_W = 6.6  # estimated width of a character at the label font size
CAPTION_CHARS = 9  # a feature's caption (its dashboard label) is cut to this many characters

POSITIVE = (33, 102, 172)  # blue
NEGATIVE = (178, 24, 43)  # red
N_CONTEXTS, N_OUTPUTS = 5, 8  # what hover panels show from a feature index


@dataclass
class Shape:
    """One drawn node: a circuit node, a ``+n`` aggregate, or the metric."""

    id: str
    kind: ShapeKind
    site: str | None
    position: int | None
    feature: int | None
    effect: float
    members: list[tuple[str, float]] = field(default_factory=list)  # aggregates only
    x: float = 0.0
    y: float = 0.0

    @property
    def label(self) -> str:
        """The text drawn in the shape."""
        return {
            "feature": f"f{self.feature}",
            "error": "ε",
            "more": f"+{len(self.members)}",
            "metric": "metric",
        }[self.kind]


@dataclass
class Layout:
    """Where everything goes (y grows downwards, as in SVG)."""

    shapes: dict[str, Shape]
    edges: list[tuple[str, str, float]]  # ascending |effect|, aggregates' edges summed
    rows: list[tuple[str, float]]  # label, y of each site, first site (bottom) first
    columns: list[tuple[float, float, list[str]]]  # centre x, width, label lines
    tokens: list[str] | None
    width: float
    height: float
    node_scale: float  # max |effect| of the circuit's nodes
    edge_scale: float  # max |effect| of its edges
    collapsed: int  # circuit nodes drawn inside aggregates


def _row_label(hook_name: str) -> str:
    """``blocks.3.hook_mlp_out`` -> ``L3 mlp_out``."""
    m = re.match(r"^blocks\.(\d+)\.(.*)$", hook_name)
    if m is None:
        return hook_name.replace("hook_", "")
    return f"L{m[1]} {m[2].replace('hook_', '')}"


def _token_label(token: str, limit: int = 12) -> str:
    """A token as a column label: control characters visible, at most ``limit`` characters."""
    token = token.replace("\n", "↵").replace("\t", "⇥")
    return token if len(token) <= limit else token[: limit - 1] + "…"


def _optional_int(value: Any) -> int | None:
    """A nullable integer cell (None, NaN or pd.NA -> None)."""
    return None if pd.isna(value) else int(value)


def _collapse_limit(sizes: list[int], max_nodes: int | None) -> int | None:
    """Nodes kept per cell: None if everything fits, else the largest ``k >= 1`` with
    ``sum(min(k, size)) <= max_nodes``."""
    if max_nodes is None or sum(sizes) <= max_nodes:
        return None
    k = max(sizes)
    while k > 1 and sum(min(k, s) for s in sizes) > max_nodes:
        k -= 1
    return k


def layout(
    circuit: CircuitData, *, tokens: Sequence[str] | None = None, max_nodes: int | None = MAX_NODES
) -> Layout:
    """Place the nodes and edges of ``circuit`` (see the module docstring)."""
    frame = circuit.nodes
    prompt: list[str] | None = (
        list(tokens) if tokens is not None else circuit.settings.get("tokens")
    )
    sites = sorted(set(frame.hook_name), key=hook_sort_key)
    cells: dict[tuple[str, int | None], list[Shape]] = {}
    node_columns = ["node", "kind", "hook_name", "position", "feature", "effect"]
    by_size = frame.sort_values("effect", key=abs, ascending=False)[node_columns]
    for node, kind, hook_name, position, feature, effect in by_size.itertuples(index=False):
        shape = Shape(
            node,
            "error" if kind == "error" else "feature",
            hook_name,
            _optional_int(position),
            _optional_int(feature),
            float(effect),
        )
        cells.setdefault((hook_name, shape.position), []).append(shape)

    # Collapse: the k largest nodes of each cell, the rest into one aggregate.
    alias: dict[str, str] = {}
    limit = _collapse_limit([len(c) for c in cells.values()], max_nodes)
    for (site, pos), cell in cells.items():
        if limit is None or len(cell) <= limit:
            continue
        rest = cell[limit:]
        agg_id = f"{site}/+{len(rest)}" + ("" if pos is None else f"@{pos}")
        members = [(s.id, s.effect) for s in rest]
        agg = Shape(agg_id, "more", site, pos, None, sum(e for _, e in members), members)
        alias.update((s.id, agg_id) for s in rest)
        cells[(site, pos)] = cell[:limit] + [agg]

    shapes = {s.id: s for cell in cells.values() for s in cell}
    metric = shapes[METRIC_NODE] = Shape(METRIC_NODE, "metric", None, None, None, math.nan)
    summed: dict[tuple[str, str], float] = {}
    for upstream, downstream, effect in circuit.edges[
        ["upstream", "downstream", "effect"]
    ].itertuples(index=False):
        src, dst = str(upstream), str(downstream)  # node ids
        key = (alias.get(src, src), alias.get(dst, dst))
        missing = [n for n in key if n not in shapes]
        if missing:
            raise ValueError(
                f"edge {upstream} -> {downstream}: {missing[0]!r} is not a node of the circuit"
            )
        summed[key] = summed.get(key, 0.0) + float(effect)
    edges = sorted(((u, d, e) for (u, d), e in summed.items()), key=lambda t: abs(t[2]))

    # Columns: positions (None, the summed "position", first); with tokens, the whole prompt.
    positions = {pos for _, pos in cells}
    if prompt and positions != {None}:
        positions |= set(range(len(prompt)))
    left = PAD + max([len(_row_label(s)) * CHAR_W for s in sites] + [40]) + PAD
    x = left
    columns: list[tuple[float, float, list[str]]] = []
    column_x: dict[int | None, float] = {}
    for pos in sorted(positions, key=lambda p: -1 if p is None else p):
        if pos is None:
            lines = [] if positions == {None} else ["all"]
        else:
            token = [_token_label(prompt[pos])] if prompt and pos < len(prompt) else []
            lines = [str(pos), *token]
        most = max(len(cells.get((s, pos), [])) for s in sites) if sites else 0
        width = max(most * SLOT, max(map(len, lines), default=0) * CHAR_W + 8, 24) + PAD
        column_x[pos] = x + width / 2
        columns.append((x + width / 2, width, lines))
        x += width
    width = max(x + PAD, LEGEND_W)

    # Rows, bottom (first site) to top; the metric above them.
    metric.x, metric.y = (left + x) / 2, LEGEND_H + PAD + NODE_H / 2
    row_y = {site: metric.y + ROW_H * (len(sites) - i) for i, site in enumerate(sites)}
    rows = [(_row_label(site), row_y[site]) for site in sites]
    for (site, _), cell in cells.items():
        for s in cell:
            s.y = row_y[site]

    def place(site: str) -> None:
        for (site_, pos), cell in cells.items():
            if site_ == site:
                for i, s in enumerate(cell):
                    s.x = column_x[pos] + (i - (len(cell) - 1) / 2) * SLOT

    for site in sites:
        place(site)
    up: dict[str, list[tuple[str, float]]] = {}
    down: dict[str, list[tuple[str, float]]] = {}
    for u, d, e in edges:
        up.setdefault(d, []).append((u, abs(e)))
        if d != METRIC_NODE:
            down.setdefault(u, []).append((d, abs(e)))

    def centre(s: Shape, neighbours: dict[str, list[tuple[str, float]]]) -> tuple[bool, float]:
        near = neighbours.get(s.id, [])
        total = sum(w for _, w in near)
        mean = sum(shapes[n].x * w for n, w in near) / total if total > 0 else s.x
        return s.kind == "more", mean

    for order, neighbours in ((sites, up), (sites[::-1], down)):
        for site in order:
            for (site_, _), cell in cells.items():
                if site_ == site:
                    cell.sort(key=lambda s, nb=neighbours: centre(s, nb))
            place(site)

    bottom = rows[0][1] if rows else metric.y
    real = [s.effect for s in shapes.values() if s.kind in ("feature", "error")]
    return Layout(
        shapes=shapes,
        edges=edges,
        rows=rows,
        columns=columns,
        tokens=prompt,
        width=width,
        height=bottom + NODE_H / 2 + LABEL_H + PAD,
        node_scale=max((abs(e) for e in real), default=0.0),
        edge_scale=max((abs(e) for *_, e in edges), default=0.0),
        collapsed=len(alias),
    )


# ----------------------------------------------------------------------------------- SVG


def _mix(effect: float, scale: float, floor: float = 0.0) -> tuple[str, float]:
    """The colour of ``effect`` (white -> blue/red by ``|effect| / scale``, at least
    ``floor``) and that fraction."""
    t = min(abs(effect) / scale, 1.0) if scale > 0 else 1.0
    t = floor + (1 - floor) * t
    base = POSITIVE if effect >= 0 else NEGATIVE
    return _hex(tuple(round(255 + (c - 255) * t) for c in base)), t


def _hex(rgb: tuple[int, ...]) -> str:
    """``(r, g, b)`` -> ``#rrggbb``."""
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _shape_svg(s: Shape, scale: float, caption: str = "") -> str:
    """A node: its shape, its label, a tooltip and the ``caption`` under it (a feature's
    dashboard label), grouped with its id and effect."""
    w, h = NODE_W, NODE_H
    x0, y0 = s.x - w / 2, s.y - h / 2
    text_colour = "#222"
    if s.kind == "metric":
        body = f'<ellipse cx="{s.x:.1f}" cy="{s.y:.1f}" rx="{w * 0.8:.0f}" ry="{h / 2 + 2:.0f}" '
        body += 'fill="#fff" stroke="#333" stroke-width="1.5"/>'
        tip = "metric"
    elif s.kind == "more":
        body = (
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w}" height="{h}" rx="3" fill="#f0f0f0" '
            'stroke="#888" stroke-dasharray="3 2"/>'
        )
        tip = f"{len(s.members)} more nodes, total effect {s.effect:+.4g}"
    else:
        fill, t = _mix(s.effect, scale, floor=0.08)
        stroke = _hex(POSITIVE if s.effect >= 0 else NEGATIVE)
        text_colour = "#fff" if t > 0.55 else "#222"
        if s.kind == "feature":
            body = f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w}" height="{h}" rx="3" '
        else:
            tw = h * 1.25
            points = f"{s.x - tw / 2:.1f},{y0 + h:.1f} {s.x + tw / 2:.1f},{y0 + h:.1f} "
            points += f"{s.x:.1f},{y0 - 2:.1f}"
            body = f'<polygon points="{points}" '
        body += f'fill="{fill}" stroke="{stroke}" stroke-width="1.2"/>'
        tip = f"{s.id}: effect {s.effect:+.4g}"
    dy = 6 if s.kind == "error" else 4
    size = 10 if s.kind == "error" else 11
    label = (
        f'<text x="{s.x:.1f}" y="{s.y + dy:.1f}" text-anchor="middle" font-size="{size}" '
        f'fill="{text_colour}">{html.escape(s.label)}</text>'
    )
    if caption:
        label += (
            f'<text class="sfc-caption" x="{s.x:.1f}" y="{s.y + h / 2 + 10:.1f}" '
            f'text-anchor="middle" font-size="9" fill="#555">'
            f"{html.escape(_token_label(caption, CAPTION_CHARS))}</text>"
        )
        tip += f" ({caption})"
    effect = "" if math.isnan(s.effect) else f' data-effect="{s.effect:.6g}"'
    return (
        f'<g class="sfc-node" data-node="{html.escape(s.id)}" data-kind="{s.kind}"{effect}>'
        f"<title>{html.escape(tip)}</title>{body}{label}</g>"
    )


def _edge_svg(shapes: dict[str, Shape], up: str, down: str, effect: float, scale: float) -> str:
    """A cubic curve from the top of ``up`` to the bottom of ``down``."""
    a, b = shapes[up], shapes[down]
    x1, y1 = a.x, a.y - NODE_H / 2
    x2, y2 = b.x, b.y + NODE_H / 2 + (2 if b.kind == "metric" else 0)
    my = (y1 + y2) / 2
    t = min(abs(effect) / scale, 1.0) if scale > 0 else 1.0
    colour = _hex(POSITIVE if effect >= 0 else NEGATIVE)
    return (
        f'<path class="sfc-edge" data-up="{html.escape(up)}" data-down="{html.escape(down)}" '
        f'data-effect="{effect:.6g}" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{my:.1f} {x2:.1f},{my:.1f} '
        f'{x2:.1f},{y2:.1f}" fill="none" stroke="{colour}" stroke-width="{0.6 + 5.4 * t:.2f}" '
        f'stroke-opacity="{0.2 + 0.75 * t:.2f}">'
        f"<title>{html.escape(f'{up} → {down}: {effect:+.4g}')}</title></path>"
    )


def _legend_svg(x: float, y: float) -> str:
    """Effect colours and node shapes, one line."""
    parts = []
    for colour, text in ((_hex(POSITIVE), "positive effect"), (_hex(NEGATIVE), "negative effect")):
        parts.append(
            f'<rect class="sfc-legend" x="{x:.0f}" y="{y - 9:.0f}" width="12" height="12" '
            f'rx="2" fill="{colour}"/><text x="{x + 16:.0f}" y="{y + 1:.0f}">{text}</text>'
        )
        x += 18 + len(text) * CHAR_W + 14
    parts.append(
        f'<rect class="sfc-legend" x="{x:.0f}" y="{y - 9:.0f}" width="18" height="12" rx="2" '
        f'fill="none" stroke="#555"/><text x="{x + 22:.0f}" y="{y + 1:.0f}">feature</text>'
    )
    x += 22 + 7 * CHAR_W + 14
    parts.append(
        f'<polygon class="sfc-legend" points="{x:.0f},{y + 3:.0f} {x + 14:.0f},{y + 3:.0f} '
        f'{x + 7:.0f},{y - 9:.0f}" fill="none" stroke="#555"/>'
        f'<text x="{x + 18:.0f}" y="{y + 1:.0f}">SAE error</text>'
    )
    parts.append(
        f'<text x="{x + 18 + 9 * CHAR_W + 14:.0f}" y="{y + 1:.0f}" fill="#666">'
        "shade, width: |effect|</text>"
    )
    return f'<g font-size="11" fill="#333">{"".join(parts)}</g>'


def _svg(lay: Layout, captions: Mapping[str, str] | None = None) -> str:
    """The picture as one ``<svg>`` element (no script); ``captions``: node id -> the
    text under it."""
    captions = captions or {}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width:.0f}" '
        f'height="{lay.height:.0f}" viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" '
        'font-family="Helvetica, Arial, sans-serif" class="sfc-svg">',
        f'<rect class="sfc-background" width="{lay.width:.0f}" height="{lay.height:.0f}" '
        'fill="#fff"/>',
    ]
    top = LEGEND_H + PAD + NODE_H
    label_y = lay.rows[0][1] + NODE_H / 2 + 18 if lay.rows else top
    for i, (cx, w, lines) in enumerate(lay.columns):
        if len(lay.columns) > 1 and i % 2 == 0:
            out.append(
                f'<rect class="sfc-band" x="{cx - w / 2:.1f}" y="{top + PAD:.1f}" '
                f'width="{w:.1f}" height="{label_y - top - PAD + 20:.1f}" fill="#f5f6f8"/>'
            )
        for j, line in enumerate(lines):
            style = 'fill="#888" font-size="10"' if j == 0 else 'fill="#222" font-size="12"'
            out.append(
                f'<text x="{cx:.1f}" y="{label_y + 13 * j:.1f}" text-anchor="middle" {style}>'
                f"{html.escape(line)}</text>"
            )
    for label, y in lay.rows:
        out.append(
            f'<text x="{PAD}" y="{y + 4:.1f}" font-size="12" fill="#444">'
            f"{html.escape(label)}</text>"
        )
    out.append(_legend_svg(PAD, PAD + 8))
    out += [_edge_svg(lay.shapes, u, d, e, lay.edge_scale) for u, d, e in lay.edges]
    out += [_shape_svg(s, lay.node_scale, captions.get(s.id, "")) for s in lay.shapes.values()]
    out.append("</svg>")
    return "\n".join(out)


def render_svg(
    circuit: CircuitData,
    *,
    dashboards: Dashboards | None = None,
    tokens: Sequence[str] | None = None,
    max_nodes: int | None = MAX_NODES,
) -> str:
    """The circuit as a standalone SVG document (no script; tooltips as ``<title>``), each
    feature captioned with its dashboard's label when ``dashboards`` knows it."""
    lay = layout(circuit, tokens=tokens, max_nodes=max_nodes)
    captions = _captions(lay, _node_infos(lay, dashboards))
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + _svg(lay, captions)


def save_svg(circuit: CircuitData, path: str | Path, **options: Any) -> None:
    """Write ``render_svg(circuit, **options)`` to ``path``."""
    Path(path).write_text(render_svg(circuit, **options), encoding="utf-8")


# ---------------------------------------------------------------------------------- HTML


class CircuitHTML(str):
    """HTML text that Jupyter displays as HTML (``Circuit.show()`` returns one)."""

    def _repr_html_(self) -> str:
        return str(self)


def _summed_id(node: str) -> str:
    """``site/f3@5`` -> ``site/f3``: dashboards are per feature, not per position."""
    return node.split("@", 1)[0]


def _is_feature_index(dashboards: object) -> TypeGuard[FeatureIndexLike]:
    return hasattr(dashboards, "dashboard")


def _hover_info(dashboards: Dashboards, s: Shape) -> dict[str, Any] | str | None:
    """What ``dashboards`` knows about node ``s``: a normalised dict, an HTML string, or None."""
    if isinstance(dashboards, Mapping):
        info = dashboards.get(s.id, dashboards.get(_summed_id(s.id)))
    elif _is_feature_index(dashboards):
        if s.kind != "feature":
            return None
        assert s.site is not None and s.feature is not None  # feature shapes have both
        try:
            info = dashboards.dashboard(
                s.site, s.feature, n_contexts=N_CONTEXTS, n_outputs=N_OUTPUTS
            )
        except (KeyError, IndexError):  # site not in the index
            return None
    elif callable(dashboards):
        info = dashboards(s.id)
    else:
        raise TypeError(
            "dashboards must be a mapping node id -> info, a callable node id -> info, or a "
            f"feature index with .dashboard(site, feature); got {type(dashboards).__name__}"
        )
    if info is None or isinstance(info, str):
        return info
    if hasattr(info, "to_dict"):
        info = info.to_dict()
    if not isinstance(info, Mapping):
        raise TypeError(f"hover info for {s.id} is a {type(info).__name__}, not a dict or HTML")
    return _info_fields(info)


def _info_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a hover panel shows (``Dashboard.to_dict()`` names): label, firing_rate,
    max_activation, contexts (tokens, values, focus), promoted and suppressed (token, value)."""
    out: dict[str, Any] = {}
    for key in ("label", "firing_rate", "max_activation"):
        if info.get(key) is not None:
            out[key] = info[key]
    contexts = []
    for c in info.get("contexts") or []:
        tokens = list(c["tokens"])
        values = [float(v) for v in c.get("values") or [0.0] * len(tokens)]
        contexts.append({"tokens": tokens, "values": values, "focus": c.get("focus")})
    if contexts:
        out["contexts"] = contexts
    for key in ("promoted", "suppressed"):
        effects = [{"token": t["token"], "value": float(t["value"])} for t in info.get(key) or []]
        if effects:
            out[key] = effects
    return out


def _node_infos(lay: Layout, dashboards: Dashboards | None) -> dict[str, dict[str, Any] | str]:
    """What ``dashboards`` knows about each feature and error node drawn (see
    ``_hover_info``); nodes it knows nothing about are left out."""
    if dashboards is None:
        return {}
    infos = {}
    for s in lay.shapes.values():
        if s.kind in ("feature", "error") and (info := _hover_info(dashboards, s)):
            infos[s.id] = info
    return infos


def _captions(lay: Layout, infos: Mapping[str, dict[str, Any] | str]) -> dict[str, str]:
    """Node id -> the label its hover info gives (features only; HTML info has none)."""
    return {
        node: str(info["label"])
        for node, info in infos.items()
        if lay.shapes[node].kind == "feature" and isinstance(info, Mapping) and info.get("label")
    }


def _settings_line(circuit: CircuitData) -> str:
    """How the circuit was made, in one line."""
    s = circuit.settings
    parts = [
        f"{k}={s[k]}"
        for k in ("model", "method", "aggregation", "ablation", "node_threshold", "edge_threshold")
        if s.get(k) is not None
    ]
    if s.get("n_examples") is not None:
        parts.append(f"{s['n_examples']} examples")
    return ", ".join(parts)


def render_html(
    circuit: CircuitData,
    *,
    dashboards: Dashboards | None = None,
    tokens: Sequence[str] | None = None,
    max_nodes: int | None = MAX_NODES,
    page: bool = False,
) -> str:
    """The interactive picture as an HTML fragment (``page=True``: a whole document).

    ``dashboards``: optional hover information per node (see ``Dashboards``); ``tokens``: the
    clean prompt's tokens for the column labels (default ``circuit.settings["tokens"]``);
    ``max_nodes``: collapse above this many nodes (None: never).
    """
    lay = layout(circuit, tokens=tokens, max_nodes=max_nodes)
    infos = _node_infos(lay, dashboards)
    nodes: dict[str, dict[str, Any]] = {}
    panels: list[tuple[str, Markup]] = []  # (node id, the caller's HTML)
    for s in lay.shapes.values():
        entry: dict[str, Any] = {"kind": s.kind, "site": s.site, "position": s.position}
        if s.kind != "metric":
            entry["effect"] = s.effect
        if s.position is not None and lay.tokens and s.position < len(lay.tokens):
            entry["token"] = lay.tokens[s.position]
        if s.members:
            entry["members"] = s.members
        info = infos.get(s.id)
        if isinstance(info, str):
            entry["html"] = True
            panels.append((s.id, Markup(info)))
        elif info:
            entry["info"] = info
        nodes[s.id] = entry
    shown = sum(s.kind in ("feature", "error") for s in lay.shapes.values())
    settings = _settings_line(circuit)
    bundle = ""
    if any("CircuitsVis." in info for _, info in panels):
        from sfc_plugin.frontend.dashboards import circuitsvis_script

        bundle = circuitsvis_script()
    body = render_template(
        "circuit.html",
        n_nodes=len(circuit.nodes),
        n_edges=len(circuit.edges),
        shown=shown,
        collapsed=lay.collapsed,
        max_nodes=max_nodes,
        settings=settings,
        svg=Markup(_svg(lay, _captions(lay, infos))),
        panels=panels,
        bundle=Markup(bundle),
        data={"nodes": nodes, "edges": [list(e) for e in lay.edges]},
    )
    if not page:
        return body
    return render_template("page.html", title=f"Circuit: {settings}", body=Markup(body))


def save_html(circuit: CircuitData, path: str | Path, **options: Any) -> None:
    """Write the interactive picture as a self-contained page (works offline)."""
    Path(path).write_text(render_html(circuit, page=True, **options), encoding="utf-8")


# ------------------------------------------------------------------------------- Chromium


def find_chromium() -> str | None:
    """A headless-capable Chromium or Chrome: ``$SFC_CHROMIUM``, else the first of
    ``chromium``, ``chromium-browser``, ``google-chrome`` on the PATH, else None."""
    if os.environ.get("SFC_CHROMIUM"):
        return os.environ["SFC_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def run_chromium(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium with ``args`` (e.g. ``--dump-dom URL``) in a fresh profile,
    without network services; raises ``RuntimeError`` if it is missing or fails."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(
            "no Chromium found: install the Debian package `chromium` "
            "(apt-get install chromium) or set SFC_CHROMIUM to a Chrome/Chromium binary"
        )
    with tempfile.TemporaryDirectory(prefix="sfc-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{binary} exited with {result.returncode}: {result.stderr[-2000:]}")
    return result


def save_png(
    circuit: CircuitData,
    path: str | Path,
    *,
    scale: float = 2.0,
    tokens: Sequence[str] | None = None,
    max_nodes: int | None = MAX_NODES,
    timeout: float = 120,
) -> None:
    """The SVG picture as a PNG at ``scale`` x its pixel size, screenshotted by headless
    Chromium (``RuntimeError`` if none is installed: use ``save_svg`` then)."""
    lay = layout(circuit, tokens=tokens, max_nodes=max_nodes)
    out = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="sfc-png-") as tmp:
        page = Path(tmp) / "figure.html"
        page.write_text(
            render_template("figure.html", title=None, body=Markup(_svg(lay))), encoding="utf-8"
        )
        run_chromium(
            [
                f"--screenshot={out}",
                f"--window-size={math.ceil(lay.width)},{math.ceil(lay.height)}",
                f"--force-device-scale-factor={scale}",
                page.as_uri(),
            ],
            timeout=timeout,
        )
    if not out.exists():
        raise RuntimeError(f"Chromium wrote no screenshot to {out}")
