"""SAE quality metrics against values computed directly in the test."""

from __future__ import annotations

import pytest
import torch
from conftest import make_random_sae, make_tiny_model

from sfc_plugin.datasets.text import token_batches
from sfc_plugin.dictionaries.quality import sae_quality

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the farmers watch from the hill. " * 3,
    "Rivers run to the sea, and the sea is never full; the wind returns to its circuits. " * 3,
]
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model("sequential", tokenizer, seed=1)


def _identity_sae(d: int):
    """ReLU SAE with features (x)+ and (-x)+ per coordinate: reconstructs x exactly."""
    sae = make_random_sae(HOOK, d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _activations(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    return cache[HOOK]


def test_perfect_sae_scores_one(model):
    table = sae_quality(model, {HOOK: _identity_sae(32)}, TEXTS, context=16, batch_size=4)
    row = table.iloc[0]
    assert row.variance_explained == pytest.approx(1, abs=1e-5)
    assert row.ce_recovered == pytest.approx(1, abs=1e-4)
    assert row.l0 == pytest.approx(32, abs=0.01)  # one of the two features per coordinate
    assert row.dead_fraction == 0


def test_zero_sae_recovers_nothing_and_random_sae_matches_direct_computation(model):
    zero = make_random_sae(HOOK, 32, 16, seed=3)
    with torch.no_grad():
        zero.W_dec.zero_()
        zero.b_dec.zero_()
    rand = make_random_sae(HOOK, 32, 16, seed=4)
    for sae, is_zero in ((zero, True), (rand, False)):
        row = sae_quality(model, {HOOK: sae}, TEXTS, context=16, batch_size=4).iloc[0]
        x = torch.cat(
            [_activations(model, t).reshape(-1, 32) for t in token_batches(model, TEXTS, 16, 4)]
        )
        with torch.no_grad():
            f = sae.encode(x)
            x_hat = sae.decode(f)
        want_ve = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        assert row.variance_explained == pytest.approx(float(want_ve), rel=1e-4, abs=1e-5)
        assert row.l0 == pytest.approx(float((f > 0).sum(1).float().mean()), rel=1e-5)
        assert row.dead_fraction == pytest.approx(float(1 - (f > 0).any(0).float().mean()))
        assert row.tokens == x.shape[0]
        if is_zero:
            assert row.ce_recovered == pytest.approx(0, abs=1e-6)
        else:
            assert row.ce_sae > row.ce_clean  # a random SAE hurts the loss


def test_ce_losses_use_the_first_ce_tokens_only(model):
    table = sae_quality(
        model, {HOOK: _identity_sae(32)}, TEXTS, context=16, batch_size=1, ce_tokens=10
    )
    assert table.iloc[0].ce_tokens == 15  # one row of 16 tokens gives 15 predictions
    assert table.iloc[0].tokens > 15
