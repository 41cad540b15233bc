"""Export a traced circuit as circuit-tracer's graph JSON, so its frontend can open it.

``export_graph(circuit, directory, slug)`` writes ``directory/slug.json`` in the layout of
circuit-tracer's ``create_graph_files`` (``metadata``, ``qParams``, ``nodes``, ``links``) and
adds the graph to ``directory/graph-metadata.json``, the list circuit-tracer's local server
reads. Node ids follow circuit-tracer's:

* feature ``i`` of a site in layer ``L`` at position ``p``: ``"{L}_{j}_{p}"`` with ``j = i``
  plus the widths of the layer's earlier sites (an attention SAE's features come before the
  transcoder's), feature type ``"cross layer transcoder"``;
* the error of a layer's transcoder (or MLP) at ``p``: ``"err_{L}_{p}"``; of another site
  (an attention SAE): ``"err_{L}_{p}_{component}"`` (circuit-tracer writes ``"0_{L}_{p}"``,
  which can equal a layer-0 feature's id);
* the token embedding at ``p``: ``"E_{token}_{p}"``; a learned position embedding (GPT-2):
  ``"E_{token}_{p}_pos"``;
* the target: a logit node ``"{n_layers + 1}_{v}_{last}"``, with ``v`` the token for a logit
  target and ``d_vocab`` (circuit-tracer's virtual index) for the metric or a difference.

Every node's ``clerp`` is its sfc node id; ``influence`` is its effect; link weights are the
circuit's edge effects. The prompt is the first example's (positions align across examples).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from sfc_plugin.circuit import Circuit
from sfc_plugin.files import write_atomic
from sfc_plugin.nodes import METRIC_NODE
from sfc_plugin.sites import hook_sort_key


def _int(value: Any) -> int:
    """An Int64 cell as an int (0 where missing: embeddings have no layer)."""
    return 0 if pd.isna(value) else int(value)


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def graph_json(circuit: Circuit, slug: str, *, n_layers: int, d_vocab: int) -> dict[str, Any]:
    """The circuit as circuit-tracer's graph document (module docstring)."""
    s = circuit.settings
    if s.get("effects") != "direct":
        raise ValueError(
            "export_graph takes a traced circuit (settings effects='direct', from "
            "sfc_plugin.tracing.trace); an SFC circuit's effects are indirect"
        )
    tokens, token_ids = s.get("tokens") or [], s.get("token_ids") or []
    widths = {h: v["d_sae"] for h, v in (s.get("saes") or {}).items()}
    offset: dict[str, int] = {}
    for layer in {int(r) for r in circuit.nodes.layer.dropna()}:
        start = 0
        hooks = sorted((h for h in widths if h.startswith(f"blocks.{layer}.")), key=hook_sort_key)
        for h in hooks:
            offset[h] = start
            start += widths[h]
    ids: dict[str, str] = {}
    nodes = []
    for row in circuit.nodes.to_dict("records"):
        pos, kind, node_name = _int(row["position"]), row["kind"], str(row["node"])
        node: dict[str, Any] = {"ctx_idx": pos, "run_idx": 0, "reverse_ctx_idx": 0}
        node.update(clerp=node_name, influence=float(row["effect"]), token_prob=0.0)
        node["is_target_logit"] = False
        layer = _int(row["layer"])
        if kind == "embedding":
            vocab = int(token_ids[pos]) if pos < len(token_ids) else 0
            suffix = "" if row["hook_name"] == "hook_embed" else "_pos"
            nid = f"E_{vocab}_{pos}{suffix}"
            node.update(feature=pos, layer="E", feature_type="embedding")
            node["jsNodeId"] = f"E_{vocab}-{pos}{suffix}"
        elif kind == "feature":
            j = offset.get(str(row["hook_name"]), 0) + _int(row["feature"])
            nid = f"{layer}_{j}_{pos}"
            node.update(feature=_cantor(layer, j), layer=str(layer))
            node.update(feature_type="cross layer transcoder", jsNodeId=f"{layer}_{j}-0")
        else:
            suffix = "" if row["component"] == "mlp_out" else f"_{row['component']}"
            nid = f"err_{layer}_{pos}{suffix}"
            node.update(feature=-1, layer=str(layer), feature_type="mlp reconstruction error")
            node["jsNodeId"] = f"{layer}_{pos}-0{suffix}"
        node["node_id"] = nid
        ids[node_name] = nid
        nodes.append(node)
    targets = s.get("targets") or [METRIC_NODE]
    if any(not str(t).startswith("blocks.") for t in targets):
        last = max(len(tokens) - 1, 0)
        vocab = d_vocab
        nid = f"{n_layers + 1}_{vocab}_{last}"
        name = " + ".join(str(t) for t in targets if not str(t).startswith("blocks."))
        nodes.append(
            {
                "node_id": nid,
                "feature": vocab,
                "layer": str(n_layers + 1),
                "ctx_idx": last,
                "feature_type": "logit",
                "token_prob": 0.0,
                "is_target_logit": True,
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "jsNodeId": f"L_{vocab}-{last}",
                "clerp": f"target: {name}",
                "influence": None,
            }
        )
        ids[METRIC_NODE] = nid
    links = [
        {"source": ids[u], "target": ids[d], "weight": float(w)}
        for u, d, w in circuit.edges[["upstream", "downstream", "effect"]].itertuples(index=False)
        if u in ids and d in ids
    ]
    metadata = {
        "slug": slug,
        "scan": "-".join(sorted({str(v.get("release")) for v in (s.get("saes") or {}).values()})),
        "transcoder_list": [],
        "prompt_tokens": list(tokens),
        "prompt": "".join(tokens),
        "node_threshold": s.get("node_threshold"),
        "schema_version": 1,
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def export_graph(
    circuit: Circuit, directory: str | Path, slug: str, *, n_layers: int, d_vocab: int
) -> Path:
    """Write ``directory/slug.json`` and list it in ``directory/graph-metadata.json``
    (module docstring); ``n_layers`` and ``d_vocab`` are the model's. Returns the file."""
    if not slug or "/" in slug:
        raise ValueError(f"slug must be a non-empty file name, got {slug!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc = graph_json(circuit, slug, n_layers=n_layers, d_vocab=d_vocab)
    path = directory / f"{slug}.json"
    write_atomic(path, json.dumps(doc, indent=1).encode())
    listing = directory / "graph-metadata.json"
    graphs = json.loads(listing.read_text())["graphs"] if listing.exists() else []
    graphs = [g for g in graphs if g.get("slug") != slug] + [doc["metadata"]]
    write_atomic(listing, json.dumps({"graphs": graphs}, indent=1).encode())
    return path
