"""Pruning a traced circuit by a judge, the keyword judge, the LLM judge with the tracing
prompt (fake local server), and the circuit-tracer export (fields as in circuit-tracer's
``frontend/graph_models.py``)."""

from __future__ import annotations

import json

import pytest
from conftest import make_random_sae, make_random_transcoder, make_tiny_model

from sfc_plugin.judges import FeatureDescription, keyword_judge, llm_judge, marked_judge
from sfc_plugin.nodes import METRIC_NODE, without_position
from sfc_plugin.tracing import TRACE_PROMPT, export_graph, prune_with_judge, trace

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    dict(clean_prefix=p, patch_prefix="x x x x", clean_answer=" the", patch_answer=" a")
    for p in ("The cat sat on", "A dog ran to", "The man went to")
]
# circuit-tracer's Node and Link fields (circuit_tracer/frontend/graph_models.py)
NODE_FIELDS = {
    "node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
    "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence",
}  # fmt: skip
METADATA_FIELDS = {
    "slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
    "schema_version",
}  # fmt: skip


@pytest.fixture(scope="module")
def traced(tokenizer):
    model = make_tiny_model("sequential", tokenizer, n_layers=2)
    saes = {}
    for layer in range(2):
        attn, mlp = f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"
        saes[attn] = make_random_sae(attn, 32, 24, seed=layer)
        read = f"blocks.{layer}.ln2.hook_normalized"
        saes[mlp] = make_random_transcoder(read, mlp, 32, 32, 16, seed=10 + layer)
    circuit = trace(model, saes, ROWS, node_threshold=0.01, edge_threshold=0.001, progress=False)
    return model, saes, circuit


def test_judge_pruning_drops_every_position_of_a_marked_feature(traced):
    _, _, circuit = traced
    features = circuit.nodes[circuit.nodes.kind == "feature"]
    assert len(features) >= 2
    marked = without_position(features.node.iloc[0])
    pruned, judgements = prune_with_judge(circuit, marked_judge([marked]), progress=False)
    assert {j.node for j in judgements} == {without_position(n) for n in features.node}
    assert sum(j.spurious for j in judgements) == 1
    gone = {n for n in features.node if without_position(n) == marked}
    assert not gone & set(pruned.nodes.node)
    assert set(pruned.nodes.node) == set(circuit.nodes.node) - gone
    assert not gone & (set(pruned.edges.upstream) | set(pruned.edges.downstream))
    assert len(pruned.edges) == len(circuit.edges) - sum(
        circuit.edges.upstream.isin(gone) | circuit.edges.downstream.isin(gone)
    )
    assert pruned.settings["judge_pruned"] == [marked]


def _description(top: list[str], promoted: list[str] = ()) -> FeatureDescription:
    contexts = [f"a [[{t}]] b" for t in top]
    return FeatureDescription(
        "blocks.0.hook_mlp_out/f1", "blocks.0.hook_mlp_out", 1, 0.5, contexts, top, promoted
    )


def test_keyword_judge_keeps_features_about_the_task():
    judge = keyword_judge(["is", "are", "athlete", "athletes"])
    keep, why = judge(_description([" athletes", " is", " athlete", " dog"]))
    assert keep is False and "athletes" in why
    prune, why = judge(_description([" dog", " cat", " table", " run"], [" the"]))
    assert prune is True and "none" in why
    with pytest.raises(ValueError, match="min_share"):
        keyword_judge(["is"], min_share=0)
    with pytest.raises(TypeError, match="not one string"):
        keyword_judge("is")


def test_llm_judge_with_the_tracing_prompt(server):
    server.replies = [(200, "RELEVANT\nit tracks the subject's number")]
    judge = llm_judge(
        base_url=server.url, model="m", prompt=TRACE_PROMPT, intended="subject-verb agreement"
    )
    assert judge(_description([" athletes"])) == (False, "it tracks the subject's number")
    asked = server.requests[-1]["json"]["messages"][0]["content"]
    assert "this behaviour: subject-verb agreement" in asked and "athletes" in asked
    with pytest.raises(ValueError, match="unknown field"):
        llm_judge(base_url=server.url, model="m", prompt="about {nothing}")


def test_export_has_circuit_tracers_fields_and_every_edge(traced, tmp_path):
    model, _, circuit = traced
    path = export_graph(
        circuit, tmp_path, "tiny", n_layers=model.cfg.n_layers, d_vocab=model.cfg.d_vocab
    )
    doc = json.loads(path.read_text())
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    assert METADATA_FIELDS <= set(doc["metadata"])
    assert doc["metadata"]["prompt_tokens"] == circuit.settings["tokens"]
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(ids) == len(set(ids)) == len(circuit.nodes) + 1  # + the target's logit node
    for node in doc["nodes"]:
        assert NODE_FIELDS <= set(node), node
    by_clerp = {n["clerp"]: n for n in doc["nodes"]}
    for row in circuit.nodes.itertuples():
        assert by_clerp[row.node]["influence"] == pytest.approx(row.effect)
    target = [n for n in doc["nodes"] if n["is_target_logit"]]
    assert len(target) == 1 and target[0]["feature_type"] == "logit"
    assert target[0]["layer"] == str(model.cfg.n_layers + 1)
    assert len(doc["links"]) == len(circuit.edges)
    sfc_id = {n["node_id"]: n["clerp"] for n in doc["nodes"]}
    sfc_id[target[0]["node_id"]] = METRIC_NODE
    links = {(sfc_id[x["source"]], sfc_id[x["target"]]): x["weight"] for x in doc["links"]}
    for row in circuit.edges.itertuples():
        assert links[(row.upstream, row.downstream)] == pytest.approx(row.effect)
    kinds = {n["feature_type"] for n in doc["nodes"]}
    assert {"cross layer transcoder", "mlp reconstruction error", "logit"} <= kinds
    listing = json.loads((tmp_path / "graph-metadata.json").read_text())
    export_graph(circuit, tmp_path, "tiny", n_layers=2, d_vocab=model.cfg.d_vocab)
    again = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert (
        [g["slug"] for g in listing["graphs"]] == [g["slug"] for g in again["graphs"]] == ["tiny"]
    )


def test_export_refuses_an_sfc_circuit(traced, tmp_path):
    _, _, circuit = traced
    from sfc_plugin.circuit import Circuit

    sfc_like = Circuit(circuit.nodes, circuit.edges, {**circuit.settings, "effects": None})
    with pytest.raises(ValueError, match="traced circuit"):
        export_graph(sfc_like, tmp_path, "x", n_layers=2, d_vocab=10)
    with pytest.raises(ValueError, match="slug"):
        export_graph(circuit, tmp_path, "a/b", n_layers=2, d_vocab=10)
