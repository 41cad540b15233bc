"""The probe's circuit and feature ablation (sfc_plugin.shift.circuit, .ablation) against
ground truth computed here: one unpadded forward per text with plain TransformerLens hooks,
the probe's own pooling written out, and ``torch.autograd`` for gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import make_saes, make_tiny_model

from sfc_plugin.attribution import node_effects
from sfc_plugin.data import read_dataset, tokenize
from sfc_plugin.metrics import forward_metric
from sfc_plugin.shift import pooled_activations, train_probe
from sfc_plugin.shift.ablation import (
    ablation_hooks,
    feature_sets,
    mean_features,
    random_features,
)
from sfc_plugin.shift.circuit import probe_circuit, probe_metric, probe_sites

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "She teaches nursing at the clinic.",
    "He wrote papers on algebra and taught.",
    "The ward was quiet and the patients slept.",
    "His lectures filled the hall.",
    "She cares for children on night shifts.",
]
LABELS = [1, 0, 1, 0, 1]
HOOKS = ["blocks.0.hook_attn_out", "blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
LATE = "blocks.2.hook_resid_post"  # after the probe's hook (blocks.1.hook_resid_post)


@pytest.fixture(scope="module", params=["sequential", "parallel"])
def setup(request, tokenizer):
    model = make_tiny_model(request.param, tokenizer, seed=7)
    model.cfg.default_prepend_bos = True  # the probe's pooling then drops position 0
    saes = make_saes(model, HOOKS + [LATE], d_sae=12, seed=3)
    probe = train_probe(model, TEXTS, LABELS, progress=False)
    yield model, saes, probe
    model.cfg.default_prepend_bos = False


def own_probe_value(model, probe, tokens, label, hook=None, output=None):
    """Signed probe logit of one unpadded text, with ``hook``'s activation set to ``output``."""
    seen = {}
    hooks = [] if hook is None else [(hook, lambda x, hook: output)]
    hooks.append((probe.hook, lambda x, hook: seen.update(x=x)))
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    pooled = seen["x"][0, 1:].mean(0, keepdim=True)
    logit = probe.linear(pooled)[0, 0]
    return logit if label == 0 else -logit


def own_site(model, sae, hook, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    x = cache[hook]
    f = sae.encode(x)
    return f, x - sae.decode(f)


def test_probe_metric_is_the_signed_logit_of_the_probe_pooling(setup):
    model, _, probe = setup
    tokens = tokenize(
        model, read_dataset([{"prefix": t} for t in TEXTS]), same_length=False, need_patch=False
    )
    batch = tokens.tokens  # one right-padded batch of every text
    got = forward_metric(model, probe_metric(model, probe, LABELS), batch)
    logits = probe.logits(model, TEXTS, progress=False)
    sign = 1 - 2 * torch.tensor(LABELS, dtype=torch.float32)
    torch.testing.assert_close(got, sign * logits, atol=1e-5, rtol=1e-5)
    want = [own_probe_value(model, probe, model.to_tokens(t), y) for t, y in zip(TEXTS, LABELS)]
    torch.testing.assert_close(got, torch.stack(want).detach(), atol=1e-5, rtol=1e-5)


def _truth(model, saes, probe, method, steps=3):
    """hook -> (features [d_sae], error []) summed over positions, mean over texts: zero
    ablation, per position (exact) or IG/AtP with the whole site interpolated."""
    out = {}
    for h in HOOKS:
        sae = saes[h]
        tot_f, tot_e = torch.zeros(sae.cfg.d_sae), torch.zeros(())
        for text, label in zip(TEXTS, LABELS):
            tokens = model.to_tokens(text)
            fc, ec = own_site(model, sae, h, tokens)
            if method == "exact":
                with torch.no_grad():
                    clean = own_probe_value(model, probe, tokens, label)
                    for p in range(1, tokens.shape[1]):  # BOS left out of the sum
                        for i in range(sae.cfg.d_sae):
                            if fc[0, p, i] == 0:
                                continue
                            f = fc.clone()
                            f[0, p, i] = 0
                            v = own_probe_value(
                                model,
                                probe,
                                tokens,
                                label,
                                h,
                                sae.decode(f) + ec,
                            )
                            tot_f[i] += v - clean
                        e = ec.clone()
                        e[0, p] = 0
                        v = own_probe_value(
                            model,
                            probe,
                            tokens,
                            label,
                            h,
                            sae.decode(fc) + e,
                        )
                        tot_e += v - clean
                continue
            alphas = [0.0] if method == "atp" else [k / steps for k in range(steps)]
            gf, ge = torch.zeros_like(fc), torch.zeros_like(ec)
            for a in alphas:
                f = ((1 - a) * fc).detach().requires_grad_()
                e = ((1 - a) * ec).detach().requires_grad_()
                v = own_probe_value(model, probe, tokens, label, h, sae.decode(f) + e)
                g = torch.autograd.grad(v, [f, e])
                gf += g[0] / len(alphas)
                ge += g[1] / len(alphas)
            tot_f += (gf * -fc).detach()[0, 1:].sum(0)  # BOS left out of the sum
            tot_e += (ge * -ec).detach()[0, 1:].sum()
        out[h] = (tot_f / len(TEXTS), tot_e / len(TEXTS))
    return out


@pytest.mark.parametrize("method", ["exact", "atp", "ig"])
def test_probe_node_effects_match_ground_truth(setup, method):
    """Variable-length texts right-padded in batches of 2 (one partial): effects of every
    feature and error of the sites before the probe, summed over positions."""
    model, saes, probe = setup
    sites = probe_sites(saes, probe)
    assert list(sites) == HOOKS  # the site after the probe's hook takes no part
    with_bos = node_effects(
        model,
        sites,
        [{"prefix": t} for t in TEXTS],
        method="atp",
        metric=probe_metric(model, probe, LABELS),
        ablation="zero",
        aggregation="sum",
        progress=False,
    )
    res = node_effects(
        model,
        sites,
        [{"prefix": t} for t in TEXTS],
        method=method,
        steps=3,
        metric=probe_metric(model, probe, LABELS),
        ablation="zero",
        aggregation="sum",
        batch_size=2,
        skip_bos=True,
        progress=False,
    )
    truth = _truth(model, saes, probe, method)
    assert (with_bos.features[HOOKS[0]] - res.features[HOOKS[0]]).abs().max() > 1e-4
    for h in HOOKS:
        want_f, want_e = truth[h]
        assert want_f.abs().max() > 1e-3, "vacuous ground truth"
        torch.testing.assert_close(res.features[h], want_f, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(res.errors[h], want_e, atol=2e-5, rtol=1e-4)


def test_probe_circuit_keeps_the_largest_positive_effects(setup):
    model, saes, probe = setup
    circuit = probe_circuit(
        model, saes, probe, TEXTS, LABELS, n_features=5, method="atp", progress=False
    )
    frame = circuit.effects.to_frame()
    positive = frame[(frame.kind == "feature") & (frame.effect > 0)]
    want = positive.sort_values("effect", ascending=False).head(5)
    assert circuit.nodes == list(want.node)
    assert (circuit.features.effect.diff().dropna() <= 0).all()
    assert set(circuit.features.hook_name) <= set(HOOKS)
    assert str(circuit.features.feature.dtype) == "Int64"  # indices, as in Circuit.nodes
    assert list(circuit.features.feature) == list(want.feature)
    floor = circuit.features.effect.min()
    assert (circuit.errors.effect.abs() >= floor).all()
    assert len(circuit.errors) == int(
        ((frame.kind == "error") & (frame.effect.abs() >= floor)).sum()
    )
    by_threshold = probe_circuit(
        model, saes, probe, TEXTS, LABELS, threshold=float(floor), method="atp", progress=False
    )
    assert by_threshold.nodes == circuit.nodes[:-1]  # strictly above the threshold
    assert "5 features" in repr(circuit)


def test_sites_after_the_probe_hook_are_refused(setup):
    model, saes, probe = setup
    with pytest.raises(ValueError, match=r"blocks\.2\.hook_resid_post.*come after"):
        node_effects(
            model,
            saes,
            [{"prefix": t} for t in TEXTS],
            metric=probe_metric(model, probe, LABELS),
            ablation="zero",
            aggregation="sum",
            progress=False,
        )
    with pytest.raises(ValueError, match="no SAE writes at or before the probe's hook"):
        probe_sites({LATE: saes[LATE]}, probe)


def test_skip_bos_needs_summed_effects_and_a_bos(setup, tokenizer):
    model, saes, probe = setup
    rows = [{"prefix": t} for t in TEXTS]
    metric = probe_metric(model, probe, LABELS)
    sites = probe_sites(saes, probe)
    with pytest.raises(ValueError, match="skip_bos needs aggregation='sum'"):
        node_effects(model, sites, rows[:1], metric=metric, ablation="zero", skip_bos=True)
    model.cfg.default_prepend_bos = False
    try:
        with pytest.raises(ValueError, match="prepends BOS"):
            node_effects(
                model,
                sites,
                rows,
                metric=metric,
                ablation="zero",
                aggregation="sum",
                skip_bos=True,
                progress=False,
            )
    finally:
        model.cfg.default_prepend_bos = True


def test_bad_labels_and_texts_are_named(setup):
    model, saes, probe = setup
    with pytest.raises(ValueError, match=r"labels\[1\] is 2"):
        probe_circuit(model, saes, probe, TEXTS, [0, 2, 1, 0, 1], progress=False)
    with pytest.raises(ValueError, match="5 labels for 2 texts"):
        probe_circuit(model, saes, probe, TEXTS[:2], LABELS, progress=False)


# --------------------------------------------------------------------------------- ablation


def _own_pooled_ablated(model, saes, texts, nodes, fill=None):
    """Mean over non-BOS tokens at the probe hook with the listed features set to zero (or
    ``fill``) at every position, each site's error kept, one unpadded forward per text."""
    out = []
    for text in texts:
        tokens = model.to_tokens(text)
        hooks = []
        for h, feats in nodes.items():
            sae = saes[h]

            def replace(x, hook, sae=sae, feats=feats, h=h):
                f = sae.encode(x)
                err = x - sae.decode(f)
                f = f.clone()
                f[..., feats] = 0.0 if fill is None else fill[h][feats]
                return sae.decode(f) + err

            hooks.append((h, replace))
        seen = {}
        hooks.append(("blocks.1.hook_resid_post", lambda x, hook, seen=seen: seen.update(x=x)))
        model.run_with_hooks(tokens, fwd_hooks=hooks)
        out.append(seen["x"][0, 1:].mean(0))
    return torch.stack(out).detach()


def test_ablation_hooks_zero_features_at_every_position_keeping_the_error(setup):
    model, saes, _ = setup
    nodes = ["blocks.0.hook_attn_out/f1", "blocks.0.hook_attn_out/f4", "blocks.1.hook_mlp_out/f0"]
    hooks = ablation_hooks(model, saes, nodes)
    got = pooled_activations(model, TEXTS, fwd_hooks=hooks, batch_size=2, progress=False)
    want = _own_pooled_ablated(
        model, saes, TEXTS, {"blocks.0.hook_attn_out": [1, 4], "blocks.1.hook_mlp_out": [0]}
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = pooled_activations(model, TEXTS, progress=False)
    assert (got - plain).abs().max() > 1e-4, "the ablation changed nothing"
    assert ablation_hooks(model, saes, []) == []


def test_mean_ablation_and_means(setup):
    model, saes, _ = setup
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    means = mean_features(model, {h: saes[h] for h in hooks}, TEXTS, batch_size=2)
    for h in hooks:
        rows = [own_site(model, saes[h], h, model.to_tokens(t))[0][0, 1:] for t in TEXTS]
        torch.testing.assert_close(means[h], torch.cat(rows).mean(0).detach(), atol=1e-5, rtol=0)
    nodes = ["blocks.0.hook_resid_post/f2", "blocks.1.hook_mlp_out/f3"]
    got = pooled_activations(
        model, TEXTS, fwd_hooks=ablation_hooks(model, saes, nodes, values=means), progress=False
    )
    want = _own_pooled_ablated(model, saes, TEXTS, {hooks[0]: [2], hooks[1]: [3]}, fill=means)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bad_ablation_nodes_are_named(setup):
    model, saes, _ = setup
    for node, message in [
        ("blocks.0.hook_attn_out/f1@3", "ablated at every position"),
        ("blocks.0.hook_attn_out/err", "ablated at every position"),
        ("blocks.0.hook_attn_out/f99", "f99: feature 99 is out of range"),
        ("blocks.1.hook_attn_out/f1", r"nodes at \['blocks.1.hook_attn_out'\]"),
        ("nonsense", "is not of the form"),
    ]:
        with pytest.raises(ValueError, match=message):
            ablation_hooks(model, saes, [node])
    with pytest.raises(TypeError, match="not one string"):
        feature_sets("blocks.0.hook_attn_out/f1")


def test_random_features_are_seeded_distinct_and_cover_every_site(setup):
    _, saes, _ = setup
    sites = {h: saes[h] for h in HOOKS}
    a = random_features(sites, 20, seed=1)
    assert a == random_features(sites, 20, seed=1)
    assert a != random_features(sites, 20, seed=2)
    assert len(set(a)) == 20
    assert {n.split("/")[0] for n in a} == set(HOOKS)
    assert set(feature_sets(a)) <= set(HOOKS)
    assert all(0 <= i < 12 for feats in feature_sets(a).values() for i in feats)
    everything = random_features(sites, 36, seed=0)
    assert len(set(everything)) == 36  # all 3 x 12 features
    rest = random_features(sites, 30, seed=0, exclude=everything[:6])
    assert not set(rest) & set(everything[:6])
    with pytest.raises(ValueError, match="cannot draw 31"):
        random_features(sites, 31, exclude=everything[:6])
