"""The SHIFT table (sfc_plugin.shift.experiment.run_shift) on a tiny random model and a small
local file in the hub's schema: each row recomputed here from its definition (probes trained
with the same trainer on pooled activations computed here, ablations written out with plain
hooks), resumption from ``out``, and bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import make_saes, make_tiny_model

from sfc_plugin.frontend.dashboards import build_feature_index
from sfc_plugin.judges import describe_features
from sfc_plugin.shift import experiment as experiment_module
from sfc_plugin.shift import pooled_activations, train_probe
from sfc_plugin.shift.ablation import ablation_hooks, random_features
from sfc_plugin.shift.experiment import (
    ROWS,
    ShiftResult,
    ShiftSettings,
    run_shift,
)
from sfc_plugin.shift.scoring import CBP_CONCEPTS, concept_similarities, concept_vectors, scores

pytestmark = pytest.mark.usefixtures("one_thread")

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.hook_resid_post"]
SETTINGS = ShiftSettings(
    n_train=16, n_oracle=16, n_test=16, n_circuit=4, n_features=6, method="atp", random_seeds=(0, 1)
)


def _bios(n_per_group: int, offset: int) -> list[dict]:
    rows = []
    for i in range(offset, offset + n_per_group):
        for gender, (pron, name) in enumerate([("He", "John"), ("She", "Mary")]):
            rows.append(
                {
                    "hard_text": f"{name} {i} studies. {pron} teaches {i % 5} classes at the "
                    "university and writes papers.",
                    "profession": 21,
                    "gender": gender,
                }
            )
            rows.append(
                {
                    "hard_text": f"{pron} works nights {i}. {name} cares for patients on the "
                    f"ward {i % 3}.",
                    "profession": 13,
                    "gender": gender,
                }
            )
    return rows


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("bib")
    paths = {}
    for part, n, offset in (("train", 12, 0), ("test", 6, 100)):
        paths[part] = root / f"{part}.jsonl"
        paths[part].write_text("\n".join(json.dumps(r) for r in _bios(n, offset)))
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = make_tiny_model("sequential", tokenizer, seed=11)
    saes = make_saes(model, HOOKS + ["blocks.2.hook_resid_post"], d_sae=10, seed=5)
    return model, saes


def even_features(description):
    """A deterministic judge: even feature indices are 'spurious'."""
    return description.feature % 2 == 0


@pytest.fixture(scope="module")
def result(setup, source, tmp_path_factory):
    model, saes = setup
    out = tmp_path_factory.mktemp("shift")
    res = run_shift(
        model, saes, judge=even_features, settings=SETTINGS, out=out, source=source, progress=False
    )
    return res, out


def _data(source):
    from sfc_plugin.datasets import bias_in_bios

    kw = dict(source=source, seed=42)
    return (
        bias_in_bios("ambiguous", "train", n=16, **kw),
        bias_in_bios("balanced", "train", n=16, **kw),
        bias_in_bios("balanced", "test", n=16, **kw),
    )


def _row(logits, frame):
    return scores((logits > 0).long(), frame)


def _check_row(table, name, want):
    for col in ("profession", "gender", "worst_group"):
        assert table.loc[name, col] == pytest.approx(want[col], abs=1e-9), (name, col)


def test_table_rows_follow_their_definitions(setup, source, result):
    model, saes = setup
    res, _ = result
    train, oracle_data, test = _data(source)
    hook = "blocks.1.hook_resid_post"
    assert res.settings["hook"] == hook
    sites = {h: saes[h] for h in HOOKS}  # blocks.2 is after the probe and takes no part
    assert set(res.circuit.hook_name) <= set(HOOKS)
    assert len(res.circuit) == SETTINGS.n_features
    assert list(res.table.index) == list(ROWS)

    a_train = pooled_activations(model, list(train.text), hook, progress=False)
    a_test = pooled_activations(model, list(test.text), hook, progress=False)
    probe = train_probe(None, None, list(train.profession), hook=hook, activations=a_train)
    _check_row(res.table, "original", _row(probe.logits_of(a_test), test))

    concepts = concept_vectors(model, hook, CBP_CONCEPTS)
    cbp = train_probe(
        None,
        None,
        list(train.profession),
        hook=hook,
        activations=concept_similarities(a_train, concepts),
    )
    _check_row(res.table, "CBP", _row(cbp.logits_of(concept_similarities(a_test, concepts)), test))

    ablated = [n for n, f in zip(res.circuit.node, res.circuit.feature) if f % 2 == 0]
    assert res.ablated == ablated and 0 < len(ablated) < SETTINGS.n_features
    assert list(res.circuit.spurious) == [f % 2 == 0 for f in res.circuit.feature]
    hooks = ablation_hooks(model, sites, ablated)
    t_shift = pooled_activations(model, list(test.text), hook, fwd_hooks=hooks, progress=False)
    assert (t_shift - a_test).abs().max() > 1e-5
    _check_row(res.table, "SHIFT", _row(probe.logits_of(t_shift), test))
    a_shift = pooled_activations(model, list(train.text), hook, fwd_hooks=hooks, progress=False)
    retrained = train_probe(None, None, list(train.profession), hook=hook, activations=a_shift)
    _check_row(res.table, "SHIFT + retrain", _row(retrained.logits_of(t_shift), test))

    k = len(ablated)
    randoms = []
    for seed in SETTINGS.random_seeds:
        h = ablation_hooks(model, sites, random_features(sites, k, seed=seed))
        x = pooled_activations(model, list(test.text), hook, fwd_hooks=h, progress=False)
        randoms.append(_row(probe.logits_of(x), test))
    frame = pd.DataFrame(randoms)
    _check_row(res.table, "random", frame.mean().to_dict())
    assert res.table.loc["random", "gender_sd"] == pytest.approx(frame.gender.std(ddof=0))

    oracle = train_probe(
        None,
        None,
        list(oracle_data.profession),
        hook=hook,
        activations=pooled_activations(model, list(oracle_data.text), hook, progress=False),
    )
    _check_row(res.table, "oracle", _row(oracle.logits_of(a_test), test))
    assert list(res.table.n_ablated) == [0, 0, k, k, k, k, k, 0]
    assert len(res.skylines["feature"]) == len(res.skylines["neuron"]) == k
    assert all(n.split("/")[0] in HOOKS for n in res.skylines["neuron"])


def test_skylines_use_gender_labels_on_balanced_data(setup, source, result):
    """The feature skyline's nodes are the top-k of the probe's circuit on balanced training
    data with the gender label: recomputed here with probe_circuit."""
    from sfc_plugin.shift.circuit import probe_circuit

    model, saes = setup
    res, _ = result
    train, oracle_data, _ = _data(source)
    hook = "blocks.1.hook_resid_post"
    a_train = pooled_activations(model, list(train.text), hook, progress=False)
    probe = train_probe(None, None, list(train.profession), hook=hook, activations=a_train)
    k = len(res.ablated)
    c = probe_circuit(
        model,
        {h: saes[h] for h in HOOKS},
        probe,
        list(oracle_data.text[:4]),
        list(oracle_data.gender[:4]),
        n_features=k,
        method="atp",
        batch_size=4,
        progress=False,
    )
    assert res.skylines["feature"] == c.nodes
    gender_circuit_for_profession = probe_circuit(
        model,
        {h: saes[h] for h in HOOKS},
        probe,
        list(oracle_data.text[:4]),
        list(oracle_data.profession[:4]),
        n_features=k,
        method="atp",
        progress=False,
    )
    assert gender_circuit_for_profession.nodes != c.nodes  # the label matters


def test_resume_save_load_and_changed_settings(setup, source, result, monkeypatch):
    model, saes = setup
    res, out = result
    assert (out / "result.json").exists() and (out / "acts_train.safetensors").exists()
    calls = []
    real = experiment_module.pooled_activations
    monkeypatch.setattr(
        experiment_module,
        "pooled_activations",
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    again = run_shift(
        model, saes, judge=even_features, settings=SETTINGS, out=out, source=source, progress=False
    )
    assert calls == []  # every activation came from out/
    pd.testing.assert_frame_equal(again.table, res.table)
    loaded = ShiftResult.load(out / "result.json")
    pd.testing.assert_frame_equal(loaded.table, res.table, check_dtype=False)
    assert loaded.ablated == res.ablated and loaded.judgements == res.judgements
    assert loaded.descriptions == res.descriptions
    other = ShiftSettings(**{**SETTINGS.__dict__, "n_features": 5})
    with pytest.raises(ValueError, match=r"other settings \(\['n_features'\]\)"):
        run_shift(model, saes, judge=even_features, settings=other, out=out, source=source)
    (out / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a sfc_plugin SHIFT result file"):
        ShiftResult.load(out / "bad.json")


def test_describe_features_and_the_report(setup, result, tmp_path):
    from sfc_plugin.datasets.text import SAMPLE

    model, saes = setup
    res, _ = result
    index = build_feature_index(model, saes, SAMPLE, context=16, max_tokens=512, k=4)
    descriptions = describe_features(res.circuit, index, n_contexts=2)
    assert [d.node for d in descriptions] == list(res.circuit.node)
    for d, effect in zip(descriptions, res.circuit.effect):
        board = index.dashboard(d.hook_name, d.feature)
        assert d.effect == effect
        assert d.promoted == tuple(t.token for t in board.promoted)
        assert len(d.contexts) == min(2, len(board.contexts))
    page = tmp_path / "report.html"
    res.save_html(page, index)
    html = page.read_text()
    assert html.count("<details") == len(res.circuit)
    assert html.count("spurious, ablated") == len(res.ablated)
    assert "Pythia-70M (paper, Table 2)" in html and "CircuitsVis" in html
    assert f"{100 * res.table.loc['SHIFT', 'profession']:.1f}" in html
    assert "<script src" not in html and "<link" not in html  # nothing loaded from elsewhere


def test_a_failing_judge_names_the_node(setup, source):
    model, saes = setup

    def broken(description):
        raise KeyError("no idea")

    with pytest.raises(RuntimeError, match=r"failed on node 'blocks\.\d\.hook_\w+/f\d+'"):
        run_shift(model, saes, judge=broken, settings=SETTINGS, source=source, progress=False)


def test_nothing_judged_spurious_gives_the_original_everywhere(setup, source):
    model, saes = setup
    res = run_shift(
        model, saes, judge=lambda d: False, settings=SETTINGS, source=source, progress=False
    )
    assert res.ablated == [] and res.skylines == {"neuron": [], "feature": []}
    for name in ("random", "SHIFT", "neuron skyline", "feature skyline"):
        _check_row(res.table, name, res.table.loc["original"].to_dict())
    assert torch.isfinite(torch.tensor(res.table[["profession", "gender"]].to_numpy())).all()
