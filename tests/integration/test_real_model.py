"""The embedded SmolLM2-135M model with some of its bundled SAEs: the adapter and node effects
on a real 30-layer Llama-architecture model (slow-ish; runs in CI)."""

from __future__ import annotations

import pytest
import torch

from sfc_plugin.attribution import node_effects
from sfc_plugin.datasets import agreement
from sfc_plugin.dictionaries import load_saes
from sfc_plugin.sites import attach_saes

pytestmark = pytest.mark.real_model

HOOKS = ["blocks.2.hook_attn_out", "blocks.14.hook_mlp_out", "blocks.29.hook_resid_post"]


@pytest.fixture(scope="module")
def saes(real_model):
    return load_saes("smollm2-135m-sfc", sae_ids=HOOKS)


@pytest.fixture(scope="module")
def pairs(real_model):
    return agreement("across_pp", real_model, n=4)


def test_logits_unchanged_with_saes_attached(real_model, saes, pairs):
    tokens = real_model.to_tokens([p["clean_prefix"] for p in pairs])
    with torch.no_grad():
        plain = real_model(tokens)
        with attach_saes(real_model, saes, grad=False) as acts:
            spliced = real_model(tokens)
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=0)
    # the SAEs really are active and really leave an error
    for h in HOOKS:
        assert (acts.features[h] > 0).any()
        assert acts.errors[h].norm() > 0


def test_node_effects_finite_and_exact_agrees_with_ig_in_sign(real_model, saes, pairs):
    ig = node_effects(real_model, saes, pairs, method="ig", steps=4, batch_size=4)
    for h in HOOKS:
        assert torch.isfinite(ig.features[h]).all() and torch.isfinite(ig.errors[h]).all()
    # the largest IG nodes have the sign exact patching gives them
    top = ig.to_frame().head(3)
    exact = node_effects(real_model, saes, pairs, method="exact", nodes=list(top.node))
    got = exact.to_frame().set_index("node").effect
    for node, value in zip(top.node, top.effect):
        assert torch.isfinite(torch.tensor(got[node]))
        assert got[node] * value > 0, f"{node}: IG {value:+.3f} but exact {got[node]:+.3f}"
