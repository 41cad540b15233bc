"""Circuit pictures: layout, the offline interactive HTML, the SVG, and the page in Chromium."""

from __future__ import annotations

import json
import math
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from conftest import dump_dom, make_saes, make_tiny_model

from sfc_plugin.circuit import EDGE_COLUMNS, NODE_COLUMNS, Circuit, discover_circuit
from sfc_plugin.frontend.dashboards import build_feature_index
from sfc_plugin.frontend.render import (
    NEGATIVE,
    POSITIVE,
    layout,
    render_html,
    render_svg,
    run_chromium,
)
from sfc_plugin.nodes import parse_node_id

SVG = "{http://www.w3.org/2000/svg}"
TOKENS = ["The", " cat", " near", " the", " dog"]
SMALL_NODES = {  # deliberately not in forward order
    "blocks.1.hook_mlp_out/f1@2": -0.4,
    "blocks.0.hook_resid_post/f3@1": 0.5,
    "blocks.0.hook_resid_post/err@1": -0.2,
    "blocks.0.hook_resid_post/f7@2": 0.3,
    "blocks.1.hook_mlp_out/err@2": 0.1,
    "blocks.1.hook_mlp_out/f4@1": 0.05,
}
SMALL_EDGES = [
    ("blocks.0.hook_resid_post/f3@1", "blocks.1.hook_mlp_out/f1@2", -0.3),
    ("blocks.0.hook_resid_post/err@1", "blocks.1.hook_mlp_out/f1@2", 0.05),
    ("blocks.0.hook_resid_post/f7@2", "blocks.1.hook_mlp_out/err@2", 0.2),
    ("blocks.0.hook_resid_post/f3@1", "blocks.1.hook_mlp_out/f4@1", 0.02),
    ("blocks.1.hook_mlp_out/f1@2", "metric", -0.4),
    ("blocks.1.hook_mlp_out/err@2", "metric", 0.1),
    ("blocks.1.hook_mlp_out/f4@1", "metric", 0.05),
]
PAIRS = [
    {
        "clean_prefix": f"The {s} near the {o}",
        "patch_prefix": f"The {p} near the {o}",
        "clean_answer": " is",
        "patch_answer": " are",
    }
    for (s, p), o in [(("cat", "cats"), "dog"), (("man", "men"), "car")]
]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.hook_resid_post"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog while farmers watch from the hill. " * 3,
    "Rivers run to the sea, yet the sea is never full; the wind returns again. " * 3,
]


def make_circuit(
    effects: dict[str, float], edges: list[tuple[str, str, float]], **settings
) -> Circuit:
    """A circuit built directly from node ids and effects (no model)."""
    rows = []
    for node, effect in effects.items():
        hook, feature, pos = parse_node_id(node)
        layer, component = re.match(r"blocks\.(\d+)\.hook_(.*)", hook).groups()
        kind = "error" if feature is None else "feature"
        rows.append((node, hook, int(layer), component, kind, pos, feature, effect))
    return Circuit(
        pd.DataFrame(rows, columns=NODE_COLUMNS),
        pd.DataFrame(edges, columns=EDGE_COLUMNS),
        {"method": "atp", "node_threshold": 0.0, "edge_threshold": 0.0, **settings},
    )


def data_of(page: str) -> dict:
    """The JSON the page's script reads."""
    text = re.search(r'<script type="application/json" class="sfc-data">(.*?)</script>', page)
    return json.loads(text[1])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small() -> Circuit:
    return make_circuit(SMALL_NODES, SMALL_EDGES, tokens=TOKENS)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A tiny random model, its SAEs and its circuit."""
    model = make_tiny_model("sequential", tokenizer, seed=2)
    saes = make_saes(model, HOOKS, d_sae=16, seed=5)
    circuit = discover_circuit(
        model, saes, PAIRS, method="atp", node_threshold=0.02, edge_threshold=0.002, progress=False
    )
    return model, saes, circuit


@pytest.fixture(scope="module")
def index(tiny, tmp_path_factory):
    model, saes, _ = tiny
    sample = tmp_path_factory.mktemp("sample") / "sample.jsonl"
    sample.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return build_feature_index(model, saes, sample, context=16, max_tokens=60, k=5, window=(4, 2))


# ------------------------------------------------------------------------------- layout


def test_rows_follow_the_forward_order_and_columns_the_positions(small):
    lay = layout(small)
    shapes = lay.shapes
    y0 = {shapes[n].y for n in SMALL_NODES if n.startswith("blocks.0")}
    y1 = {shapes[n].y for n in SMALL_NODES if n.startswith("blocks.1")}
    assert len(y0) == len(y1) == 1 and y0.pop() > y1.pop() > shapes["metric"].y  # y grows down
    at = {p: [shapes[n].x for n in SMALL_NODES if n.endswith(f"@{p}")] for p in (1, 2)}
    assert max(at[1]) < min(at[2])
    assert [lines for *_, lines in lay.columns] == [[str(i), t] for i, t in enumerate(TOKENS)]
    other = layout(small, tokens=["A", " b", " c"])
    assert [lines for *_, lines in other.columns] == [["0", "A"], ["1", " b"], ["2", " c"]]
    bare = layout(make_circuit(SMALL_NODES, SMALL_EDGES))
    assert [lines for *_, lines in bare.columns] == [["1"], ["2"]]


def test_summed_circuits_spread_each_site_over_a_row(small):
    summed = {n.split("@")[0]: e for n, e in SMALL_NODES.items()}
    edges = [(u.split("@")[0], d.split("@")[0], e) for u, d, e in SMALL_EDGES]
    lay = layout(make_circuit(summed, edges))
    for site in ("blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"):
        row = [s for s in lay.shapes.values() if s.site == site]
        assert len({s.y for s in row}) == 1 and len({s.x for s in row}) == len(row)
    assert [lines for *_, lines in lay.columns] == [[]]


def test_large_circuits_collapse_per_cell_with_summed_effects():
    effects, edges = {}, []
    for i in range(30):
        for p in (1, 2):
            effects[f"blocks.0.hook_resid_post/f{i}@{p}"] = (-1) ** i * (i + 1) / 30
            effects[f"blocks.1.hook_mlp_out/f{i}@{p}"] = (i + 1) / 40
            edges.append(
                (f"blocks.0.hook_resid_post/f{i}@{p}", f"blocks.1.hook_mlp_out/f0@{p}", 0.1)
            )
            edges.append((f"blocks.1.hook_mlp_out/f{i}@{p}", "metric", (i + 1) / 40))
    circuit = make_circuit(effects, edges)
    lay = layout(circuit, max_nodes=60)
    real = [s for s in lay.shapes.values() if s.kind in ("feature", "error")]
    more = [s for s in lay.shapes.values() if s.kind == "more"]
    assert len(real) == 60 and len(more) == 4 and lay.collapsed == 60
    for agg in more:
        cell = [s for s in real if (s.site, s.position) == (agg.site, agg.position)]
        assert len(cell) == 15 and len(agg.members) == 15
        assert min(abs(s.effect) for s in cell) > max(abs(e) for _, e in agg.members)
        assert agg.effect == pytest.approx(sum(e for _, e in agg.members))
        assert agg.id == f"{agg.site}/+15@{agg.position}"
    assert sum(e for *_, e in lay.edges) == pytest.approx(circuit.edges.effect.sum())
    assert {u for u, *_ in lay.edges} <= set(lay.shapes)
    assert len(layout(circuit, max_nodes=None).shapes) == len(effects) + 1
    page = render_html(circuit)
    assert "60 smaller nodes collapsed" in page and "blocks.0.hook_resid_post/+15@1" in page


# --------------------------------------------------------------------------------- HTML


def test_html_is_offline_and_names_every_node(small, tiny):
    for circuit in (small, tiny[2]):
        page = circuit.show(max_nodes=None)
        for node in circuit.nodes.node:
            assert f'data-node="{node}"' in page
        assert 'data-node="metric"' in page
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
        assert not re.search(r"<link|@import|url\(", page)
        assert circuit._repr_html_() == circuit.show()
        assert circuit.show()._repr_html_() == circuit.show()
    assert data_of(small.show())["nodes"]["blocks.0.hook_resid_post/f3@1"]["token"] == " cat"


def test_hover_info_from_mappings_callables_and_a_feature_index(small, tiny, index):
    info = {
        "blocks.0.hook_resid_post/f3": {
            "label": "cat-ish",
            "promoted": [{"token": " cats", "value": 1.5}],
        },
        "blocks.1.hook_mlp_out/f1@2": "<b>custom panel</b>",
    }
    page = small.show(dashboards=info)
    nodes = data_of(page)["nodes"]
    assert nodes["blocks.0.hook_resid_post/f3@1"]["info"] == {
        "label": "cat-ish",
        "promoted": [{"token": " cats", "value": 1.5}],
    }
    assert nodes["blocks.1.hook_mlp_out/f1@2"]["html"] is True
    assert '<div class="sfc-html" data-for="blocks.1.hook_mlp_out/f1@2" hidden>' in page
    assert "<b>custom panel</b>" in page and "CircuitsVis" not in page

    nodes = data_of(small.show(dashboards=lambda node: {"label": node + "</script>"}))["nodes"]
    assert all(nodes[n]["info"]["label"] == n + "</script>" for n in SMALL_NODES)

    circuit = tiny[2]
    nodes = data_of(circuit.show(dashboards=index, max_nodes=None))["nodes"]
    checked = 0
    for row in circuit.nodes.itertuples():
        if row.kind != "feature":
            assert "info" not in nodes[row.node]
            continue
        want = index.dashboard(row.hook_name, row.feature, n_contexts=5, n_outputs=8).to_dict()
        got = nodes[row.node].get("info", {})
        assert [c["tokens"] for c in got.get("contexts", [])] == [
            c["tokens"] for c in want["contexts"]
        ]
        assert [t["token"] for t in got["promoted"]] == [t["token"] for t in want["promoted"]]
        checked += bool(want["contexts"])
    assert checked > 0
    with pytest.raises(TypeError, match="dashboards must be"):
        render_html(small, dashboards=42)


def test_an_empty_circuit_still_renders():
    empty = make_circuit({}, [])
    assert 'data-node="metric"' in empty.show()
    ET.fromstring(render_svg(empty).encode())


# ---------------------------------------------------------------------------------- SVG


def test_features_are_captioned_with_their_dashboard_labels(small, tiny, index):
    node = "blocks.0.hook_resid_post/f3@1"
    info = {"blocks.0.hook_resid_post/f3": {"label": "<cat>-like-things"}}
    for svg in (render_svg(small, dashboards=info), render_html(small, dashboards=info)):
        root = ET.fromstring(svg[svg.index("<svg") : svg.index("</svg>") + 6].encode())
        captions = {
            g.get("data-node"): [t.text for t in g.iter(f"{SVG}text") if t.get("class")]
            for g in root.iter(f"{SVG}g")
            if g.get("data-node")
        }
        assert captions[node] == ["<cat>-li\u2026"]  # cut to CAPTION_CHARS, escaped
        assert all(c == [] for n, c in captions.items() if n != node)
    assert "sfc-caption" not in render_svg(small)
    # from a feature index: each feature's caption is its dashboard's label
    circuit = tiny[2]
    root = ET.fromstring(render_svg(circuit, dashboards=index, max_nodes=None).encode())
    shown = 0
    for g in root.iter(f"{SVG}g"):
        if g.get("data-kind") != "feature":
            continue
        site, rest = g.get("data-node").split("/")
        label = index.dashboard(site, int(rest[1:].split("@")[0]), n_contexts=5, n_outputs=8).label
        texts = [t.text for t in g.iter(f"{SVG}text") if t.get("class") == "sfc-caption"]
        assert texts == ([label[:9] if len(label) <= 9 else label[:8] + "\u2026"] if label else [])
        shown += bool(texts)
    assert shown >= 3


def test_svg_has_one_shape_per_node_and_one_path_per_edge(small, tiny, tmp_path):
    for circuit in (small, tiny[2]):
        path = tmp_path / "circuit.svg"
        circuit.save_svg(path, max_nodes=None)
        root = ET.fromstring(path.read_bytes())
        assert root.tag == f"{SVG}svg" and not list(root.iter(f"{SVG}script"))
        groups = {g.get("data-node"): g for g in root.iter(f"{SVG}g") if g.get("data-node")}
        assert set(groups) == set(circuit.nodes.node) | {"metric"}
        for node in circuit.nodes.itertuples():
            shapes = [c.tag for c in groups[node.node] if c.tag != f"{SVG}title"]
            want = "rect" if node.kind == "feature" else "polygon"
            assert shapes == [f"{SVG}{want}", f"{SVG}text"], node.node
        paths = list(root.iter(f"{SVG}path"))
        assert len(paths) == len(circuit.edges) and not list(root.iter(f"{SVG}line"))
        assert {(p.get("data-up"), p.get("data-down")) for p in paths} == set(
            zip(circuit.edges.upstream, circuit.edges.downstream)
        )

    root = ET.fromstring(render_svg(small).encode())
    fills = {
        g.get("data-node"): g.find(f"{SVG}rect").get("fill")
        for g in root.iter(f"{SVG}g")
        if g.get("data-kind") == "feature"
    }
    assert fills["blocks.0.hook_resid_post/f3@1"] == "#{:02x}{:02x}{:02x}".format(*POSITIVE)
    red = [int(fills["blocks.1.hook_mlp_out/f1@2"][i : i + 2], 16) for i in (1, 3, 5)]
    assert red[0] > red[2] and red != list(NEGATIVE)  # red, lighter than the largest
    widths = {
        float(p.get("data-effect")): float(p.get("stroke-width")) for p in root.iter(f"{SVG}path")
    }
    ordered = [widths[e] for e in sorted(widths, key=abs)]
    assert ordered == sorted(ordered) and ordered[0] < ordered[-1]


# ----------------------------------------------------------------------------- Chromium


def read_png(path: Path) -> tuple[int, int, set[tuple[int, int, int]]]:
    """Width, height and the set of RGB colours of an 8-bit RGB(A) PNG (decoded with zlib)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and colour in (2, 6) and interlace == 0
    bpp = 3 if colour == 2 else 4
    stride, raw = width * bpp, zlib.decompress(idat)
    prev, colours = bytearray(stride), set()
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride) if kind else ():
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(zip(line[0::bpp], line[1::bpp], line[2::bpp]))
        prev = line
    return width, height, colours


def test_the_page_runs_in_headless_chromium(chromium, small, tmp_path):
    path = tmp_path / "circuit.html"
    small.save_html(path, dashboards={"blocks.0.hook_resid_post/f3": {"label": "cat-ish"}})
    selected = "blocks.0.hook_resid_post/f3@1"
    dom = dump_dom(f"{path.as_uri()}#node_threshold=0.08&select={quote(selected, safe='')}")
    assert 'data-sfc-ready="true"' in dom  # the script ran to the end
    for node in list(small.nodes.node) + ["metric"]:
        assert f'data-node="{node}"' in dom
    hidden = re.findall(r'<g class="sfc-node[^"]* sfc-hidden[^"]*" data-node="([^"]+)"', dom)
    assert hidden == ["blocks.1.hook_mlp_out/f4@1"]  # |0.05| < 0.08
    assert "showing 5 of 6 nodes, 5 of 7 edges" in dom
    details = dom.split('class="sfc-details">')[1].split('class="sfc-data"')[0]
    assert f"<h4>{selected}</h4>" in details and "cat-ish" in details

    png = tmp_path / "page.png"
    run_chromium([f"--screenshot={png}", "--window-size=1200,900", path.as_uri()], timeout=120)
    width, height, colours = read_png(png)
    assert (width, height) == (1200, 900) and len(colours) > 50
    assert any(b > r + 80 for r, _, b in colours) and any(r > b + 80 for r, _, b in colours)


def test_feature_dashboards_show_in_the_page(chromium, tiny, index, tmp_path):
    circuit = tiny[2]
    path = tmp_path / "circuit.html"
    circuit.save_html(path, dashboards=index, max_nodes=None)
    nodes = data_of(path.read_text())["nodes"]
    selected = next(n for n, v in nodes.items() if v.get("info", {}).get("contexts"))
    dom = dump_dom(f"{path.as_uri()}#select={quote(selected, safe='')}")
    for node in circuit.nodes.node:
        assert f'data-node="{node}"' in dom
    details = dom.split('class="sfc-details">')[1].split('class="sfc-data"')[0]
    assert f"<h4>{selected}</h4>" in details
    assert "Top activating contexts" in details and "Promoted output tokens" in details


def test_save_png_screenshots_the_svg(chromium, small, tmp_path):
    small.save_png(tmp_path / "circuit.png", scale=2)
    width, height, colours = read_png(tmp_path / "circuit.png")
    lay = layout(small)
    assert (width, height) == (2 * math.ceil(lay.width), 2 * math.ceil(lay.height))
    assert len(colours) > 20


def test_save_png_without_chromium_says_what_to_install(small, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SFC_CHROMIUM", raising=False)
    with pytest.raises(RuntimeError, match="Debian package `chromium`"):
        small.save_png(tmp_path / "circuit.png")
