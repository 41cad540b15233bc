"""Linear probes (sfc_plugin.shift.probe) against ground truth computed here: pooled
activations from one unpadded forward per text, and the training loop written out by hand."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model
from torch import nn

from sfc_plugin.shift import Probe, default_probe_hook, pooled_activations, train_probe

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "She teaches nursing at the clinic.",
    "He wrote papers on algebra.",
    "The ward was quiet tonight and the patients slept.",
    "His lectures on chemistry filled the hall every week.",
    "Nurse",
    "She cares for children in the hospital, on night shifts, with two colleagues.",
]
LABELS = [1, 0, 1, 0, 1, 1]


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model("sequential", tokenizer, seed=4)


def _own_pooled(model, texts, hook, bos: bool):
    """One unpadded forward per text; mean of the hook's activation over its tokens (without
    position 0 when the model prepends BOS)."""
    out = []
    for text in texts:
        tokens = model.to_tokens(text)
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        x = cache[hook][0]
        out.append(x[1:].mean(0) if bos else x.mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("bos", [False, True])
def test_pooled_activations_are_masked_means(model, bos):
    """Right padding inside a batch changes nothing: each row is the mean over that text's own
    tokens (BOS excluded when prepended); several batches, the last partial."""
    old = model.cfg.default_prepend_bos
    model.cfg.default_prepend_bos = bos
    try:
        hook = default_probe_hook(model)
        assert hook == "blocks.1.hook_resid_post"
        got = pooled_activations(model, TEXTS, batch_size=4, progress=False)
        want = _own_pooled(model, TEXTS, hook, bos)
    finally:
        model.cfg.default_prepend_bos = old
    assert got.shape == (len(TEXTS), model.cfg.d_model)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # other hooks too, and fwd_hooks take effect
    mlp = pooled_activations(model, TEXTS, "blocks.0.hook_mlp_out", progress=False)
    torch.testing.assert_close(mlp, _own_pooled(model, TEXTS, "blocks.0.hook_mlp_out", False))
    zeroed = pooled_activations(
        model,
        TEXTS,
        "blocks.0.hook_mlp_out",
        fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: torch.zeros_like(x))],
        progress=False,
    )
    assert zeroed.abs().max() == 0


def test_training_is_the_written_out_loop(model):
    """AdamW, lr 1e-2, one epoch, BCE-with-logits, seeded init and order: the same weights as
    this loop, bit for bit; another seed gives another probe."""
    acts = pooled_activations(model, TEXTS, progress=False)
    probe = train_probe(model, TEXTS, LABELS, batch_size=4, seed=3, progress=False)
    torch.manual_seed(3)
    linear = nn.Linear(acts.shape[1], 1)
    opt = torch.optim.AdamW(linear.parameters(), lr=1e-2)
    order = torch.randperm(len(acts))
    y = torch.tensor(LABELS, dtype=torch.float32)
    for start in range(0, len(acts), 4):
        rows = order[start : start + 4]
        opt.zero_grad()
        nn.BCEWithLogitsLoss()(linear(acts[rows])[:, 0], y[rows]).backward()
        opt.step()
    assert torch.equal(probe.linear.weight, linear.weight)
    assert torch.equal(probe.linear.bias, linear.bias)
    again = train_probe(None, None, LABELS, hook=probe.hook, activations=acts, batch_size=4, seed=3)
    assert torch.equal(again.linear.weight, probe.linear.weight)
    other = train_probe(None, None, LABELS, hook=probe.hook, activations=acts, seed=4)
    assert not torch.equal(other.linear.weight, probe.linear.weight)
    assert probe.settings["n_examples"] == len(TEXTS) and probe.settings["lr"] == 1e-2


def test_predict_accuracy_and_save_load(model, tmp_path):
    """A probe that learns a separable task; predictions are logit > 0; saved and loaded
    exactly; bad files are refused."""
    texts = [f"The {w} sat here." for w in ("cat", "dog")] * 20
    labels = [0, 1] * 20
    probe = train_probe(model, texts, labels, epochs=30, lr=5e-2, progress=False)
    logits = probe.logits(model, texts, progress=False)
    assert torch.equal(probe.predict(model, texts, progress=False), (logits > 0).long())
    assert probe.accuracy(model, texts, labels, progress=False) == 1.0
    probe.save(tmp_path / "p.json")
    loaded = Probe.load(tmp_path / "p.json")
    assert loaded.hook == probe.hook and loaded.settings == probe.settings
    torch.testing.assert_close(loaded.logits(model, texts, progress=False), logits)
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="not a sfc_plugin probe file"):
        Probe.load(tmp_path / "bad.json")
    (tmp_path / "v9.json").write_text(json.dumps({"schema": "sfc_plugin.probe", "version": 9}))
    with pytest.raises(ValueError, match="version 9"):
        Probe.load(tmp_path / "v9.json")
    (tmp_path / "cut.json").write_text('{"schema": "sfc_plugin.pr')
    with pytest.raises(ValueError, match="not JSON"):
        Probe.load(tmp_path / "cut.json")


def test_bad_input_names_the_row_or_argument(model):
    with pytest.raises(ValueError, match=r"labels\[2\] is 2"):
        train_probe(model, TEXTS, [0, 1, 2, 0, 1, 1], progress=False)
    with pytest.raises(ValueError, match="5 labels for 6 texts"):
        train_probe(model, TEXTS, LABELS[:5], progress=False)
    with pytest.raises(ValueError, match=r"texts\[1\].*no tokens"):
        pooled_activations(model, ["fine", ""], progress=False)
    with pytest.raises(TypeError, match=r"texts\[0\] is a int"):
        pooled_activations(model, [3], progress=False)
    with pytest.raises(TypeError, match="not one string"):
        pooled_activations(model, "one text", progress=False)
    with pytest.raises(ValueError, match="not a hook point"):
        pooled_activations(model, TEXTS, "blocks.9.hook_resid_post", progress=False)
    with pytest.raises(ValueError, match="hook="):
        train_probe(None, None, LABELS, activations=torch.zeros(6, 4))
    with pytest.raises(ValueError, match="epochs"):
        train_probe(None, None, LABELS, hook="h", activations=torch.zeros(6, 4), epochs=0)
