"""``experiments.levers`` on the embedded model: a row's top-k scores are the evaluator's."""

from __future__ import annotations

import pytest

from sfc_plugin.datasets import agreement
from sfc_plugin.evaluation import Evaluator
from sfc_plugin.experiments.levers import (
    DICTIONARIES,
    Lever,
    LeverSettings,
    generated_section,
    run_row,
)


@pytest.mark.parametrize("all_errors", [True])  # the ranked path is the same minus errors
def test_a_row_scores_the_top_k_nodes(real_model, all_errors):
    train = agreement("across_rc", real_model, n=4, split="train")
    test = agreement("across_rc", real_model, n=4, split="test")
    lever = Lever("resid_only", "atp", start_layer=10, all_errors=all_errors)
    result = run_row(real_model, lever, train, test, LeverSettings(train=4, test=4))
    assert result["sites"] == 10  # resid_post every third layer; 11, 14, ..., 29 evaluated
    curve = result["curve"]
    assert [c["nodes"] for c in curve][:4] == [10, 20, 30, 50]
    # the 50-node row is the evaluator's score of the top 50 nodes, from layer 10 on
    from sfc_plugin.attribution import node_effects

    saes = DICTIONARIES["resid_only"][1]("cpu")
    table = node_effects(real_model, saes, train, method="atp", progress=False).to_frame()
    table = table[table.layer >= 10]
    assert sorted(set(table.layer)) == list(range(11, 30, 3))
    errors = list(table.node[table.kind == "error"])
    ranked = list(table.node[table.kind == "feature"]) if all_errors else list(table.node)
    nodes = ranked[:50] + (errors if all_errors else [])
    expected = Evaluator(real_model, saes, test, start_layer=10, progress=False).scores(nodes)
    assert result["faithfulness_at"]["50"] == pytest.approx(expected.faithfulness, abs=1e-6)
    assert result["completeness_at"]["50"] == pytest.approx(expected.completeness, abs=1e-6)
    page = generated_section({"row": result}, LeverSettings())
    assert "| row | resid_only (10 sites) | atp | 10 |" in page
    share = expected.m_empty / expected.m_model  # what the empty circuit leaves
    assert f"| {share:.2f} | {result['faithfulness_at']['50']:.2f} |" in page
