"""``sfc_plugin.tracing.trace``: hierarchical tracing of direct effects into a ``Circuit``.

Ground truth, independent of sfc_plugin (plain TransformerLens hooks, each dictionary's own
``encode``/``decode``, ``torch.autograd``): the *live* replacement model freezes every
attention pattern and norm scale at its clean value and replaces each site's output by
``decode(encode(x_read) + delta) + eps_clean``, so gradients flow through the encoders and
their activation masks (ReLU, TopK selection) but never through an MLP; an MLP without a
transcoder is frozen at its clean output. With every node traced (thresholds 0, no depth
limit) a node's influence on the target is ``a_s * dT/da_s`` (features, through ``delta``)
or ``v . dT/dv`` (errors, embeddings and frozen MLP outputs ``v``), mean over examples.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    TRACING_ROWS,
    clean_replacement_run,
    dictionary_read_hook,
    is_frozen_hook,
    make_replacement_dictionaries,
    make_tiny_model,
    pre_activation,
    replacement_leaf_hooks,
)

from sfc_plugin.circuit import Circuit
from sfc_plugin.tracing.direct import direct_effects
from sfc_plugin.tracing.trace import TraceBudgetError, trace

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = TRACING_ROWS
N_LAYERS = 3
METRIC = "metric"


def make_saes(skip_mlp: tuple[int, ...] = ()):
    return make_replacement_dictionaries(N_LAYERS, skip_mlp)


# ------------------------------------------------------------------ ground truth (independent)


def _tokens(model, rows):
    clean = torch.stack([model.to_tokens(r["clean_prefix"], prepend_bos=False)[0] for r in rows])
    ids = []
    for key in ("clean_answer", "patch_answer"):
        one = [model.to_tokens(r[key], prepend_bos=False)[0] for r in rows]
        assert all(len(t) == 1 for t in one)
        ids.append(torch.stack(one)[:, 0])
    return clean, ids[0], ids[1]


def live_influences(model, saes, rows, feature_targets=(), metric=True):
    """Per-example influence of every node on ``T = metric + sum of the feature targets'
    pre-activations`` in the live replacement model: ``{node id: [n]}``, the target
    features' pre-activations and the clean activations of every site ``{hook: [n, P, d]}``.
    ``feature_targets``: ``(hook, feature, position)`` of transcoder/SAE features."""
    tokens, clean_ans, patch_ans = _tokens(model, rows)
    n, n_pos = tokens.shape

    # clean run of the unmodified model: patterns, scales, site errors and frozen leaves
    frozen, clean_feat, clean_err, leaves = clean_replacement_run(model, saes, tokens)

    # live replacement run
    deltas = {h: torch.zeros_like(f, requires_grad=True) for h, f in clean_feat.items()}
    errs = {h: e.clone().requires_grad_(True) for h, e in clean_err.items()}
    leaf_in = {h: v.clone().requires_grad_(True) for h, v in leaves.items()}
    live_reads = {}

    def replace_frozen(x, hook):
        return frozen[hook.name]

    def keep_read(x, hook):
        live_reads[hook.name] = x

    def site_out(x, hook):
        sae = saes[hook.name]
        f = sae.encode(live_reads[dictionary_read_hook(hook.name, sae)]) + deltas[hook.name]
        return sae.decode(f) + errs[hook.name]

    def leaf_out(x, hook):
        return leaf_in[hook.name]

    hooks = [(is_frozen_hook, replace_frozen)]
    hooks += [(dictionary_read_hook(h, s), keep_read) for h, s in saes.items()]
    hooks += [(h, site_out) for h in saes]
    hooks += [(h, leaf_out) for h in replacement_leaf_hooks(model, saes)]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
        # reads of target features (their pre-activations), taken in the same live pass
        pres = []
        for hook, feature, position in feature_targets:
            sae = saes[hook]
            x = live_reads[dictionary_read_hook(hook, sae)][:, position]
            pres.append(pre_activation(sae, x, feature))
        last = logits[:, -1]
        ar = torch.arange(n)
        value = torch.zeros(n)
        if metric:
            value = value + last[ar, patch_ans] - last[ar, clean_ans]
        for pre in pres:
            value = value + pre
        value.sum().backward()

    def grad(x):
        return x.grad if x.grad is not None else torch.zeros_like(x)

    influence = {}
    for hook, f in clean_feat.items():
        infl = (f * grad(deltas[hook])).detach()
        for p in range(n_pos):
            for i in range(f.shape[-1]):
                influence[f"{hook}/f{i}@{p}"] = infl[:, p, i]
        e = (clean_err[hook] * grad(errs[hook])).sum(-1).detach()
        for p in range(n_pos):
            influence[f"{hook}/err@{p}"] = e[:, p]
    for hook, v in leaves.items():
        e = (v * grad(leaf_in[hook])).sum(-1).detach()
        for p in range(n_pos):
            influence[f"{hook}/err@{p}"] = e[:, p]
    return influence, [p.detach() for p in pres], clean_feat


def assert_matches_truth(circuit, truth, atol_rel=1e-4, extra=None):
    """Every node of the circuit has its ground-truth mean influence (plus ``extra[node]``),
    every node missing from it has ground truth ~0, and the check is not vacuous."""
    extra = extra or {}
    mean = {k: float(v.mean()) for k, v in truth.items()}
    scale = max(abs(v) for v in mean.values())
    atol = atol_rel * max(scale, 1.0)
    got = dict(zip(circuit.nodes.node, circuit.nodes.effect))
    assert set(got) <= set(mean), set(got) - set(mean)
    bad = {
        k: (v, mean[k] + extra.get(k, 0.0))
        for k, v in got.items()
        if abs(v - mean[k] - extra.get(k, 0.0)) > atol
    }
    assert not bad, f"{len(bad)} of {len(got)} nodes differ from the ground truth: {bad}"
    absent = {k: v for k, v in mean.items() if k not in got and abs(v) > atol}
    assert not absent, f"nodes with a nonzero influence missing from the circuit: {absent}"
    big = [k for k, v in mean.items() if abs(v) > 1e-2]
    assert len(big) >= 10, "vacuous: too few nodes with a sizeable influence"
    kinds = {k.split("/")[1][0] for k in big}
    assert kinds == {"f", "e"}, kinds
    return mean


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def models(tokenizer):
    return {
        fam: make_tiny_model(fam, tokenizer, seed=3, n_layers=N_LAYERS)
        for fam in ("sequential", "parallel", "llama")
    }


def _full(model, saes, target=METRIC, **kw):
    kw = dict(node_threshold=0, edge_threshold=0, max_depth=None, progress=False) | kw
    return trace(model, saes, ROWS, target, **kw)


@pytest.fixture(scope="module")
def sequential_full(models):
    model, saes = models["sequential"], make_saes()
    return model, saes, _full(model, saes)


# ------------------------------------------------------------------ the ground truth


@pytest.mark.parametrize("family", ["sequential", "parallel", "llama"])
def test_influence_with_zero_thresholds_is_live_gradient_times_activation(models, family):
    model, saes = models[family], make_saes()
    circuit = _full(model, saes)
    truth, _, feats = live_influences(model, saes, ROWS)
    mean = assert_matches_truth(circuit, truth)
    # features of every site and errors of every site are among the sizeable nodes
    big_hooks = {k.split("/")[0] for k, v in mean.items() if abs(v) > 1e-3}
    assert set(saes) <= big_hooks
    assert "hook_embed" in big_hooks
    assert set(circuit.nodes.kind) >= {"feature", "error", "embedding"}
    # the TopK site really selects (some features inactive) and some of its features matter
    topk = feats["blocks.1.hook_attn_out"]
    assert ((topk > 0).sum(-1) <= 6).all()
    assert any(abs(v) > 1e-3 for k, v in mean.items() if k.startswith("blocks.1.hook_attn_out/f"))
    # an inactive feature is no node
    for node in circuit.nodes[circuit.nodes.kind == "feature"].itertuples():
        assert bool((feats[node.hook_name][:, node.position, node.feature] > 0).any())
    assert circuit.settings["effects"] == "direct"
    assert circuit.settings["targets"] == [METRIC]
    assert circuit.settings["frozen_hooks"] == [
        h for h in ("hook_embed", "hook_pos_embed") if h in model.hook_dict
    ]


def test_influence_is_not_just_the_direct_effect(sequential_full, models):
    """Non-vacuity of the recursion: many nodes reach the metric through other nodes, so
    their influence differs from their direct effect on the metric."""
    model, saes, circuit = sequential_full
    de = _mean_direct(model, saes, METRIC)
    effect = dict(zip(circuit.nodes.node, circuit.nodes.effect))
    differ = [k for k, v in effect.items() if abs(v - de.get(k, 0.0)) > 1e-2]
    assert len(differ) >= 10
    # features at early positions cannot reach the last token directly except by attention,
    # and the early layers' features reach it through later sites: some have no direct edge
    edges = circuit.edges
    into_metric = set(edges.upstream[edges.downstream == METRIC])
    assert set(effect) - into_metric


def test_pair_target_equals_the_metric(sequential_full):
    """For these pairs the metric is logit(' a') - logit(' the'): the same circuit."""
    model, saes, circuit = sequential_full
    pair = _full(model, saes, (" a", " the"))
    assert pair.settings["targets"] == ["logit(' a')-logit(' the')"]
    a = dict(zip(circuit.nodes.node, circuit.nodes.effect))
    b = dict(zip(pair.nodes.node, pair.nodes.effect))
    assert set(a) == set(b)
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5


# ------------------------------------------------------------------ edges


def _mean_direct(model, saes, target, rows=ROWS, **kw):
    """Mean over examples of every source's direct effect on ``target`` (direct_effects)."""
    frame = direct_effects(model, saes, rows, [target], progress=False, **kw)
    frame = frame[(frame.target == frame.target.iloc[0]) & (frame.source != "value")]
    return (frame.groupby("source").effect.sum() / len(rows)).to_dict()


def test_edges_into_the_metric_are_direct_effects(sequential_full):
    model, saes, circuit = sequential_full
    de = _mean_direct(model, saes, METRIC)
    edges = circuit.edges
    into = edges[edges.downstream == METRIC]
    assert len(into) >= 10
    for up, effect in zip(into.upstream, into.effect):
        assert effect == pytest.approx(de[up], abs=1e-5), up
    # every node of the circuit with a nonzero direct effect has its edge to the metric
    nodes = set(circuit.nodes.node)
    expected = {k for k, v in de.items() if abs(v) > 1e-6 and k in nodes}
    assert expected <= set(into.upstream), expected - set(into.upstream)
    # sources of a direct effect on the metric are (with threshold 0) all nodes
    assert {k for k, v in de.items() if abs(v) > 1e-6} <= nodes


def test_influence_is_the_sum_of_outgoing_edges(sequential_full):
    _, _, circuit = sequential_full
    edges = circuit.edges
    nodes = set(circuit.nodes.node)
    assert set(edges.upstream) <= nodes
    assert set(edges.downstream) <= nodes | {METRIC}
    assert not edges.duplicated(["upstream", "downstream"]).any()
    out = edges.groupby("upstream").effect.sum().to_dict()
    scale = circuit.nodes.effect.abs().max()
    for node, effect in zip(circuit.nodes.node, circuit.nodes.effect):
        assert out.get(node, 0.0) == pytest.approx(effect, abs=1e-5 * scale), node
    # every node feeds something, and edges into features exist (the recursion ran)
    assert set(out) == nodes
    assert (edges.downstream != METRIC).sum() > (edges.downstream == METRIC).sum()


def test_edges_into_a_feature_are_direct_effects_times_its_weight(sequential_full):
    """``s -> t`` carries ``mean_e DE_e(s -> pre_t) * w_e(t)``, ``w_e(t) = I_e(t) / a_e(t)``
    (0 where ``t`` is inactive), with ``I`` the live ground truth."""
    model, saes, circuit = sequential_full
    truth, _, feats = live_influences(model, saes, ROWS)
    nodes = circuit.nodes
    picked = nodes[(nodes.kind == "feature") & (nodes.layer >= 1)].head(3)
    assert len(picked) == 3
    edges = circuit.edges
    for t in picked.itertuples():
        a = feats[t.hook_name][:, t.position, t.feature]
        w = torch.where(a > 0, truth[t.node] / a.clamp(min=1e-30), torch.zeros(()))
        frame = direct_effects(model, saes, ROWS, [t.node], progress=False)
        frame = frame[frame.source != "value"]
        expected = {}
        for src, group in frame.groupby("source"):
            per = torch.zeros(len(ROWS))
            per[torch.tensor(group.example.tolist())] = torch.tensor(group.effect.tolist())
            expected[src] = float((per * w).mean())
        got = edges[edges.downstream == t.node]
        got = dict(zip(got.upstream, got.effect))
        assert len(got) >= 3
        for src, effect in got.items():
            assert effect == pytest.approx(expected[src], abs=1e-5), (src, t.node)
        missing = {s: v for s, v in expected.items() if abs(v) > 1e-5 and s not in got}
        assert not missing, (t.node, missing)
        # the incoming edges sum to mean_e w_e(t) * (sum of direct effects on pre_t)
        assert sum(got.values()) == pytest.approx(sum(expected.values()), abs=1e-5)


# ------------------------------------------------------------------ thresholds and depth


def test_node_threshold_keeps_nodes_above_it(models):
    model, saes = models["sequential"], make_saes()
    circuits = {}
    for tau in (0.02, 0.1):
        c = trace(model, saes, ROWS, node_threshold=tau, edge_threshold=0.005, progress=False)
        assert len(c.nodes) >= 3
        assert (c.nodes.effect.abs() > tau).all(), c.nodes[c.nodes.effect.abs() <= tau]
        assert (c.edges.effect.abs() > 0.005).all()
        nodes = set(c.nodes.node)
        assert set(c.edges.upstream) <= nodes
        assert set(c.edges.downstream) <= nodes | {METRIC}
        assert c.settings["node_threshold"] == tau and c.settings["edge_threshold"] == 0.005
        circuits[tau] = c
    small, large = (set(circuits[t].nodes.node) for t in (0.02, 0.1))
    assert large <= small, large - small
    assert len(large) < len(small)
    assert circuits[0.1].settings["rows"] < circuits[0.02].settings["rows"]


def test_max_depth_one_keeps_only_direct_parents_of_the_metric(models):
    model, saes = models["sequential"], make_saes()
    circuit = _full(model, saes, max_depth=1)
    de = _mean_direct(model, saes, METRIC)
    edges = circuit.edges
    assert set(edges.downstream) == {METRIC}
    nodes = set(circuit.nodes.node)
    assert nodes == set(edges.upstream)
    assert nodes == {k for k, v in de.items() if v != 0}
    for node, effect in zip(circuit.nodes.node, circuit.nodes.effect):
        assert effect == pytest.approx(de[node], abs=1e-5)
    assert circuit.settings["max_depth"] == 1
    assert circuit.settings["rows"] == len(ROWS)  # only the metric was traced


# ------------------------------------------------------------------ feature targets


def _active_feature(feats, hook, position):
    """The feature at ``hook`` and ``position`` active in every example with the largest
    mean activation."""
    a = feats[hook][:, position]
    score = torch.where((a > 0).all(0), a.mean(0), torch.full_like(a[0], -1.0))
    feature = int(score.argmax())
    assert score[feature] > 0
    return feature


def test_feature_target_and_list_target(models):
    model, saes = models["sequential"], make_saes()
    _, _, feats = live_influences(model, saes, ROWS)
    hook, pos = "blocks.2.hook_mlp_out", 3
    f = _active_feature(feats, hook, pos)
    node = f"{hook}/f{f}@{pos}"
    a_mean = float(feats[hook][:, pos, f].mean())

    # the feature alone: upstream nodes carry their influence on its pre-activation
    alone = _full(model, saes, node)
    assert node in set(alone.nodes.node)
    assert alone.settings["targets"] == [node]
    assert alone.settings["metric_clean"] is None
    truth, _, _ = live_influences(model, saes, ROWS, [(hook, f, pos)], metric=False)
    assert_matches_truth(alone, truth, extra={node: a_mean})
    # nothing at or after the target's hook but the target, and edges end at the target
    later = alone.nodes[alone.nodes.hook_name == hook]
    assert list(later.node) == [node]
    assert METRIC not in set(alone.edges.downstream)
    assert node in set(alone.edges.downstream)

    # the metric plus the feature: their sum is traced
    both = _full(model, saes, [METRIC, node])
    assert node in set(both.nodes.node)
    assert both.settings["targets"] == [METRIC, node]
    truth, _, _ = live_influences(model, saes, ROWS, [(hook, f, pos)], metric=True)
    assert_matches_truth(both, truth, extra={node: a_mean})


def test_feature_target_of_an_attention_sae(models):
    """A target at an SAE reading the hook it writes (no MLP crossed)."""
    model, saes = models["llama"], make_saes()
    _, _, feats = live_influences(model, saes, ROWS)
    hook, pos = "blocks.1.hook_attn_out", 2
    f = _active_feature(feats, hook, pos)
    node = f"{hook}/f{f}@{pos}"
    circuit = _full(model, saes, node)
    truth, _, _ = live_influences(model, saes, ROWS, [(hook, f, pos)], metric=False)
    extra = {node: float(feats[hook][:, pos, f].mean())}
    assert_matches_truth(circuit, truth, extra=extra)
    assert set(circuit.nodes.position) <= set(range(pos + 1))  # causal


# ------------------------------------------------------------------ budget


def test_budget_error_and_stop(models):
    model, saes = models["sequential"], make_saes()
    with pytest.raises(TraceBudgetError, match="max_nodes=3"):
        trace(model, saes, ROWS, node_threshold=0.001, max_nodes=3, progress=False)
    with pytest.warns(UserWarning, match="max_nodes=3"):
        circuit = trace(
            model, saes, ROWS, node_threshold=0.001, max_nodes=3, on_budget="stop", progress=False
        )
    assert 1 <= len(circuit.nodes) <= 3
    assert isinstance(circuit.settings["stopped"], str) and circuit.settings["stopped"]
    assert (circuit.nodes.effect.abs() > 0.001).all()
    nodes = set(circuit.nodes.node)
    assert set(circuit.edges.upstream) <= nodes
    assert set(circuit.edges.downstream) <= nodes | {METRIC}
    # the ample budget does not stop
    full = trace(model, saes, ROWS, node_threshold=0.001, progress=False)
    assert full.settings["stopped"] is None
    assert len(full.nodes) > 3


# ------------------------------------------------------------------ missing transcoders


def test_missing_transcoder_is_a_frozen_error_or_refused(models):
    model = models["parallel"]
    saes = make_saes(skip_mlp=(1,))
    circuit = _full(model, saes, missing="error")
    frozen = circuit.settings["frozen_hooks"]
    assert "blocks.1.hook_mlp_out" in frozen
    assert circuit.settings["missing"] == "error"
    at = circuit.nodes[circuit.nodes.hook_name == "blocks.1.hook_mlp_out"]
    assert len(at) >= 1
    assert set(at.kind) == {"error"}
    assert all(n.startswith("blocks.1.hook_mlp_out/err@") for n in at.node)
    truth, _, _ = live_influences(model, saes, ROWS)
    assert_matches_truth(circuit, truth)

    with pytest.raises(ValueError, match=r"blocks\.1\.hook_mlp_out"):
        trace(model, saes, ROWS, missing="refuse", progress=False)
    # an MLP the trace does not cross (after a feature target) is no reason to refuse
    _, _, feats = live_influences(model, saes, ROWS)
    f = _active_feature(feats, "blocks.1.hook_attn_out", 3)
    node = f"blocks.1.hook_attn_out/f{f}@3"
    ok = _full(model, saes, node, missing="refuse")
    assert node in set(ok.nodes.node)


# ------------------------------------------------------------------ save / load, arguments


def test_save_load_round_trip(sequential_full, tmp_path):
    _, _, circuit = sequential_full
    path = tmp_path / "traced.json"
    circuit.save(path)
    back = Circuit.load(path)
    assert back.settings["effects"] == "direct"
    assert back.settings == circuit.settings
    assert list(back.nodes.node) == list(circuit.nodes.node)
    assert list(back.nodes.kind) == list(circuit.nodes.kind)
    assert back.nodes.effect.tolist() == pytest.approx(circuit.nodes.effect.tolist())
    assert back.edges[["upstream", "downstream"]].values.tolist() == (
        circuit.edges[["upstream", "downstream"]].values.tolist()
    )
    assert back.edges.effect.tolist() == pytest.approx(circuit.edges.effect.tolist())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(node_threshold=-1), "node_threshold"),
        (dict(edge_threshold=-0.5), "edge_threshold"),
        (dict(max_nodes=0), "max_nodes"),
        (dict(max_depth=0), "max_depth"),
        (dict(on_budget="x"), "on_budget"),
        (dict(batch_rows=0), "batch_rows"),
        (dict(target=[]), "empty"),
        (dict(missing="x"), "missing"),
        (dict(target="blocks.2.hook_mlp_out/f99@3"), "d_sae"),
        (dict(target="blocks.2.hook_resid_post/f1@3"), "not one of the sites"),
    ],
)
def test_bad_arguments(models, kwargs, match):
    model, saes = models["sequential"], make_saes()
    with pytest.raises(ValueError, match=match):
        trace(model, saes, ROWS, progress=False, **kwargs)


def test_batch_rows_do_not_change_the_circuit(models):
    model, saes = models["llama"], make_saes()
    one = _full(model, saes, batch_rows=1)
    many = _full(model, saes, batch_rows=64)
    assert one.settings["rows"] == many.settings["rows"]
    a = dict(zip(one.nodes.node, one.nodes.effect))
    b = dict(zip(many.nodes.node, many.nodes.effect))
    assert set(a) == set(b)
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5
    ea = {(u, d): e for u, d, e in one.edges.itertuples(index=False)}
    eb = {(u, d): e for u, d, e in many.edges.itertuples(index=False)}
    assert set(ea) == set(eb)
    assert max(abs(ea[k] - eb[k]) for k in ea) < 1e-5
