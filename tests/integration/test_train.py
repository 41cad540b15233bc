"""Tests of SAE training (``sfc_plugin.training.trainer``, the ``sfc train`` command).

The end-to-end tests train three tiny SAEs (layer 1 of the embedded SmolLM2, d_sae 32) on a
few thousand tokens of a generated corpus, interrupt and crash the run, resume it, and check
the saved SAEs. Every run writes into ``tmp_path`` only.
"""

from __future__ import annotations

import json
import os
import random
import signal
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.training._interruption import InterruptedException
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file

from sfc_plugin.training import trainer as T

WORDS = (
    "the a one some every small large old new red green quiet loud river city house garden "
    "teacher doctor child friend dog cat bird tree road window letter song story market "
    "walks sees finds brings opens closes writes reads sings builds carries follows likes "
    "near under over behind before after with without quickly slowly often never today "
    "and but because while when where which that this those there here very too"
).split()

HOOKS = ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
BATCH = 128
TOKENS = 3072  # 24 steps


def _write_docs(path: Path, n: int, rng: random.Random) -> None:
    with open(path, "w") as f:
        for i in range(n):
            sentences = [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "."
                for _ in range(rng.randint(3, 8))
            ]
            f.write(json.dumps({"text": " ".join(sentences), "source": f"gen{i % 3}"}) + "\n")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A generated corpus of about 20k tokens (train) plus a held-out split and a manifest."""
    d = tmp_path / "corpus"
    d.mkdir()
    rng = random.Random(0)
    _write_docs(d / "train.jsonl", 300, rng)
    _write_docs(d / "heldout.jsonl", 30, rng)
    (d / "manifest.json").write_text(json.dumps({"name": "generated", "docs": 300}))
    return d


def _config(
    corpus: Path,
    out: Path,
    *,
    tokens: int = TOKENS,
    hooks: tuple[str, ...] = ("attn_out", "mlp_out", "resid_post"),
    **options,
) -> T.TrainConfig:
    small = dict(layers=[1], d_sae=32, k=4, context_size=16, batch_size=BATCH, lm_batch_size=8)
    small.update(buffer_tokens=256, checkpoint_every=512)
    return T.TrainConfig(corpus, out, hooks=list(hooks), tokens=tokens, **{**small, **options})


def _stop_at(monkeypatch, n_samples: int, action) -> None:
    """Call ``action()`` once, right after the first SAE's step that reaches ``n_samples``."""
    original = SAETrainer.step
    fired = []

    def step(self, batch):
        out = original(self, batch)
        if self.n_training_samples == n_samples and not fired:
            fired.append(True)
            action()
        return out

    monkeypatch.setattr(SAETrainer, "step", step)


def _checkpoint_names(out: Path) -> list[str]:
    return sorted((p.name for p in (out / T.CHECKPOINTS_DIR).iterdir()), key=int)


def _crash() -> None:
    raise RuntimeError("simulated crash")


# ------------------------------------------------------------------------------- no model


def test_config_defaults_validation_and_record():
    config = T.TrainConfig(corpus="c", out="o")
    assert config.layers == list(range(2, 30, 3))
    assert (config.d_sae, config.k, config.architecture, config.exclude_bos) == (
        1152,
        32,
        "topk",
        True,
    )
    hooks = T.hook_names(config.layers, config.hooks)
    assert len(hooks) == 30 and hooks[:2] == ["blocks.2.hook_attn_out", "blocks.2.hook_mlp_out"]
    for bad, message in (
        ({"hooks": ["attn_z"]}, "hooks"),
        ({"k": 64, "d_sae": 32}, "k must not exceed d_sae"),
        ({"buffer_tokens": 8}, "buffer_tokens"),
        ({"architecture": "relu"}, "architecture"),
        ({"layers": []}, "layers"),
        ({"hooks": []}, "nothing to train"),
        ({"transcoders": [-1]}, "negative layer"),
        ({"transcoders": [1], "transcoder_read": "blocks.1.ln2.hook_normalized"}, "inside"),
    ):
        with pytest.raises(ValueError, match=message):
            T.TrainConfig(corpus="c", out="o", **bad)
    # The train_args.json of earlier runs holds these options (and two hashes); --resume
    # compares a run with it by name, so the names must stay.
    assert set(asdict(config)) - T.RESUMABLE_CHANGES == {
        "model", "layers", "hooks", "d_sae", "architecture", "k", "tokens", "context_size",
        "batch_size", "lr", "seed", "device", "exclude_bos", "transcoders", "transcoder_read",
        "transcoder_skip",
    }  # fmt: skip
    assert T.TrainConfig(corpus="c", out="o", hooks=[], transcoders=[0, 1]).hooks == []
    assert T.TrainConfig(corpus="c", out="o", layers=(2, 5)).layers == [2, 5]  # as JSON reads


def test_contexts_start_with_bos_and_separate_documents(tokenizer):
    texts = ["The cat sat on the mat.", "Dogs bark at night and sleep all day long."]
    doc0, doc1 = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
    size = len(doc0) + 4
    rows = T.tokenize_contexts(texts, tokenizer, context_size=size, bos_id=0, max_contexts=10)
    assert rows.shape[1] == size and (rows[:, 0] == 0).all()
    # BOS, the first document, BOS as separator, the start of the second document
    assert rows[0].tolist() == [0, *doc0, 0, *doc1[:2]]
    assert len(T.tokenize_contexts(texts * 50, tokenizer, 8, 0, max_contexts=3)) == 3


# ----------------------------------------------------------------------------- real model


@pytest.mark.real_model
def test_train_interrupt_crash_resume(real_model, corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)

    # 1. Ctrl-C after step 10: the run stops at the step boundary and checkpoints there.
    _stop_at(monkeypatch, 10 * BATCH, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(InterruptedException):
        T.train(_config(corpus, out), model=real_model)
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert _checkpoint_names(out) == ["1024", "1280"]  # periodic 512 pruned, interrupt at 1280
    assert T.latest_checkpoint(out / T.CHECKPOINTS_DIR).name == "1280"
    state = torch.load(out / T.CHECKPOINTS_DIR / "1280" / HOOKS[0] / "trainer_state.pt")
    assert state["n_training_samples"] == 1280 and state["n_training_steps"] == 10

    # 2. Resuming must use the same arguments, and --resume is needed to reuse --out.
    with pytest.raises(ValueError, match="differ"):
        T.train(_config(corpus, out, resume=True, k=5), model=real_model)
    with pytest.raises(FileExistsError):
        T.train(_config(corpus, out), model=real_model)
    tokenize = T.tokenize_contexts
    monkeypatch.setattr(T, "tokenize_contexts", lambda *a: tokenize(*a)[1:])
    with pytest.raises(ValueError, match="training contexts differ"):
        T.train(_config(corpus, out, resume=True), model=real_model)
    monkeypatch.setattr(T, "tokenize_contexts", tokenize)

    # 3. Resume, then crash (no checkpoint) after step 17: the periodic one at 2048 remains.
    _stop_at(monkeypatch, 17 * BATCH, _crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        T.train(_config(corpus, out, resume=True), model=real_model)
    assert _checkpoint_names(out) == ["1536", "2048"]
    saved = torch.load(out / T.CHECKPOINTS_DIR / "2048" / HOOKS[2] / "trainer_state.pt")
    assert saved["n_training_samples"] == 2048

    # 4. Resume to the end.
    monkeypatch.undo()
    config = T.train(_config(corpus, out, resume=True), model=real_model)
    assert config["training_tokens"] == TOKENS and config["training_steps"] == TOKENS // BATCH
    assert config["resumed_from"].endswith("2048")
    assert config["session"]["tokens_trained"] == TOKENS - 2048
    assert config["corpus"]["manifest"] == {"name": "generated", "docs": 300}
    assert config["hook_names"] == HOOKS and config["versions"]["sae-lens"]
    assert json.loads((out / T.CONFIG_FILE).read_text())["args"]["k"] == 4
    assert not (out / T.CHECKPOINTS_DIR).exists()

    tokens = real_model.to_tokens("The old teacher walks slowly to the market.")
    _, cache = real_model.run_with_cache(tokens, names_filter=HOOKS)
    for hook in HOOKS:
        sae = SAE.load_from_disk(out / T.SAES_DIR / hook)
        assert type(sae).__name__ == "TopKSAE" and sae.cfg.d_sae == 32
        assert sae.cfg.metadata.hook_name == hook and hook in real_model.hook_dict
        assert sae.cfg.metadata.prepend_bos is True
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))  # norms folded
        acts = sae.encode(cache[hook][0])
        assert ((acts > 0).sum(-1) <= 4).all() and (acts > 0).any()
        assert config["saes"][hook]["l0_last_window"] == pytest.approx(4, abs=0.5)

    # 5. A finished run is not trained again.
    assert T.train(_config(corpus, out, resume=True), model=real_model) == config


@pytest.mark.real_model
def test_transcoders_train_beside_an_sae_interrupt_and_resume(
    real_model, corpus, tmp_path, monkeypatch
):
    """Transcoders at layers 0 and 1 (ln2.hook_normalized -> hook_mlp_out) train in the same
    pass as an mlp_out SAE at layer 1; Ctrl-C checkpoints them all, --resume finishes. They
    are saved as SAELens JumpReLU transcoders under OUT/transcoders/, load with load_saes
    (keyed by the hook they write, separately from the SAE at that hook), keep L0 near k,
    and work as sites beside the SAE."""
    out = tmp_path / "run"
    options = dict(hooks=("mlp_out",), transcoders=[0, 1], architecture="batchtopk")
    _stop_at(monkeypatch, 10 * BATCH, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(InterruptedException):
        T.train(_config(corpus, out, **options), model=real_model)
    names = {p.name for p in (out / T.CHECKPOINTS_DIR / "1280").iterdir() if p.is_dir()}
    assert names == {
        HOOKS[1],
        "blocks.0.hook_mlp_out.transcoder",
        "blocks.1.hook_mlp_out.transcoder",
    }
    monkeypatch.undo()
    record = T.train(_config(corpus, out, resume=True, **options), model=real_model)
    assert record["training_tokens"] == TOKENS and record["resumed_from"].endswith("1280")
    assert record["transcoder_hooks"] == {
        f"blocks.{L}.hook_mlp_out": f"blocks.{L}.ln2.hook_normalized" for L in (0, 1)
    }
    assert set(record["saes"]) == {HOOKS[1]}
    assert not (out / T.SAES_DIR / "blocks.1.hook_mlp_out.transcoder").exists()

    from sfc_plugin.dictionaries import load_saes

    transcoders = load_saes(out / T.TRANSCODERS_DIR)
    assert list(transcoders) == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert list(load_saes(out / T.SAES_DIR)) == [HOOKS[1]]
    for L in (0, 1):
        tc = transcoders[f"blocks.{L}.hook_mlp_out"]
        assert type(tc).__name__ == "JumpReLUTranscoder" and tc.cfg.d_sae == 32
        assert record["transcoders"][f"blocks.{L}.hook_mlp_out"]["l0_last_window"] == (
            pytest.approx(4, abs=1)
        )
        assert (tc.cfg.d_in, tc.cfg.d_out) == (576, 576)
        assert tc.cfg.metadata.hook_name == f"blocks.{L}.ln2.hook_normalized"
    # Learning the written activation is checked in tests/unit/test_transcoders.py; 24 steps
    # of 128 tokens are too few to beat simple baselines on the real model.
    from sfc_plugin.sites import attach_saes

    mixed = {"blocks.0.hook_mlp_out": transcoders["blocks.0.hook_mlp_out"]} | load_saes(
        out / T.SAES_DIR
    )
    tokens = real_model.to_tokens("The old teacher walks slowly to the market.")
    with torch.no_grad():
        plain = real_model(tokens)
        with attach_saes(real_model, mixed, grad=False) as acts:
            attached = real_model(tokens)
    assert torch.equal(plain, attached)
    assert (acts.features["blocks.0.hook_mlp_out"] > 0).sum(-1)[0, 1:].float().mean() > 0


@pytest.mark.real_model
def test_same_seed_same_saes_and_evals(real_model, corpus, tmp_path):
    weights = []
    for name, seed, extra in (
        ("a", 0, {"eval_batches": 1, "eval_batch_size": 2}),
        ("b", 0, {}),
        ("c", 1, {}),
    ):
        out = tmp_path / name
        options = _config(corpus, out, seed=seed, tokens=1024, hooks=("resid_post",), **extra)
        config = T.train(options, model=real_model)
        weights.append(load_file(out / T.SAES_DIR / HOOKS[2] / "sae_weights.safetensors"))
        if extra:  # SAELens' evals on held-out contexts, recorded per SAE
            heldout = config["saes"][HOOKS[2]]["heldout"]
            assert heldout["l0"] == pytest.approx(4, abs=0.5)
            assert {"explained_variance", "ce_loss_score", "dead_fraction_heldout"} <= set(heldout)
            saved = json.loads((out / T.CONFIG_FILE).read_text())
            assert saved["saes"][HOOKS[2]]["heldout"] == heldout
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)
    assert not torch.equal(weights[0]["W_enc"], weights[2]["W_enc"])
