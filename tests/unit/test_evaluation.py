"""Faithfulness and completeness against a brute-force re-implementation on tiny models."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import make_saes, make_tiny_model, standard_hooks
from ground_truth import brute_metric, own_means

from sfc_plugin.attribution import node_effects
from sfc_plugin.datasets import agreement
from sfc_plugin.dictionaries import neuron_saes
from sfc_plugin.evaluation import Evaluator, circuit_scores, completeness, faithfulness
from sfc_plugin.sites import attach_saes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs(tokenizer):
    return agreement("across_pp", tokenizer, n=10)


def _setup(family, tokenizer):
    model = make_tiny_model(family, tokenizer)
    saes = make_saes(model, standard_hooks(model.cfg.n_layers), d_sae=16)
    return model, saes


def _all_nodes(saes, n_pos):
    nodes = []
    for h, sae in saes.items():
        for p in range(n_pos):
            nodes += [f"{h}/f{i}@{p}" for i in range(sae.cfg.d_sae)] + [f"{h}/err@{p}"]
    return nodes


def _tokens(model, pairs):
    return model.to_tokens([p["clean_prefix"] for p in pairs])


def test_full_model_is_one_and_empty_circuit_is_zero(family, tokenizer, pairs):
    model, saes = _setup(family, tokenizer)
    n_pos = _tokens(model, pairs).shape[1]
    full = _all_nodes(saes, n_pos)
    scores = circuit_scores(model, saes, full, pairs, progress=False)
    # every site re-encodes and recomposes its input: equal to the model to float precision
    assert scores.faithfulness == pytest.approx(1.0, abs=1e-4)
    assert scores.completeness == pytest.approx(0.0, abs=1e-4)
    empty = circuit_scores(model, saes, [], pairs, progress=False)
    assert empty.faithfulness == 0.0
    assert empty.completeness == pytest.approx(1.0, abs=1e-4)
    assert abs(scores.m_model - scores.m_empty) > 1e-3  # the scores are not 0/0


def test_metric_with_circuit_matches_brute_force(family, tokenizer, pairs):
    model, saes = _setup(family, tokenizer)
    effects = node_effects(model, saes, pairs, method="atp", progress=False)
    table = effects.to_frame()
    circuit = list(table.node[:25])
    ev = Evaluator(model, saes, pairs, progress=False)
    means = own_means(model, saes, _tokens(model, pairs))
    want = brute_metric(model, saes, pairs, set(circuit), means)
    assert ev.metric_with(circuit) == pytest.approx(want, abs=1e-4)
    complement = set(_all_nodes(saes, ev.tokens.n_pos)) - set(circuit)
    want_c = brute_metric(model, saes, pairs, complement, means)
    assert ev.metric_with(circuit, complement=True) == pytest.approx(want_c, abs=1e-4)
    # and the public functions use exactly these
    f = faithfulness(model, saes, circuit, pairs, progress=False)
    c = completeness(model, saes, circuit, pairs, progress=False)
    want_empty = brute_metric(model, saes, pairs, set(), means)
    want_model = float(ev.m_model)
    assert f == pytest.approx((want - want_empty) / (want_model - want_empty), abs=1e-4)
    assert c == pytest.approx((want_c - want_empty) / (want_model - want_empty), abs=1e-4)


def test_mean_ablation_values_are_per_position_means(tokenizer, pairs):
    model, saes = _setup("sequential", tokenizer)
    ev = Evaluator(model, saes, pairs, progress=False)
    means = own_means(model, saes, _tokens(model, pairs))
    for h, (mf, me) in means.items():
        torch.testing.assert_close(ev.ablated[h][0][0], mf, atol=1e-6, rtol=0)
        torch.testing.assert_close(ev.ablated[h][1][0], me, atol=1e-6, rtol=0)


def test_error_policies_and_start_layer(tokenizer, pairs):
    model, saes = _setup("llama", tokenizer)
    ev_pos = Evaluator(model, saes, pairs, progress=False)
    n_pos = ev_pos.tokens.n_pos
    means = own_means(model, saes, _tokens(model, pairs))
    full = _all_nodes(saes, n_pos)
    features_only = [n for n in full if "/err" not in n]
    resid_errors = [n for n in full if "/err" in n and "resid_post" in n]

    removed = Evaluator(model, saes, pairs, errors="remove", progress=False)
    want = brute_metric(model, saes, pairs, set(features_only), means)
    assert removed.metric_with(full) == pytest.approx(want, abs=1e-4)

    attn_mlp = Evaluator(model, saes, pairs, errors="remove_attn_mlp", progress=False)
    want = brute_metric(model, saes, pairs, set(features_only + resid_errors), means)
    assert attn_mlp.metric_with(full) == pytest.approx(want, abs=1e-4)

    # sites below start_layer are untouched: keeping every node from layer 1 on then gives the
    # model's metric, while from layer 0 on the layer-0 nodes are ablated
    late = Evaluator(model, saes, pairs, start_layer=1, progress=False)
    late_sites = [h for h in saes if not h.startswith("blocks.0.")]
    late_nodes = [n for n in full if not n.startswith("blocks.0.")]
    want = brute_metric(model, saes, pairs, set(late_nodes), means, sites=late_sites)
    assert late.metric_with(late_nodes) == pytest.approx(want, abs=1e-4)
    assert want == pytest.approx(late.m_model, abs=1e-4)
    assert ev_pos.metric_with(late_nodes) != pytest.approx(want, abs=1e-3)


def test_sum_aggregation_circuits_ablate_every_position(tokenizer):
    model, saes = _setup("parallel", tokenizer)
    rows = [
        {"prefix": "The cat sat on the", "answer": " mat"},
        {"prefix": "A dog", "answer": " ran"},
        {"prefix": "Once upon a", "answer": " time"},
    ]
    h = "blocks.1.hook_mlp_out"
    ev = Evaluator(model, saes, rows, aggregation="sum", ablation="zero", progress=False)
    # keep every node except feature 3 of one site (at all positions) -> zero that feature
    full = [f"{s}/f{i}" for s, sae in saes.items() for i in range(sae.cfg.d_sae)]
    full += [f"{s}/err" for s in saes]
    circuit = [n for n in full if n != f"{h}/f3"]

    def zero_feature(x, hook):
        sae = saes[h]
        f = sae.encode(x)
        e = x - sae.decode(f)
        f[..., 3] = 0
        return sae.decode(f) + e

    total = 0.0
    for row in rows:
        tokens = model.to_tokens(row["prefix"])
        with torch.no_grad(), model.hooks(fwd_hooks=[(h, zero_feature)]):
            logp = model(tokens)[0, -1].log_softmax(-1)
        total += float(logp[model.to_single_token(row["answer"])])
    assert ev.metric_with(circuit) == pytest.approx(total / len(rows), abs=1e-4)


def test_bad_node_ids_are_named(tokenizer, pairs):
    model, saes = _setup("sequential", tokenizer)
    with pytest.raises(ValueError, match="blocks.7.hook_mlp_out"):
        faithfulness(model, saes, ["blocks.7.hook_mlp_out/f1@0"], pairs, progress=False)
    with pytest.raises(ValueError, match="errors must be one of"):
        faithfulness(model, saes, [], pairs, errors="drop", progress=False)
    with pytest.raises(TypeError, match="list of node ids"):
        faithfulness(model, saes, "blocks.0.hook_mlp_out/f1@0", pairs, progress=False)


def test_neuron_dictionaries_have_no_error_and_leave_logits_unchanged(family, tokenizer, pairs):
    model = make_tiny_model(family, tokenizer)
    hooks = standard_hooks(model.cfg.n_layers) + ["blocks.1.attn.hook_z"]
    neurons = neuron_saes(model, hooks)
    tokens = _tokens(model, pairs)
    with torch.no_grad():
        plain = model(tokens)
        with attach_saes(model, neurons, grad=False) as acts:
            spliced = model(tokens)
    assert torch.equal(plain, spliced)
    for h in hooks:
        assert torch.count_nonzero(acts.errors[h]) == 0
        assert acts.features[h].shape[-1] == neurons[h].cfg.d_sae == model.cfg.d_model


def test_neuron_node_effects_equal_patching_one_coordinate(tokenizer, pairs):
    model = make_tiny_model("sequential", tokenizer)
    h = "blocks.1.hook_mlp_out"
    neurons = neuron_saes(model, [h])
    exact = node_effects(model, neurons, pairs[:4], method="exact", progress=False)
    clean = _tokens(model, pairs[:4])
    patch = model.to_tokens([p["patch_prefix"] for p in pairs[:4]])
    ans_c = torch.tensor([model.to_single_token(p["clean_answer"]) for p in pairs[:4]])
    ans_p = torch.tensor([model.to_single_token(p["patch_answer"]) for p in pairs[:4]])
    _, cache = model.run_with_cache(patch, names_filter=h)
    rows = torch.arange(4)

    def metric(logits):
        return logits[rows, -1, ans_p] - logits[rows, -1, ans_c]

    with torch.no_grad():
        base = metric(model(clean))
        for pos, unit in [(1, 5), (clean.shape[1] - 1, 17)]:

            def patch_unit(x, hook, pos=pos, unit=unit):
                x[:, pos, unit] = cache[h][:, pos, unit]
                return x

            with model.hooks(fwd_hooks=[(h, patch_unit)]):
                want = float((metric(model(clean)) - base).mean())
            assert float(exact.features[h][pos, unit]) == pytest.approx(want, abs=1e-5)


def test_faithfulness_curve_rows_equal_single_evaluations(tokenizer, pairs):
    from sfc_plugin.evaluation import faithfulness_curve, nodes_to_reach

    model, saes = _setup("sequential", tokenizer)
    train, test = pairs[:6], pairs[6:]
    effects = node_effects(model, saes, train, method="atp", progress=False)
    table = effects.to_frame()
    thresholds = [float(table.effect.abs().iloc[k]) for k in (0, 5, 40)] + [0.0]
    curve = faithfulness_curve(model, saes, train, test, thresholds, method="atp", progress=False)
    assert list(curve.kind.unique()) == ["features", "neurons"]
    feats = curve[curve.kind == "features"].reset_index(drop=True)
    assert list(feats.nodes[:3]) == [0, 5, 40]  # strictly above the k-th largest
    for t, row in zip(thresholds, feats.itertuples()):
        circuit = list(table.node[table.effect.abs() > t])
        assert row.faithfulness == pytest.approx(
            faithfulness(model, saes, circuit, test, progress=False), abs=1e-6
        )
        assert row.completeness == pytest.approx(
            completeness(model, saes, circuit, test, progress=False), abs=1e-6
        )
    assert feats.nodes.iloc[-1] == int((table.effect != 0).sum())
    neurons = curve[curve.kind == "neurons"]
    assert (neurons.error_nodes == 0).all() and neurons.nodes.is_monotonic_increasing
    # the effects passed in are used as they are (no recomputation)
    again = faithfulness_curve(
        model,
        saes,
        train,
        test,
        thresholds,
        neurons=False,
        effects={"features": effects},
        method="ig",
        progress=False,
    )
    torch.testing.assert_close(
        torch.tensor(again.faithfulness.values), torch.tensor(feats.faithfulness.values)
    )
    # an evaluator passed in is the one that scores (the report shares its own)
    ev = Evaluator(model, saes, test, progress=False)
    calls = []
    real = ev.scores
    ev.scores = lambda nodes: calls.append(1) or real(nodes)
    shared = faithfulness_curve(
        model,
        saes,
        train,
        test,
        thresholds,
        neurons=False,
        effects={"features": effects},
        evaluators={"features": ev},
        progress=False,
    )
    assert len(calls) == len(thresholds)
    pd.testing.assert_frame_equal(shared, feats)
    with pytest.raises(ValueError, match="errors='keep'"):
        faithfulness_curve(
            model,
            saes,
            train,
            test,
            thresholds,
            neurons=False,
            errors="remove",
            effects={"features": effects},
            evaluators={"features": ev},
            progress=False,
        )
    reach = nodes_to_reach(curve, 0.5)
    assert set(reach) == {"features", "neurons"}
    hit = feats[feats.faithfulness >= 0.5]
    assert reach["features"] == (int(hit.nodes.min()) if len(hit) else None)


def test_approximation_check_against_node_effects_and_plots(tokenizer, pairs, tmp_path):
    from sfc_plugin.attribution import approximation_check
    from sfc_plugin.frontend.plots import plot_approximation, plot_faithfulness_curve

    model, saes = _setup("parallel", tokenizer)
    data = pairs[:4]
    table = approximation_check(model, saes, data, top=3, steps=4, progress=False)
    assert set(table.component) == {"attn_out", "mlp_out", "resid_post"}
    assert table.groupby("component").size().max() == 3
    atp = node_effects(model, saes, data, method="atp", progress=False).to_frame()
    ig = node_effects(model, saes, data, method="ig", steps=4, progress=False).to_frame()
    for frame, col in ((atp, "atp"), (ig, "ig")):
        want = frame.set_index("node").effect.reindex(table.node).fillna(0.0)
        torch.testing.assert_close(
            torch.tensor(table[col].values), torch.tensor(want.values), atol=1e-6, rtol=0
        )
    # exact values are those of exact patching (checked against brute force in test_effects)
    exact = node_effects(model, saes, data, method="exact", progress=False).to_frame()
    want = exact.set_index("node").effect.reindex(table.node).fillna(0.0)
    torch.testing.assert_close(
        torch.tensor(table.exact.values), torch.tensor(want.values), atol=1e-6, rtol=0
    )
    plot_approximation(table, title="tiny").savefig(tmp_path / "a.png")
    curve = pd.DataFrame(
        {
            "kind": ["features", "features", "neurons"],
            "nodes": [1, 10, 30],
            "faithfulness": [0.2, 0.9, 0.5],
            "completeness": [0.8, 0.1, 0.4],
        }
    )
    plot_faithfulness_curve({"a": curve, "b": curve}).savefig(tmp_path / "c.png")
    assert (tmp_path / "a.png").stat().st_size > 5000 and (tmp_path / "c.png").stat().st_size > 5000


def test_threshold_chosen_on_validation_is_the_smallest_faithful_circuit(
    tokenizer, pairs, tmp_path
):
    from sfc_plugin.evaluation import smallest_faithful_threshold
    from sfc_plugin.experiments.report import circuit_report

    model, saes = _setup("sequential", tokenizer)
    train, validation, test = pairs[:4], pairs[4:7], pairs[7:]
    effects = node_effects(model, saes, train, method="atp", progress=False)
    table = effects.to_frame()
    size = table.effect.abs()
    # thresholds at the k-th largest |effect|: the circuits are the top k nodes
    thresholds = [float(size.iloc[k]) for k in range(40)]
    truth = [
        faithfulness(model, saes, list(table.node[:k]), validation, progress=False)
        for k in range(40)
    ]
    ev = Evaluator(model, saes, validation, progress=False)
    target = truth[12]
    first = next(k for k, f in enumerate(truth) if f >= target)
    choice = smallest_faithful_threshold(effects, ev, target, thresholds)
    assert choice.reached and choice.threshold == thresholds[first]
    assert choice.nodes == ev.count_nodes(list(table.node[:first]))
    assert choice.faithfulness == pytest.approx(truth[first], abs=1e-6)
    assert list(choice.sweep.faithfulness) == pytest.approx(truth[: first + 1], abs=1e-6)
    # out of reach: the most faithful circuit of the sweep
    best = max(range(40), key=lambda k: truth[k])
    missed = smallest_faithful_threshold(effects, ev, max(truth) + 1.0, thresholds)
    assert not missed.reached and missed.threshold == thresholds[best]

    with pytest.raises(ValueError, match="data_validation"):
        circuit_report(model, saes, train, test, None, target_faithfulness=0.5, progress=False)
    report = circuit_report(
        model, saes, train, test, tmp_path / "report.html", method="atp",
        data_validation=validation, target_faithfulness=target, curve=False, progress=False,
    )  # fmt: skip
    chosen = report.choice
    assert chosen is not None and chosen.reached
    nodes = list(report.circuit.nodes.node)
    assert set(nodes) == set(table.node[size > chosen.threshold])
    assert chosen.faithfulness == pytest.approx(
        faithfulness(model, saes, nodes, validation, progress=False), abs=1e-6
    )
    assert chosen.faithfulness >= target
    assert report.faithfulness == pytest.approx(
        faithfulness(model, saes, nodes, test, progress=False), abs=1e-6
    )
    assert report.circuit.settings["node_threshold"] == chosen.threshold
    assert report.circuit.settings["threshold_choice"]["validation_pairs"] == len(validation)
    assert "validation pairs" in report.summary()
    assert "validation" in (tmp_path / "report.html").read_text()
