"""Ground-truth tests for ``sfc_plugin.sites.attach_saes``.

Every expected value is computed here with plain TransformerLens hooks, the SAE's own
``encode``/``decode`` and ``torch.autograd`` -- never with sfc_plugin internals.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_saes, make_tiny_model

from sfc_plugin.sites import attach_saes

ALL_FAMILIES = ["sequential", "parallel", "llama", "nonorm"]

# Several hook kinds at several layers (conftest models have 3 layers).
SITE_HOOKS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "blocks.2.hook_attn_out",
    "blocks.2.hook_resid_post",
]

SENTENCES = ["The cat near the dogs", "The authors that the guard", "The boys near the car"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokens(model, sentences=SENTENCES):
    toks = [model.to_tokens(s)[0] for s in sentences]
    assert len({len(t) for t in toks}) == 1, "test sentences must have equal token length"
    return torch.stack(toks)


def _metric(model):
    """A nonlinear scalar metric reading every position (so every position gets gradient)."""
    a = model.to_tokens(" is", prepend_bos=False)[0, 0]
    b = model.to_tokens(" are", prepend_bos=False)[0, 0]

    def metric(logits):
        logp = logits.log_softmax(-1)
        return logp[:, :, a].sum() + (logits[:, -1, b] - logits[:, -1, a]).pow(2).sum()

    return metric


def _clean_acts(model, tokens, hooks):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(hooks))
    return {h: cache[h].clone() for h in hooks}


def _encode(sae, x):
    with torch.no_grad():
        f = sae.encode(x)
        eps = x - sae.decode(f)
    return f, eps


def _ground_truth_site_grads(model, sae, hook, tokens, metric):
    """dm/df and dm/deps at one site: the site output is replaced by decode(f_leaf) + eps_leaf
    (leaves created here), every other hook point is untouched."""
    x = _clean_acts(model, tokens, [hook])[hook]
    f, eps = _encode(sae, x)
    f_leaf = f.clone().requires_grad_(True)
    e_leaf = eps.clone().requires_grad_(True)

    def replace(act, hook):
        return sae.decode(f_leaf) + e_leaf

    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])
    gf, ge = torch.autograd.grad(metric(logits), [f_leaf, e_leaf])
    return gf, ge


def _grads_at(model, tokens, metric, hooks):
    """dm/d(activation) at each hook point: the hook adds a zero leaf to the activation (value
    and graph unchanged), and the gradient w.r.t. that leaf is the gradient w.r.t. the
    activation along every path to the metric."""
    zeros = {}

    def add_zero(act, hook):
        zeros[hook.name] = torch.zeros_like(act, requires_grad=True)
        return act + zeros[hook.name]

    logits = model.run_with_hooks(tokens, fwd_hooks=[(h, add_zero) for h in hooks])
    return torch.autograd.grad(metric(logits), [zeros[h] for h in hooks])


def _all_hook_handles(model):
    """Every hook registered on any hook point, at the TL level and the torch level."""
    out = []
    for name, hp in model.hook_dict.items():
        out += [(name, "tl_fwd", h) for h in hp.fwd_hooks]
        out += [(name, "tl_bwd", h) for h in hp.bwd_hooks]
        out += [(name, "torch_fwd", h) for h in hp._forward_hooks.values()]
        out += [(name, "torch_bwd", h) for h in hp._backward_hooks.values()]
    return out


@pytest.mark.parametrize("fam", ALL_FAMILIES)
def test_logits_unchanged_and_values(fam, tokenizer):
    """Logits with every SAE attached equal logits without; the recorded features and errors are
    encode(x) and x - decode(encode(x)) of the clean activation x at each site."""
    model = make_tiny_model(fam, tokenizer, seed=1)
    saes = make_saes(model, SITE_HOOKS, d_sae=16, seed=3)
    tokens = _tokens(model)
    with torch.no_grad():
        ref = model(tokens)
    x = _clean_acts(model, tokens, SITE_HOOKS)
    with attach_saes(model, saes) as acts:
        logits = model(tokens)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    assert set(acts.features) == set(SITE_HOOKS) and set(acts.errors) == set(SITE_HOOKS)
    for h in SITE_HOOKS:
        f, eps = _encode(saes[h], x[h])
        assert f.abs().sum() > 0, "random SAE has no active feature: test would be vacuous"
        assert eps.norm() > 0.1 * x[h].norm(), "SAE error should be large for random SAEs"
        assert acts.features[h].shape == (tokens.shape[0], tokens.shape[1], 16)
        assert acts.errors[h].shape == (tokens.shape[0], tokens.shape[1], model.cfg.d_model)
        torch.testing.assert_close(acts.features[h].detach(), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts.errors[h].detach(), eps, atol=1e-5, rtol=1e-5)
        assert acts.features[h].is_leaf and acts.features[h].requires_grad
        assert acts.errors[h].is_leaf and acts.errors[h].requires_grad


def test_acts_hold_most_recent_pass(tokenizer):
    """Two forward passes inside the context: the recorded values are those of the second."""
    model = make_tiny_model("sequential", tokenizer, seed=2)
    hooks = ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"]
    saes = make_saes(model, hooks, d_sae=16, seed=5)
    t1 = _tokens(model, SENTENCES[:2])
    t2 = _tokens(model, ["The girls near the house", "The teacher that the boys"])
    x2 = _clean_acts(model, t2, hooks)
    with attach_saes(model, saes) as acts:
        model(t1)
        model(t2)
    for h in hooks:
        f, eps = _encode(saes[h], x2[h])
        torch.testing.assert_close(acts.features[h].detach(), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts.errors[h].detach(), eps, atol=1e-5, rtol=1e-5)


def test_grad_false_gives_no_grad_leaves(tokenizer):
    model = make_tiny_model("sequential", tokenizer, seed=2)
    hooks = ["blocks.1.hook_attn_out", "blocks.2.hook_resid_post"]
    saes = make_saes(model, hooks, d_sae=16, seed=5)
    tokens = _tokens(model)
    with torch.no_grad():
        ref = model(tokens)
    x = _clean_acts(model, tokens, hooks)
    with attach_saes(model, saes, grad=False) as acts:
        logits = model(tokens)
    torch.testing.assert_close(logits.detach(), ref, atol=1e-5, rtol=0)
    for h in hooks:
        f, _ = _encode(saes[h], x[h])
        assert not acts.features[h].requires_grad and not acts.errors[h].requires_grad
        torch.testing.assert_close(acts.features[h], f, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fam", ALL_FAMILIES)
def test_site_gradients_match_autograd(fam, tokenizer):
    """acts.features[h].grad and acts.errors[h].grad from ONE backward pass equal dm/df, dm/deps
    computed separately for each site by replacing only that site's output by
    decode(f_leaf) + eps_leaf; also dm/deps equals the plain model's gradient at the hook."""
    model = make_tiny_model(fam, tokenizer, seed=4)
    saes = make_saes(model, SITE_HOOKS, d_sae=16, seed=7)
    tokens = _tokens(model)
    metric = _metric(model)

    # The plain model's gradient at every site hook point (no SAEs anywhere).
    plain = dict(zip(SITE_HOOKS, _grads_at(model, tokens, metric, SITE_HOOKS)))

    with attach_saes(model, saes) as acts:
        metric(model(tokens)).backward()

    for h in SITE_HOOKS:
        gf, ge = _ground_truth_site_grads(model, saes[h], h, tokens, metric)
        assert gf.abs().max() > 1e-3 and ge.abs().max() > 1e-3, "vacuous ground truth"
        assert acts.features[h].grad is not None, f"no feature gradient at {h}"
        assert acts.errors[h].grad is not None, f"no error gradient at {h}"
        torch.testing.assert_close(acts.features[h].grad, gf, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(acts.errors[h].grad, ge, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ge, plain[h], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fam", ALL_FAMILIES)
def test_pass_through_gradient_upstream(fam, tokenizer):
    """The gradient w.r.t. activations upstream of (several) sites equals the gradient of the
    model without SAEs: dm/dx is dm/d(x_hat + eps), not the gradient of the reconstruction."""
    model = make_tiny_model(fam, tokenizer, seed=5)
    sites = [
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_mlp_out",
        "blocks.2.hook_attn_out",
        "blocks.2.hook_resid_post",
    ]
    saes = make_saes(model, sites, d_sae=16, seed=11)
    tokens = _tokens(model)
    metric = _metric(model)
    probes = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]

    want = _grads_at(model, tokens, metric, probes)
    with attach_saes(model, saes):
        got = _grads_at(model, tokens, metric, probes)
    for p, w, g in zip(probes, want, got):
        assert w.abs().max() > 1e-3, "vacuous"
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4, msg=lambda m, p=p: f"{p}: {m}")


def test_pass_through_with_model_backward(tokenizer):
    """Same as above with a plain .backward(): gradients on the model's embedding weights are
    those of the model without SAEs."""
    model = make_tiny_model("sequential", tokenizer, seed=6)
    saes = make_saes(model, SITE_HOOKS, d_sae=16, seed=13)
    tokens = _tokens(model)
    metric = _metric(model)
    params = [model.W_E, model.blocks[0].attn.W_Q, model.blocks[1].mlp.W_in]
    want = torch.autograd.grad(metric(model(tokens)), params)
    with attach_saes(model, saes):
        got = torch.autograd.grad(metric(model(tokens)), params)
    for w, g in zip(want, got):
        assert w.abs().max() > 1e-4
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_hooks_removed_after_exit(tokenizer):
    model = make_tiny_model("parallel", tokenizer, seed=3)
    saes = make_saes(model, SITE_HOOKS, d_sae=16, seed=1)
    tokens = _tokens(model)
    assert _all_hook_handles(model) == []
    with attach_saes(model, saes) as acts:
        model(tokens)
        assert _all_hook_handles(model), "no hooks registered inside the context"
    assert _all_hook_handles(model) == []
    # A forward pass after exit no longer refills the records.
    before = {h: acts.features[h].detach().clone() for h in SITE_HOOKS}
    model(_tokens(model, ["The girls near the house", "The teacher that the boys"]))
    for h in SITE_HOOKS:
        torch.testing.assert_close(acts.features[h].detach(), before[h], atol=0, rtol=0)


def test_hooks_removed_after_exception(tokenizer):
    model = make_tiny_model("llama", tokenizer, seed=3)
    saes = make_saes(model, SITE_HOOKS, d_sae=16, seed=1)
    tokens = _tokens(model)
    with torch.no_grad():
        ref = model(tokens)
    with pytest.raises(RuntimeError, match="boom inside the context"):
        with attach_saes(model, saes):
            model(tokens)
            raise RuntimeError("boom inside the context")
    assert _all_hook_handles(model) == []

    # An exception raised from inside a forward pass (in a user hook) as well.
    def bad(act, hook):
        raise ValueError("boom inside forward")

    with pytest.raises(ValueError, match="boom inside forward"):
        with attach_saes(model, saes):
            model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_mid", bad)])
    assert _all_hook_handles(model) == []
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref, atol=0, rtol=0)


def test_user_hooks_survive(tokenizer):
    """Hooks the user registered before entering (permanent or not) are left in place."""
    model = make_tiny_model("sequential", tokenizer, seed=3)
    saes = make_saes(model, SITE_HOOKS, d_sae=16, seed=1)
    tokens = _tokens(model)
    calls = []

    def spy(act, hook):
        calls.append(hook.name)

    model.add_hook("blocks.1.hook_resid_mid", spy)
    model.add_perma_hook("blocks.2.hook_resid_pre", spy)
    try:
        with attach_saes(model, saes):
            model(tokens)
        assert calls == ["blocks.1.hook_resid_mid", "blocks.2.hook_resid_pre"]
        calls.clear()
        model(tokens)
        assert calls == ["blocks.1.hook_resid_mid", "blocks.2.hook_resid_pre"]
    finally:
        model.reset_hooks(including_permanent=True)


def test_saelens_error_term_lacks_pass_through_but_sites_have_it(tokenizer):
    """Why sites use their own hooks: SAELens' ``add_sae(..., use_error_term=True)`` computes
    the error under no_grad, so the gradient upstream of the SAE is that of the
    reconstruction, not the model's. Attached sites give the model's gradient."""
    model = make_tiny_model("sequential", tokenizer, seed=8)
    hook = "blocks.1.hook_resid_pre"
    saes = make_saes(model, [hook], d_sae=16, seed=2)
    tokens = _tokens(model)
    metric = _metric(model)
    probes = ["blocks.0.hook_resid_pre"]
    (want,) = _grads_at(model, tokens, metric, probes)
    model.add_sae(saes[hook], use_error_term=True)
    try:
        (saelens,) = _grads_at(model, tokens, metric, probes)
    finally:
        model.reset_saes()
    with attach_saes(model, saes):
        (ours,) = _grads_at(model, tokens, metric, probes)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-4)
    assert (saelens - want).abs().max() > 1e-2 * want.abs().max()
