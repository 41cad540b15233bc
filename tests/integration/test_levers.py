"""``experiments.levers`` on the embedded model: a row's top-k scores are the evaluator's."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from sfc_plugin.datasets import agreement
from sfc_plugin.evaluation import Evaluator
from sfc_plugin.experiments import levers as levers_module
from sfc_plugin.experiments.levers import (
    DICTIONARIES,
    ROWS,
    Lever,
    LeverSettings,
    generated_section,
    levers,
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


def test_the_page_lists_every_finished_row_in_order(monkeypatch, tmp_path):
    """A run of some rows writes them and rewrites the page with every finished row: those
    found done (not recomputed) and those run now, in the order of ROWS."""
    ran = []

    def fake_row(model, lever, train, test, settings):
        ran.append(lever)
        return {"lever": asdict(lever), "sites": 3, "ranked_nodes": 9, "error_nodes": 1,
                "effects_seconds": 1.0, "m_model": -2.0, "m_empty": -0.5,
                "faithfulness_at": {"50": 0.5, "100": 0.75, "150": 1.0},
                "completeness_at": {"50": 0.1, "100": 0.0, "150": 0.0},
                "nodes_for_half": 50.0, "curve": []}  # fmt: skip

    monkeypatch.setattr(levers_module, "load_model", lambda name: None)
    monkeypatch.setattr(levers_module, "agreement", lambda *args, **kwargs: [])
    monkeypatch.setattr(levers_module, "run_row", fake_row)
    first, *_, last = list(ROWS)
    levers(LeverSettings(out=tmp_path, rows=[last]))
    levers(LeverSettings(out=tmp_path, rows=[first, last]))
    assert ran == [ROWS[last], ROWS[first]]  # last was found done the second time
    page = levers(LeverSettings(out=tmp_path, rows=[first]))  # the page keeps last
    assert len(ran) == 2
    rows = [line.split(" | ")[0] for line in page.read_text().splitlines()]
    assert [r for r in rows if r.removeprefix("| ") in ROWS] == [f"| {first}", f"| {last}"]
