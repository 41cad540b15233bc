"""Transcoders as dictionaries: quality, feature index, and the two offline loaders
(Dunefsky's ``.pt`` files; SAELens releases by name from the hub's cache
layout), each against values computed directly in the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_random_sae, make_random_transcoder, make_tiny_model
from hub_cache import HubCache, write_dunefsky
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sfc_plugin.datasets.text import token_batches
from sfc_plugin.dictionaries import load_saes
from sfc_plugin.dictionaries.quality import sae_quality
from sfc_plugin.frontend.dashboards import build_feature_index
from sfc_plugin.sites import attach_saes

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the farmers watch from the hill. " * 3,
    "Rivers run to the sea, and the sea is never full; the wind returns to its circuits. " * 3,
]
READ, WRITE = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


# ------------------------------------------------------------------------- quality, index


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model("llama", tokenizer, seed=3)


def test_quality_of_a_transcoder_replaces_the_mlp(model):
    """Variance explained of the MLP output by the transcoder's prediction from the MLP's
    input (skip term included), and CE with the MLP output replaced by that prediction,
    computed here with plain hooks."""
    d, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    tc = make_random_transcoder(READ, WRITE, d, d, d_sae=24, seed=2, skip=True)
    mlp_read = make_random_transcoder("blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out", d_mlp, d)
    saes = {WRITE: tc, "blocks.0.hook_mlp_out": mlp_read}
    table = sae_quality(model, saes, TEXTS, context=16, batch_size=4).set_index("hook_name")
    first = int(model.cfg.default_prepend_bos)
    for write, sae in saes.items():
        read = sae.cfg.metadata.hook_name
        xs, preds, losses, n = [], [], 0.0, 0
        for tokens in token_batches(model, TEXTS, 16, 4):
            _, cache = model.run_with_cache(tokens, names_filter=[read, write])
            with torch.no_grad():
                pred = sae(cache[read])  # SAELens forward: decode(encode(x)) + skip
            xs.append(cache[write][:, first:].reshape(-1, d))
            preds.append(pred[:, first:].reshape(-1, d))

            def put(x, hook, pred=pred):
                x = x.clone()
                x[:, first:] = pred[:, first:]
                return x

            with torch.no_grad():
                logits = model.run_with_hooks(tokens, fwd_hooks=[(write, put)])
            logp = logits[:, first:-1].log_softmax(-1)
            losses -= float(logp.gather(-1, tokens[:, first + 1 :, None]).sum())
            n += tokens.shape[0] * (tokens.shape[1] - 1 - first)
        x, x_hat = torch.cat(xs), torch.cat(preds)
        want_ve = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        row = table.loc[write]
        assert row.variance_explained == pytest.approx(float(want_ve), rel=1e-4, abs=1e-5)
        assert row.ce_sae == pytest.approx(losses / n, rel=1e-4)
        assert row.ce_sae != pytest.approx(row.ce_clean, rel=1e-3)  # the MLP was replaced


def test_feature_index_reads_a_transcoder_at_its_read_hook(model, tmp_path):
    """Top activations of a transcoder's features are those of encode(read activation)."""
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    d = model.cfg.d_model
    saes = {
        "blocks.0.hook_resid_post": make_random_sae("blocks.0.hook_resid_post", d, 16, seed=1),
        WRITE: make_random_transcoder(READ, WRITE, d, d, d_sae=16, seed=4),
    }
    index = build_feature_index(model, saes, sample, context=16, max_tokens=60, k=3)
    _, cache = model.run_with_cache(index.tokens, names_filter=[READ])
    with torch.no_grad():
        f = saes[WRITE].encode(cache[READ])[:, index.first :]
    checked = 0
    for feature in range(16):
        body = f[..., feature].flatten()
        want = body[body > 0].sort(descending=True).values[:3]
        got = [c.activation for c in index.top_contexts(WRITE, feature)]
        assert got == pytest.approx(want.tolist(), rel=1e-5)
        checked += len(got)
    assert checked > 10


# -------------------------------------------------------------------------- Dunefsky files


def _gpt2_like(d_model=16, n_layers=2):
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=32,
        d_head=4,
        n_heads=2,
        d_mlp=32,
        d_vocab=50,
        act_fn="gelu_new",
        normalization_type="LNPre",  # GPT-2 with fold_ln: ln2.hook_normalized is the MLP input
        seed=0,
    )
    return HookedTransformer(cfg)


def test_dunefsky_transcoders_load_as_sites_with_their_own_formula(tmp_path):
    """A directory of Dunefsky files loads by path (their code is not importable here): each
    becomes a site at (ln2.hook_normalized, hook_mlp_out) whose features are
    ReLU((x - b_dec) W_enc + b_enc) and whose error is mlp_out - (f W_dec + b_dec_out)."""
    model = _gpt2_like()
    raw = {L: write_dunefsky(tmp_path, L, 16, 64, seed=L)[1] for L in (0, 1)}
    saes = load_saes(tmp_path)
    assert list(saes) == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    names = [f"blocks.{L}.{h}" for L in (0, 1) for h in ("ln2.hook_normalized", "hook_mlp_out")]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    with torch.no_grad(), attach_saes(model, saes, grad=False) as acts:
        model(tokens)
    for L, s in raw.items():
        x = cache[f"blocks.{L}.ln2.hook_normalized"]
        f = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        err = cache[f"blocks.{L}.hook_mlp_out"] - (f @ s["W_dec"] + s["b_dec_out"])
        assert (f > 0).any() and (f == 0).any()
        torch.testing.assert_close(acts.features[f"blocks.{L}.hook_mlp_out"], f, atol=1e-5, rtol=0)
        torch.testing.assert_close(acts.errors[f"blocks.{L}.hook_mlp_out"], err, atol=1e-5, rtol=0)
        meta = saes[f"blocks.{L}.hook_mlp_out"].cfg.metadata
        assert meta.model_name == "gpt2-small" and meta.hook_name.endswith("ln2.hook_normalized")


def test_dunefsky_files_with_missing_keys_or_bad_shapes_are_named(tmp_path):
    path, _ = write_dunefsky(tmp_path, 0, 16, 32, seed=0, drop=("b_dec_out",))
    with pytest.raises(ValueError, match=rf"{path.name}.*lacks \['b_dec_out'\]"):
        load_saes(path)
    bad = tmp_path / "other"
    bad.mkdir()
    path, state = write_dunefsky(bad, 0, 16, 32, seed=0)
    wrong = {**state, "b_enc": torch.zeros(31)}
    torch.save({"cfg": None, "state_dict": wrong}, path)
    with pytest.raises(
        ValueError, match=rf"{path.name}: b_enc has shape \(31,\), expected \(32,\)"
    ):
        load_saes(path)


# ------------------------------------------------------------ SAELens releases, by name


def test_gemma_scope_transcoder_by_name_from_the_hub_cache(tmp_path, hf_offline, no_network):
    """``load_saes("gemma-scope-2b-pt-transcoders", sae_ids=...)`` with the hub offline reads
    the file from the hub's cache layout (params.npz as Gemma Scope ships it), keys the
    transcoder by hook_mlp_out, and works as a site on a one-layer model of Gemma 2 2B's
    width: features are JumpReLU(x W_enc + b_enc) at ln2.hook_normalized."""
    sae_id = "layer_0/width_16k/average_l0_76"
    d_model, d_sae = 2304, 16384
    rng = np.random.default_rng(0)
    live = 64  # only the first features are non-zero (cheap to check against)
    w_enc = np.zeros((d_model, d_sae), np.float16)
    w_enc[:, :live] = rng.standard_normal((d_model, live)) / d_model**0.5
    w_dec = np.zeros((d_sae, d_model), np.float16)
    w_dec[:live] = rng.standard_normal((live, d_model)) / live**0.5
    params = {
        "w_enc": w_enc,
        "w_dec": w_dec,
        "b_enc": np.zeros(d_sae, np.float16),
        "b_dec": (0.1 * rng.standard_normal(d_model)).astype(np.float16),
        "threshold": np.full(d_sae, 0.5, np.float16),
    }
    np.savez(tmp_path / "params.npz", **params)
    del w_enc, w_dec
    hub = HubCache(hf_offline, "google/gemma-scope-2b-pt-transcoders")
    hub.add_file(f"{sae_id}/params.npz", (tmp_path / "params.npz").read_bytes())
    saes = load_saes("gemma-scope-2b-pt-transcoders", sae_ids=sae_id, device="cpu")
    tc = saes["blocks.0.hook_mlp_out"]
    assert type(tc).__name__ == "JumpReLUTranscoder"
    assert tc.cfg.metadata.hook_name == "blocks.0.ln2.hook_normalized"

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=d_model, n_ctx=16, d_head=8, n_heads=2, d_mlp=16, d_vocab=40,
        act_fn="gelu", normalization_type="RMSPre", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    tokens = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.ln2.hook_normalized"])
    x = cache["blocks.0.ln2.hook_normalized"][0].double()
    pre = x @ torch.from_numpy(params["w_enc"][:, :live]).double()
    want = pre * (pre > 0.5)
    with torch.no_grad(), attach_saes(model, saes, grad=False) as acts:
        model(tokens)
    got = acts.features["blocks.0.hook_mlp_out"][0]
    assert (want > 0).any() and (want == 0).any()
    torch.testing.assert_close(got[:, :live].double(), want, atol=1e-3, rtol=1e-3)
    assert not got[:, live:].any()
    assert no_network == []


def test_a_transcoder_of_the_wrong_width_is_named(model):
    """d_in / d_out that do not match the hooks' activations fail with the site and sizes."""
    d = model.cfg.d_model
    tokens = torch.randint(0, 100, (1, 5))
    cases = [
        (d + 4, d, "read activation has 32 dims.*d_in is 36"),
        (d, d - 2, "written activation has 32 dims.*d_out is 30"),
    ]
    for d_in, d_out, what in cases:
        tc = make_random_transcoder(READ, WRITE, d_in, d_out)
        with pytest.raises(ValueError, match=f"site {WRITE}: {what}"):
            with torch.no_grad(), attach_saes(model, {WRITE: tc}, grad=False):
                model(tokens)
