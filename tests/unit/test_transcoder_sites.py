"""Sites that read one hook and write another (SAELens transcoders), mixed with SAEs, against
ground truth computed in ``ground_truth`` (plain TL hooks, the dictionaries' own
encode/decode, autograd): the same checks as for SAE sites.

Sites, in forward order:

    blocks.0.hook_resid_post   SAE
    blocks.1.hook_attn_out     SAE
    blocks.1.hook_mlp_out      Transcoder reading blocks.1.ln2.hook_normalized (d_model -> d_model)
    blocks.2.hook_mlp_out      SkipTranscoder reading blocks.2.mlp.hook_post (d_mlp -> d_model)
    blocks.2.hook_resid_post   SAE

A transcoder's features are ``encode(x_read)`` and its error ``x_written - decode(f)`` (the
skip term ``W_skip x_read`` is in the error). There is no residual site in block 1, so paths
from resid0 and attn1 reach both transcoders' features and errors directly; the errors'
Jacobians run through the real MLPs.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_random_sae, make_random_transcoder, make_tiny_model
from ground_truth import (
    AGREEMENT_PAIRS,
    assert_nonvacuous,
    brute_metric,
    by_site,
    check_edges,
    check_effects,
    jacobian_truth,
    nid,
    own_means,
    pair_examples,
    pair_ground_truth,
    pair_tokens,
    pick_nodes,
    site_grads,
    site_values,
)

from sfc_plugin.attribution import edge_effects, node_effects
from sfc_plugin.evaluation import Evaluator, circuit_scores
from sfc_plugin.sites import attach_saes, encode, make_sites

R0, A1, T1, T2, R2 = (
    "blocks.0.hook_resid_post",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_mlp_out",
    "blocks.2.hook_mlp_out",
    "blocks.2.hook_resid_post",
)
SITES = [R0, A1, T1, T2, R2]
READS = {T1: "blocks.1.ln2.hook_normalized", T2: "blocks.2.mlp.hook_post"}
D_SAE = 16

PAIR_ROWS = AGREEMENT_PAIRS

pytestmark = pytest.mark.usefixtures("one_thread")

_MODELS: dict = {}


@pytest.fixture(scope="module")
def setup(tokenizer):
    """(model, dictionaries) per family, built once per module."""

    def get(fam: str):
        if fam not in _MODELS:
            model = make_tiny_model(fam, tokenizer, seed=5)
            for p in model.parameters():
                p.requires_grad_(False)
            d, d_mlp = model.cfg.d_model, model.cfg.d_mlp
            saes = {
                R0: make_random_sae(R0, d, D_SAE, seed=1),
                A1: make_random_sae(A1, d, D_SAE, seed=2, arch="topk"),
                T1: make_random_transcoder(READS[T1], T1, d, d, D_SAE, seed=3),
                T2: make_random_transcoder(READS[T2], T2, d_mlp, d, D_SAE, seed=4, skip=True),
                R2: make_random_sae(R2, d, D_SAE, seed=5),
            }
            for sae in saes.values():
                for p in sae.parameters():
                    p.requires_grad_(False)
            _MODELS[fam] = (model, saes)
        return _MODELS[fam]

    yield get
    _MODELS.clear()


def _metric(model):
    clean, _, ca, pa = pair_tokens(model, PAIR_ROWS)

    def metric(logits):
        last = logits[:, -1]
        return last.gather(1, pa[:, None])[:, 0] - last.gather(1, ca[:, None])[:, 0]

    return clean, metric


# ----------------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fam", ["sequential", "parallel", "llama"])
def test_logits_unchanged_and_node_values(setup, fam):
    """Attached, the model's logits are bit-identical; features are encode(x_read) and errors
    x_written - decode(f) at every site, including d_in != d_out and a skip term."""
    model, saes = setup(fam)
    tokens, _ = _metric(model)
    with torch.no_grad():
        plain = model(tokens)
        with attach_saes(model, saes) as acts:
            attached = model(tokens)
    assert torch.equal(plain, attached)
    truth = site_values(model, saes, tokens)
    for h in SITES:
        f, e = truth[h]
        torch.testing.assert_close(acts.features[h], f, atol=1e-6, rtol=0)
        torch.testing.assert_close(acts.errors[h], e, atol=1e-6, rtol=0)
    assert acts.features[T2].shape[-1] == D_SAE and acts.errors[T2].shape[-1] == model.cfg.d_model
    # the skip term is part of the error: it is not what decode(f) alone leaves out of zero
    assert acts.errors[T2].abs().max() > 1e-2


@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_site_gradients_and_pass_through(setup, fam):
    """One backward gives dm/df and dm/deps at every site equal to autograd with only that
    site replaced by decode(f_leaf) + eps_leaf; the gradient reaching the embeddings equals
    the model's own (pass-through through the real MLPs)."""
    model, saes = setup(fam)
    tokens, metric = _metric(model)
    truth = site_values(model, saes, tokens)

    def embed_grad(with_sites: bool):
        leaf = {}

        def grab(x, hook):
            leaf["x"] = x.detach().requires_grad_(True)
            return leaf["x"]

        with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", grab)]):
            if with_sites:
                with attach_saes(model, saes) as acts:
                    m = metric(model(tokens)).sum()
            else:
                acts, m = None, metric(model(tokens)).sum()
            m.backward()
        return leaf["x"].grad, acts

    plain, _ = embed_grad(False)
    attached, acts = embed_grad(True)
    torch.testing.assert_close(attached, plain, atol=1e-6, rtol=1e-5)
    assert plain.abs().max() > 1e-3
    for h in SITES:
        gf, ge = site_grads(model, saes[h], h, tokens, metric, *truth[h])
        assert gf.abs().max() > 1e-4 and ge.abs().max() > 1e-4, h
        torch.testing.assert_close(acts.features[h].grad, gf, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(acts.errors[h].grad, ge, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Node effects
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_exact_effects_match_hand_patching(setup, fam, ablation):
    """Exact effects (eq. 2) equal one hand-patched forward per node at the written hook."""
    model, saes = setup(fam)
    res = node_effects(
        model, saes, PAIR_ROWS, method="exact", ablation=ablation, batch_size=2, progress=False
    )
    check_effects(res, pair_ground_truth(model, saes, SITES, PAIR_ROWS, ablation, "exact"))


@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_atp_and_ig_match_autograd(setup, fam):
    """AtP (eq. 3) is the site gradient times delta; IG (eq. 4, 3 steps) the mean gradient over
    the reference's path points times delta."""
    model, saes = setup(fam)
    kw = dict(ablation="patch", batch_size=3, progress=False)
    atp = node_effects(model, saes, PAIR_ROWS, method="atp", **kw)
    check_effects(atp, pair_ground_truth(model, saes, SITES, PAIR_ROWS, "patch", "atp"))
    ig = node_effects(model, saes, PAIR_ROWS, method="ig", steps=3, **kw)
    truth = pair_ground_truth(model, saes, SITES, PAIR_ROWS, "patch", "ig", steps=3)
    check_effects(ig, truth)
    assert not torch.allclose(ig.features[T1], atp.features[T1], atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Edges
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["atp", "ig"])
@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_edges_match_frozen_jacobians(setup, fam, method):
    """Every edge among 2 features + the error at positions 1 and 4 of every site equals
    grad_d m . dd/du . delta_u with the frozen-site Jacobian, feature and error nodes of SAEs
    and transcoders up- and downstream."""
    model, saes = setup(fam)
    examples = pair_examples(model, saes, PAIR_ROWS)
    nodes = pick_nodes(examples, (1, 4), SITES)
    grads = [ex.down_grads(method, steps=3) for ex in examples]
    truth = jacobian_truth(examples, grads, nodes)
    assert_nonvacuous(truth)
    sites = by_site(nodes, SITES)
    for up, down in ((R0, T1), (T1, T2), (A1, T2), (T2, R2)):
        vals = [abs(truth.get((nid(u), nid(d)), 0.0)) for u in sites[up] for d in sites[down]]
        assert max(vals) > 1e-4, f"vacuous {up} -> {down}"
    # attn_out(1) feeds the MLP of its own block only when the MLP reads after attention
    am = [abs(v) for (u, d), v in truth.items() if u.startswith(A1) and d.startswith(T1)]
    assert max(am) == 0 if fam == "parallel" else max(am) > 1e-4
    df = edge_effects(
        model,
        saes,
        PAIR_ROWS,
        [nid(n) for n in nodes],
        method=method,
        steps=3,
        ablation="patch",
        batch_size=2,
        progress=False,
    )
    check_edges(df, truth)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fam", ["sequential", "llama"])
def test_evaluation_matches_brute_force(setup, fam):
    """m(C) with every node outside C mean-ablated (each site re-encoding its current read
    input) equals a plain-hook re-implementation; the full circuit scores 1, the empty one 0."""
    model, saes = setup(fam)
    tokens, _ = _metric(model)
    n_pos = tokens.shape[1]
    every = [
        f"{h}/{kind}@{p}"
        for h in SITES
        for p in range(n_pos)
        for kind in [f"f{i}" for i in range(D_SAE)] + ["err"]
    ]
    full = circuit_scores(model, saes, every, PAIR_ROWS, progress=False)
    assert full.faithfulness == pytest.approx(1.0, abs=1e-4)
    assert abs(full.m_model - full.m_empty) > 1e-3
    effects = node_effects(model, saes, PAIR_ROWS, method="atp", progress=False)
    circuit = list(effects.to_frame().node[:20])
    assert any(n.startswith((T1, T2)) for n in circuit)
    ev = Evaluator(model, saes, PAIR_ROWS, progress=False)
    means = own_means(model, saes, tokens)
    for h, (mf, me) in means.items():
        torch.testing.assert_close(ev.ablated[h][0][0], mf, atol=1e-6, rtol=0)
        torch.testing.assert_close(ev.ablated[h][1][0], me, atol=1e-6, rtol=0)
    want = brute_metric(model, saes, PAIR_ROWS, set(circuit), means)
    assert ev.metric_with(circuit) == pytest.approx(want, abs=1e-4)
    want_c = brute_metric(model, saes, PAIR_ROWS, set(every) - set(circuit), means)
    assert ev.metric_with(circuit, complement=True) == pytest.approx(want_c, abs=1e-4)
    assert ev.m_empty == pytest.approx(brute_metric(model, saes, PAIR_ROWS, set(), means), abs=1e-4)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def test_sites_order_and_bad_keys(setup):
    """Sites are named and ordered by the hook they write; a transcoder keyed by the hook it
    reads, one whose metadata names another output, one reading after it writes, and
    overlapping sites are refused with errors that name them."""
    model, saes = setup("sequential")
    sites = make_sites(model, dict(reversed(list(saes.items()))))
    assert [s.hook_name for s in sites] == SITES
    assert [s.read_hook for s in sites] == [R0, A1, READS[T1], READS[T2], R2]
    assert (sites[3].d_in, sites[3].d_out) == (model.cfg.d_mlp, model.cfg.d_model)
    with pytest.raises(ValueError, match="key it by the hook it writes"):
        make_sites(model, {READS[T1]: saes[T1]})
    other = make_random_transcoder(READS[T1], T1, 32, 32)
    with pytest.raises(ValueError, match="writes 'blocks.1.hook_mlp_out'"):
        make_sites(model, {T2: other})
    late = make_random_transcoder("blocks.2.hook_resid_post", T2, 32, 32)
    late.cfg.metadata.hook_name_out = None
    with pytest.raises(ValueError, match="comes after it"):
        make_sites(model, {T2: late})
    inside = make_random_sae("blocks.1.mlp.hook_post", model.cfg.d_mlp)
    with pytest.raises(ValueError, match="sites overlap.*blocks.1.hook_mlp_out"):
        make_sites(model, {T1: saes[T1], "blocks.1.mlp.hook_post": inside})
    missing = make_random_transcoder("blocks.9.ln2.hook_normalized", T1, 32, 32)
    with pytest.raises(ValueError, match="read hook 'blocks.9.ln2.hook_normalized'"):
        make_sites(model, {T1: missing})
    x = torch.zeros(1, 2, 32)
    with pytest.raises(ValueError, match="needs the written activation"):
        encode(sites[2], x)
