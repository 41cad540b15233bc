"""discover_circuit and the Circuit object: thresholds, prune, networkx, save/load."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import make_saes, make_tiny_model

from sfc_plugin.attribution import edge_effects, node_effects
from sfc_plugin.circuit import Circuit, discover_circuit

PAIRS = [
    {
        "clean_prefix": f"The {s} near the {o}",
        "patch_prefix": f"The {p} near the {o}",
        "clean_answer": " is",
        "patch_answer": " are",
    }
    for (s, p), o in [
        (("cat", "cats"), "dog"),
        (("man", "men"), "car"),
        (("girl", "girls"), "tree"),
    ]
]
HOOKS = [
    "blocks.0.hook_resid_post",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = make_tiny_model("sequential", tokenizer, seed=2)
    saes = make_saes(model, HOOKS, d_sae=16, seed=5)
    circuit = discover_circuit(
        model, saes, PAIRS, method="atp", node_threshold=0.01, edge_threshold=0.001
    )
    return model, saes, circuit


def test_nodes_and_edges_follow_the_thresholds(setup):
    model, saes, circuit = setup
    effects = node_effects(model, saes, PAIRS, method="atp")
    table = effects.to_frame()
    want = table[table.effect.abs() > 0.01]
    assert list(circuit.nodes.node) == list(want.node)
    assert len(circuit.nodes) > 5 and (circuit.nodes.effect.abs() > 0.01).all()
    edges = edge_effects(model, saes, PAIRS, list(want.node), effects=effects, method="atp")
    edges = edges[edges.effect.abs() > 0.001]
    got = circuit.edges.set_index(["upstream", "downstream"]).effect.sort_index()
    assert len(got) > 10
    pd.testing.assert_series_equal(
        got, edges.set_index(["upstream", "downstream"]).effect.sort_index()
    )
    assert set(circuit.edges.upstream) <= set(circuit.nodes.node)
    assert set(circuit.edges.downstream) <= set(circuit.nodes.node) | {"metric"}
    assert circuit.settings["n_examples"] == 3 and circuit.settings["method"] == "atp"


def test_max_nodes_keeps_the_largest(setup, tokenizer):
    model, saes, circuit = setup
    small = discover_circuit(model, saes, PAIRS, method="atp", node_threshold=0.01, max_nodes=4)
    assert list(small.nodes.node) == list(circuit.nodes.node[:4])


def test_prune_tightens_without_recomputing(setup):
    _, _, circuit = setup
    pruned = circuit.prune(node_threshold=0.05, edge_threshold=0.01)
    assert (pruned.nodes.effect.abs() > 0.05).all() and len(pruned.nodes) < len(circuit.nodes)
    kept = set(pruned.nodes.node) | {"metric"}
    assert set(pruned.edges.upstream) <= kept and set(pruned.edges.downstream) <= kept
    assert (pruned.edges.effect.abs() > 0.01).all()
    expected = circuit.edges[
        (circuit.edges.effect.abs() > 0.01)
        & circuit.edges.upstream.isin(kept)
        & circuit.edges.downstream.isin(kept)
    ]
    assert len(pruned.edges) == len(expected)
    with pytest.raises(ValueError, match="node_threshold=0.001 is below"):
        circuit.prune(node_threshold=0.001)


def test_networkx(setup):
    _, _, circuit = setup
    graph = circuit.to_networkx()
    assert graph.number_of_nodes() == len(circuit.nodes) + 1
    assert graph.number_of_edges() == len(circuit.edges)
    row = circuit.edges.iloc[0]
    assert graph.edges[row.upstream, row.downstream]["effect"] == row.effect


def test_save_load_round_trip_exactly(setup, tmp_path):
    _, _, circuit = setup
    path = tmp_path / "circuit.json"
    circuit.save(path)
    loaded = Circuit.load(path)
    pd.testing.assert_frame_equal(loaded.nodes, circuit.nodes)
    pd.testing.assert_frame_equal(loaded.edges, circuit.edges)
    assert loaded.settings == circuit.settings
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_load_rejects_other_versions_and_truncated_files(setup, tmp_path):
    _, _, circuit = setup
    path = tmp_path / "circuit.json"
    circuit.save(path)
    doc = json.loads(path.read_text())
    (tmp_path / "v9.json").write_text(json.dumps({**doc, "version": 9}))
    with pytest.raises(ValueError, match="schema version 9"):
        Circuit.load(tmp_path / "v9.json")
    (tmp_path / "cut.json").write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(ValueError, match="truncated"):
        Circuit.load(tmp_path / "cut.json")
    (tmp_path / "other.json").write_text(json.dumps({"nodes": []}))
    with pytest.raises(ValueError, match="not a sfc_plugin circuit"):
        Circuit.load(tmp_path / "other.json")


def test_bad_arguments(setup):
    model, saes, _ = setup
    with pytest.raises(ValueError, match="node_threshold"):
        discover_circuit(model, saes, PAIRS, node_threshold=-1)
    with pytest.raises(ValueError, match="max_nodes"):
        discover_circuit(model, saes, PAIRS, max_nodes=0)
    with pytest.raises(ValueError, match="method"):
        discover_circuit(model, saes, PAIRS, method="exact")
    bad = {
        "blocks.1.hook_mlp_out/f3": "needs a position",
        "blocks.1.hook_mlp_out/f99@1": "feature 99 >= d_sae 16",
        "blocks.1.hook_mlp_out/err@9": "position 9 >= sequence length",
        "blocks.7.hook_mlp_out/err@1": "not one of the sites",
        "blocks.1.hook_mlp_out/x3@1": "not of the form",
    }
    for node, message in bad.items():
        with pytest.raises(ValueError, match=message):
            edge_effects(model, saes, PAIRS, [node], method="atp")


def test_ig_circuit_computes_gradients_once(setup, monkeypatch):
    """With the gradient cache (the default) discover_circuit runs the IG path once per batch
    and site; with ``gradient_cache_bytes=0`` twice (node and edge passes). Both circuits are
    the same to the bit."""
    from sfc_plugin.attribution import run as run_module

    model, saes, _ = setup
    calls = []
    real = run_module._ig_mean_grads

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "_ig_mean_grads", counted)
    kw = dict(method="ig", steps=3, node_threshold=0.01, edge_threshold=0.001, batch_size=2)
    cached = discover_circuit(model, saes, PAIRS, **kw)
    once = len(calls)
    calls.clear()
    fresh = discover_circuit(model, saes, PAIRS, gradient_cache_bytes=0, **kw)
    n_batches, n_sites = 2, len(HOOKS)
    assert once == n_batches * n_sites and len(calls) == 2 * once
    assert len(cached.edges) > 10
    pd.testing.assert_frame_equal(cached.nodes, fresh.nodes)
    pd.testing.assert_frame_equal(cached.edges, fresh.edges)
    # a budget too small for one batch keeps nothing and recomputes
    calls.clear()
    discover_circuit(model, saes, PAIRS, gradient_cache_bytes=1, **kw)
    assert len(calls) == 2 * once
