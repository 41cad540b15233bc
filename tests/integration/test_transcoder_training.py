"""The training transcoder (``sfc_plugin.training.transcoder``): it learns the written
activation, and the saved SAELens transcoder is the folded training one. Here rather than in
tests/unit because training is pinned to the [train] extra's SAELens (tests/compat runs the
unit tests against older ones)."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainStepInput

from sfc_plugin.training.transcoder import (
    BatchTopKTrainingTranscoder,
    BatchTopKTrainingTranscoderConfig,
)

READ, WRITE = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def _step(tc, x_in, x_out, step=0):
    return tc.training_forward_pass(
        TrainStepInput(
            sae_in=torch.cat([x_in, x_out], -1),
            coefficients={},
            dead_neuron_mask=None,
            n_training_steps=step,
            is_logging_step=False,
        )
    )


def _training_transcoder(d_in, d_out, skip, seed=0, d_sae=48, k=6):
    torch.manual_seed(seed)
    cfg = BatchTopKTrainingTranscoderConfig(d_in=d_in, d_out=d_out, d_sae=d_sae, k=k, skip=skip)
    cfg.metadata.hook_name, cfg.metadata.hook_name_out = READ, WRITE
    return BatchTopKTrainingTranscoder(cfg)


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("skip", [False, True])
def test_training_transcoder_learns_the_written_activation(skip):
    """Trained on pairs (x_in, x_out = sparse code of x_in through another basis), the
    transcoder predicts x_out, not x_in: its MSE falls far below the variance of x_out."""
    g = torch.Generator().manual_seed(0)
    d_in, d_out = 12, 7
    enc, dec = torch.randn(d_in, 20, generator=g), torch.randn(20, d_out, generator=g)
    tc = _training_transcoder(d_in, d_out, skip)
    opt = torch.optim.Adam(tc.parameters(), lr=1e-2)
    for step in range(400):
        x_in = torch.randn(256, d_in, generator=g)
        x_out = torch.relu(x_in @ enc - 2.0) @ dec
        out = _step(tc, x_in, x_out, step)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(out.sae_in, x_out) and out.sae_out.shape == x_out.shape
    variance = (x_out - x_out.mean(0)).pow(2).sum(-1).mean()
    assert out.losses["mse_loss"] < 0.1 * variance
    assert (out.feature_acts > 0).sum(-1).float().mean() == pytest.approx(6, abs=1e-6)


@pytest.mark.parametrize("skip", [False, True])
def test_saved_transcoder_is_the_folded_training_transcoder(tmp_path, skip):
    """Trained on activations scaled by c, then folded and saved: the SAELens
    JumpReLU(Skip)Transcoder on raw x_in gives exactly (training output on c x_in) / c, with
    the training threshold as JumpReLU; hooks are recorded."""
    g = torch.Generator().manual_seed(1)
    d_in, d_out, c = 10, 6, 3.0
    tc = _training_transcoder(d_in, d_out, skip)
    opt = torch.optim.Adam(tc.parameters(), lr=1e-2)
    for step in range(30):
        x_in = torch.randn(128, d_in, generator=g)
        out = _step(tc, c * x_in, c * torch.tanh(x_in[:, :d_out]), step)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    if skip:
        with torch.no_grad():
            tc.W_skip.normal_(generator=g)  # make the skip term matter
    x_in = torch.randn(64, d_in, generator=g)
    with torch.no_grad():
        _, hidden = tc.encode_with_hidden_pre(c * x_in)
        f = hidden * (hidden > tc.topk_threshold)
        want = tc.transcode(f, c * x_in) / c
    tc.fold_activation_norm_scaling_factor(c)
    tc.save_inference_model(tmp_path)
    saved = SAE.load_from_disk(tmp_path)
    assert type(saved).__name__ == ("JumpReLUSkipTranscoder" if skip else "JumpReLUTranscoder")
    meta = saved.cfg.metadata
    assert (meta.hook_name, meta.get("hook_name_out")) == (READ, WRITE)
    assert (saved.cfg.d_in, saved.cfg.d_out) == (d_in, d_out)
    with torch.no_grad():
        got = saved(x_in)
    assert (f > 0).any() and (f == 0).any()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_training_transcoder_refuses_a_batch_of_the_wrong_width():
    tc = _training_transcoder(8, 5, False)
    with pytest.raises(ValueError, match="d_in \\+ d_out = 8 \\+ 5"):
        _step(tc, torch.randn(4, 8), torch.randn(4, 6))
    with pytest.raises(ValueError, match="d_out must be positive"):
        BatchTopKTrainingTranscoderConfig(d_in=8, d_sae=16, k=2)
