"""Ground-truth tests for ``sfc_plugin.effects.node_effects``.

Every expected value is computed here, independently of sfc_plugin: plain TransformerLens hooks
(``model.run_with_hooks``) that replace a site's output by ``decode(f) + eps`` for feature and
error tensors built in the test, the SAE's own ``encode``/``decode``, and ``torch.autograd``.
Each row is tokenized with ``model.to_tokens`` and, where rows differ in length, run on its own
(unpadded), so the library's padding and batching are checked too.
"""

from __future__ import annotations

import json

import ground_truth
import pytest
import torch
from conftest import make_saes, make_tiny_model
from ground_truth import (
    answer_id,
    answer_logprob,
    brute_force_atp,
    brute_force_exact,
    check_effects,
    logit_diff,
    pair_tokens,
    site_values,
)

from sfc_plugin.attribution import node_effects

D_SAE = 16

# Several hook kinds at several layers (conftest models have 3 layers).
SITES = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_attn_out",
    "blocks.1.hook_mlp_out",
    "blocks.2.hook_resid_post",
]

# Contrastive pairs, all 5 tokens long (checked in `_pair_tokens`): the subject's number flips.
PAIRS = [
    ("The cat near the dogs", "The cats near the dogs", " is", " are"),
    ("The authors that the guard", "The author that the guard", " like", " likes"),
    ("The boy near the cars", "The boys near the cars", " has", " have"),
    ("The teachers near the house", "The teacher near the house", " are", " is"),
    ("The doctor that the farmers", "The doctors that the farmers", " likes", " like"),
]
PAIR_ROWS = [
    {"clean_prefix": c, "patch_prefix": p, "clean_answer": ca, "patch_answer": pa}
    for c, p, ca, pa in PAIRS
]

# Single inputs of different token lengths (for "sum" aggregation).
SINGLE_ROWS = [
    {"prefix": "The cat", "answer": " is"},
    {"prefix": "The teacher near the house", "answer": " is"},
    {"prefix": "The doctor that", "answer": " likes"},
    {"prefix": "The girls near the big old trees", "answer": " are"},
]


pytestmark = pytest.mark.usefixtures("one_thread")


_MODELS: dict = {}


@pytest.fixture(scope="module")
def setup(tokenizer):
    """(model, saes) per family, built once per module."""

    def get(fam: str, sites=tuple(SITES)):
        key = (fam, tuple(sites))
        if key not in _MODELS:
            model = make_tiny_model(fam, tokenizer, seed=7)
            _MODELS[key] = (model, make_saes(model, list(sites), d_sae=D_SAE, seed=21))
        return _MODELS[key]

    yield get
    _MODELS.clear()


def _pair_tokens(model, rows=PAIR_ROWS):
    return pair_tokens(model, rows)


def pair_ground_truth(model, saes, hooks, ablation, kind, metric=None, steps=None):
    """Templatic ground truth on PAIR_ROWS: hook -> ([P, S], [P]) (mean over examples)."""
    return ground_truth.pair_ground_truth(
        model, saes, hooks, PAIR_ROWS, ablation, kind, metric, steps
    )


# ----------------------------------------------------------------------------------------------
# Exact patching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_exact_matches_brute_force(setup, fam, ablation):
    """method="exact", templatic: one patched forward per node, per-position mean over the 5
    examples (batch_size=2: three batches, the last one partial; the mean ablation value is the
    mean over all 5 rows, not per batch)."""
    model, saes = setup(fam)
    res = node_effects(
        model,
        saes,
        PAIR_ROWS,
        method="exact",
        ablation=ablation,
        aggregation="templatic",
        batch_size=2,
    )
    assert (res.method, res.ablation, res.aggregation, res.n_examples) == (
        "exact",
        ablation,
        "templatic",
        len(PAIR_ROWS),
    )
    check_effects(res, pair_ground_truth(model, saes, SITES, ablation, "exact"))


def single_ground_truth(model, saes, hooks, rows, ablation, kind, metric=None):
    """Sum aggregation on single inputs of different lengths: every row run on its own,
    effects summed over its positions, then averaged over rows. hook -> ([S], scalar)."""
    toks = [model.to_tokens(r["prefix"]) for r in rows]
    answers = [torch.tensor([answer_id(model, r["answer"])]) for r in rows]
    assert len({t.shape[1] for t in toks}) == len(rows), "rows should differ in length"
    if metric is None:
        metric = answer_logprob
    values = [site_values(model, saes, t, hooks) for t in toks]
    out = {}
    for h in hooks:
        if ablation == "zero":
            means = None
        else:  # mean over all real tokens of all rows
            means = tuple(torch.cat([v[h][j][0] for v in values]).mean(0) for j in range(2))
        feat_sum, err_sum = 0.0, 0.0
        for t, ans, v in zip(toks, answers, values):
            fc, ec = v[h]
            if means is None:
                fa, ea = torch.zeros_like(fc), torch.zeros_like(ec)
            else:
                fa, ea = means[0].expand_as(fc), means[1].expand_as(ec)

            def m(logits, ans=ans):
                return metric(logits, ans.repeat(logits.shape[0]))

            args = (model, saes[h], h, t, m, fc, ec, fa, ea)
            feat, err = brute_force_exact(*args) if kind == "exact" else brute_force_atp(*args)
            feat_sum = feat_sum + feat[0].sum(0)
            err_sum = err_sum + err[0].sum(0)
        out[h] = (feat_sum / len(rows), err_sum / len(rows))
    return out


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_exact_sum_aggregation_different_lengths(setup, ablation):
    """method="exact", aggregation="sum", single inputs of lengths 2..7 (right-padded by the
    library, batch_size=3 so the batches have different widths): each position patched
    separately, single-position effects summed over the row's real positions, mean over rows."""
    model, saes = setup("llama")
    res = node_effects(
        model,
        saes,
        SINGLE_ROWS,
        method="exact",
        ablation=ablation,
        aggregation="sum",
        batch_size=3,
    )
    assert (res.aggregation, res.n_examples) == ("sum", len(SINGLE_ROWS))
    truth = single_ground_truth(model, saes, SITES, SINGLE_ROWS, ablation, "exact")
    for h in SITES:
        assert res.features[h].shape == (D_SAE,) and res.errors[h].shape == ()
    check_effects(res, truth, atol=5e-5)


# ----------------------------------------------------------------------------------------------
# Attribution patching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", ["patch", "zero"])
def test_atp_equals_exact_at_final_resid_nonorm(setup, ablation):
    """No normalisation: the final resid_post maps linearly to the logits, and the default pair
    metric is linear in the logits, so AtP is exact there. Checked against the library's own
    exact effects and against the closed form (a_abl - a_clean) W_dec W_U (u_patch - u_clean)."""
    final = "blocks.2.hook_resid_post"
    hooks = ("blocks.1.hook_mlp_out", final)
    model, saes = setup("nonorm", hooks)
    atp = node_effects(model, saes, PAIR_ROWS, method="atp", ablation=ablation, batch_size=2)
    exact = node_effects(model, saes, PAIR_ROWS, method="exact", ablation=ablation, batch_size=2)

    clean, patch, ca, pa = _pair_tokens(model)
    fc, ec = site_values(model, saes, clean, [final])[final]
    if ablation == "patch":
        fa, ea = site_values(model, saes, patch, [final])[final]
    else:
        fa, ea = torch.zeros_like(fc), torch.zeros_like(ec)
    with torch.no_grad():
        u = model.W_U[:, pa] - model.W_U[:, ca]  # [d_model, B]
        w = saes[final].W_dec @ u  # [S, B]: metric change per unit of feature i in row b
        feat = torch.zeros_like(fc)
        err = torch.zeros(fc.shape[:2])
        feat[:, -1] = (fa - fc)[:, -1] * w.T
        err[:, -1] = ((ea - ec)[:, -1] * u.T).sum(-1)
    truth = {final: (feat.mean(0), err.mean(0))}
    for res in (atp, exact):
        torch.testing.assert_close(res.features[final], truth[final][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(res.errors[final], truth[final][1], atol=1e-5, rtol=1e-4)
    assert truth[final][0].abs().max() > 1e-2
    torch.testing.assert_close(atp.features[final], exact.features[final], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(atp.errors[final], exact.errors[final], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ablation", ["patch", "mean"])
@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_atp_matches_autograd(setup, fam, ablation):
    """AtP = grad_a m |clean . (a_abl - a_clean), gradients by autograd with one site replaced by
    decode(f_leaf) + eps_leaf at a time."""
    model, saes = setup(fam)
    res = node_effects(model, saes, PAIR_ROWS, method="atp", ablation=ablation, batch_size=3)
    assert res.method == "atp"
    check_effects(res, pair_ground_truth(model, saes, SITES, ablation, "atp"))


# ----------------------------------------------------------------------------------------------
# Integrated gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fam,steps,ablation",
    [("sequential", 3, "patch"), ("parallel", 4, "patch"), ("llama", 3, "zero")],
)
def test_ig_matches_brute_force(setup, fam, steps, ablation):
    """IG = (1/N) sum_k grad at (1 - k/N) a_c + (k/N) a_abl, all nodes of one site interpolated
    together, other sites unmodified; brute force loops over k with plain hooks."""
    model, saes = setup(fam)
    res = node_effects(
        model, saes, PAIR_ROWS, method="ig", steps=steps, ablation=ablation, batch_size=2
    )
    assert res.method == "ig"
    check_effects(res, pair_ground_truth(model, saes, SITES, ablation, "ig", steps=steps))


@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_ig_completeness(setup, fam):
    """With many steps, the IG effects of all nodes of a site (features + error, all positions)
    add up to the exact effect of patching the whole site at once (the patch run's activation
    at every position), within 1%."""
    model, saes = setup(fam)
    hooks = ["blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"]
    rows = PAIR_ROWS[:3]
    res = node_effects(
        model,
        {h: saes[h] for h in hooks},
        rows,
        method="ig",
        steps=128,
        ablation="patch",
        batch_size=1,
    )
    clean, patch, ca, pa = _pair_tokens(model, rows)
    with torch.no_grad():
        m_clean = logit_diff(model(clean), ca, pa)
        _, pcache = model.run_with_cache(patch, names_filter=hooks)
        for h in hooks:
            # the whole site (all nodes, all positions) set to its value on the patch prefix
            replace = [(h, lambda act, hook: pcache[hook.name])]
            logits = model.run_with_hooks(clean, fwd_hooks=replace)
            total = (logit_diff(logits, ca, pa) - m_clean).mean()
            got = res.features[h].sum() + res.errors[h].sum()
            assert total.abs() > 1e-2, "vacuous"
            msg = f"{h}: sum of IG effects {got:.6f}, exact whole-site effect {total:.6f}"
            assert abs(got - total) <= 0.01 * total.abs(), msg


def test_ig_one_step_equals_atp(setup):
    model, saes = setup("sequential")
    ig = node_effects(model, saes, PAIR_ROWS, method="ig", steps=1, ablation="patch", batch_size=2)
    atp = node_effects(model, saes, PAIR_ROWS, method="atp", ablation="patch", batch_size=5)
    truth = pair_ground_truth(model, saes, SITES, "patch", "atp")
    check_effects(ig, truth)
    check_effects(atp, truth)
    for h in SITES:
        torch.testing.assert_close(ig.features[h], atp.features[h], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ig.errors[h], atp.errors[h], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Metrics and data input
# ----------------------------------------------------------------------------------------------


def test_user_metric_two_args_pairs(setup):
    """metric(logits, batch): log p(patch answer) at batch.last, read from the Batch fields."""
    model, saes = setup("sequential")
    clean, patch, ca, pa = _pair_tokens(model)
    seen = []

    def metric(logits, batch):
        seen.append(batch)
        rows = torch.arange(logits.shape[0])
        return logits[rows, batch.last].log_softmax(-1)[rows, batch.patch_answer]

    res = node_effects(
        model, saes, PAIR_ROWS, method="atp", ablation="patch", metric=metric, batch_size=2
    )
    assert seen, "the metric was never called"
    b = seen[0]
    assert torch.equal(b.clean_tokens[: len(b.last)], clean[: len(b.last)])
    assert torch.equal(b.last, torch.full_like(b.last, clean.shape[1] - 1))

    def gt_metric(logits):
        n = logits.shape[0] // len(pa)
        return logits[:, -1].log_softmax(-1).gather(1, pa.repeat(n)[:, None])[:, 0]

    truth = pair_ground_truth(model, saes, SITES, "patch", "atp", metric=gt_metric)
    default = pair_ground_truth(model, saes, SITES, "patch", "atp")
    h = SITES[-1]
    assert not torch.allclose(truth[h][0], default[h][0], atol=1e-3), "metrics indistinguishable"
    check_effects(res, truth)


def test_user_metric_two_args_singles_sum(setup):
    """metric(logits, batch) using batch.mask and batch.clean_answer on right-padded rows of
    different lengths: the mean over real positions of the answer's logit."""
    model, saes = setup("parallel")

    def metric(logits, batch):
        ans = logits.gather(-1, batch.clean_answer[:, None, None].expand(*logits.shape[:2], 1))
        mask = batch.mask.to(logits.dtype)
        return (ans[..., 0] * mask).sum(1) / mask.sum(1)

    def gt_metric(logits, ans):  # unpadded single rows: every position is real
        return logits.gather(-1, ans[:, None, None].expand(*logits.shape[:2], 1))[..., 0].mean(1)

    res = node_effects(
        model,
        saes,
        SINGLE_ROWS,
        method="atp",
        ablation="zero",
        aggregation="sum",
        metric=metric,
        batch_size=4,
    )
    truth = single_ground_truth(model, saes, SITES, SINGLE_ROWS, "zero", "atp", metric=gt_metric)
    default = single_ground_truth(model, saes, SITES, SINGLE_ROWS, "zero", "atp")
    h = SITES[-1]
    assert not torch.allclose(truth[h][0], default[h][0], atol=1e-3), "metrics indistinguishable"
    check_effects(res, truth)


def test_user_metric_one_arg(setup, tokenizer):
    """metric(logits): log p(" the") at the last position; exact patching on one site."""
    model, saes = setup("parallel")
    the = answer_id(model, " the")
    h = "blocks.1.hook_mlp_out"

    def metric(logits):
        return logits[:, -1].log_softmax(-1)[:, the]

    res = node_effects(
        model,
        {h: saes[h]},
        PAIR_ROWS,
        method="exact",
        ablation="patch",
        metric=metric,
        batch_size=5,
    )
    truth = pair_ground_truth(model, saes, [h], "patch", "exact", metric=metric)
    check_effects(res, truth)


def test_jsonl_path_input(setup, tmp_path):
    """A JSONL path gives the same effects as the list of rows (and the ground truth)."""
    model, saes = setup("sequential")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIR_ROWS))
    from_path = node_effects(model, saes, str(path), method="atp", ablation="patch")
    assert from_path.n_examples == len(PAIR_ROWS)
    check_effects(from_path, pair_ground_truth(model, saes, SITES, "patch", "atp"))
