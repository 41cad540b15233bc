"""The recipes in docs/recipes/: each page's Python code, run unchanged, offline, against a
Hugging Face cache laid out exactly as the hub's.

Each test builds the cache the recipe's calls read (``sfc.load_model(name)``: model config,
tokenizer and random weights of the same architecture, but narrow; ``sfc.load_saes(release,
ids)``: SAE files in the release's format at the paths SAELens' ``pretrained_saes.yaml``
names). It then runs the page's Python blocks in a fresh interpreter with
``HF_HUB_OFFLINE=1`` and every socket refused. The driver reports the loaded SAEs (class,
hooks, a checksum of the weights) and the result, and the test compares them with what it
wrote into the cache.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_cache import HubCache, bpe_tokenizer

import sfc_plugin as sfc

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "docs" / "recipes"

pytestmark = pytest.mark.usefixtures("one_thread")

DRIVER = r"""
import json, socket, sys

attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[1:] if len(args) > 1 else args))
    raise OSError("network access attempted during an offline recipe test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
prelude, recipe, report = sys.argv[1:4]
namespace = {"__name__": "__main__"}
exec(compile(open(prelude).read(), prelude, "exec"), {"__name__": "prelude"})
exec(compile(open(recipe).read(), recipe, "exec"), namespace)

import torch
from sae_lens import SAE

def describe(sae):
    meta = sae.cfg.metadata
    return {
        "class": type(sae).__name__,
        "hook_name": meta.hook_name,
        "hook_name_out": meta.get("hook_name_out"),
        "W_enc_sum": float(sae.W_enc.double().sum()),
        "W_dec_sum": float(sae.W_dec.double().sum()),
        "d_sae": sae.cfg.d_sae,
    }

out = {"attempts": attempts, "saes": {}, "scalars": {}}
for name, value in namespace.items():
    if isinstance(value, dict) and value and all(isinstance(v, SAE) for v in value.values()):
        out["saes"][name] = {hook: describe(sae) for hook, sae in value.items()}
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out["scalars"][name] = value
    elif type(value).__name__ == "Circuit":
        out["scalars"][name + ".nodes"] = len(value.nodes)
        out["scalars"][name + ".edges"] = len(value.edges)
model = namespace["model"]
out["model"] = {k: getattr(model.cfg, k) for k in ("n_layers", "d_model", "d_vocab")}
json.dump(out, open(report, "w"))
"""


def recipe_code(page: str) -> str:
    """The Python blocks of a recipe page, in order."""
    text = (RECIPES / page).read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert blocks, f"{page} has no python block"
    return "\n".join(blocks)


def run_recipe(
    page: str,
    hf_home: Path,
    tmp_path: Path,
    model_shape: tuple[int, int],
    prelude: str = "",
    smaller: dict | None = None,
) -> dict:
    """Run the page's code offline against the cache in ``hf_home``; the driver's report,
    after checking that the model has the stand-in's ``(n_layers, d_model)``.

    ``smaller``: exact substitutions in the code (each must occur) that shrink the data where
    the real dictionary sizes would make the test slow."""
    code = recipe_code(page)
    for old, new in (smaller or {}).items():
        assert old in code, f"{page}: {old!r} is not in its code"
        code = code.replace(old, new)
    files = {"driver.py": DRIVER, "prelude.py": prelude, "recipe.py": code}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "SFC_PLUGIN_CACHE": str(tmp_path / "sfc_cache"),
    }
    env.pop("HF_TOKEN", None)
    work = tmp_path / "work"
    work.mkdir()
    args = [sys.executable, str(tmp_path / "driver.py")]
    args += [str(tmp_path / n) for n in ("prelude.py", "recipe.py")] + [str(tmp_path / "r.json")]
    run = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (
        f"{page} failed offline:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["attempts"] == [], f"{page} tried to reach the network: {report['attempts']}"
    assert (report["model"]["n_layers"], report["model"]["d_model"]) == model_shape
    report["work"] = work
    return report


def release(name: str):
    """SAELens' directory entry for a release: ``repo_id``, ``conversion_func``, ``saes_map``
    (SAE id -> path in the repository)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()[name]


def agreement_texts() -> list[str]:
    """Every sentence of the four agreement tasks, to train the stand-in tokenizers on."""
    smol = sfc.load_tokenizer()
    texts = []
    for task in ("simple", "within_rc", "across_rc", "across_pp"):
        for row in sfc.datasets.agreement(task, smol, split="all"):
            texts += [row["clean_prefix"] + row["clean_answer"]]
            texts += [row["patch_prefix"] + row["patch_answer"]]
    return texts


def add_causal_lm(
    hub: HubCache, model, tokenizer, tokenizer_config: dict, special: dict, config_extra=None
):
    """A model repository: ``save_pretrained`` files plus the tokenizer files of the hub's
    repository (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``);
    ``config_extra``: fields the hub's ``config.json`` has that ``save_pretrained`` drops."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config = json.loads((Path(tmp) / "config.json").read_text())
        (Path(tmp) / "config.json").write_text(json.dumps({**config, **(config_extra or {})}))
        tokenizer.save(str(Path(tmp) / "tokenizer.json"))
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        (Path(tmp) / "special_tokens_map.json").write_text(json.dumps(special))
        hub.add_directory(Path(tmp))


def random_sae_weights(d_in: int, d_sae: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_enc": -0.1 * torch.rand(d_sae, generator=g),
        "b_dec": 0.1 * torch.randn(d_in, generator=g),
    }


def checksums(weights: dict[str, torch.Tensor]) -> tuple[float, float]:
    return float(weights["W_enc"].double().sum()), float(weights["W_dec"].double().sum())


# ------------------------------------------------------------------ Pythia-70M, paper's SAEs


PYTHIA_D, PYTHIA_SAE = 32, 64


def pythia_sae_cfg(hook: str) -> dict:
    """cfg.json in the pre-6.0 SAELens format (what SAELens' plain loader converts)."""
    layer = int(re.search(r"blocks\.(\d+)", hook).group(1))
    return {
        "architecture": "standard",
        "d_in": PYTHIA_D,
        "d_sae": PYTHIA_SAE,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "pythia-70m-deduped",
        "hook_point": hook,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "context_size": 128,
        "dataset_path": "EleutherAI/the_pile_deduplicated",
        "prepend_bos": False,
        "normalize_activations": "none",
    }


@pytest.fixture
def pythia_hub(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    home = tmp_path / "hf_home"
    cache = home / "hub"
    eot = "<|endoftext|>"
    tokenizer = bpe_tokenizer(agreement_texts() * 3, [eot, "<|padding|>"], vocab_size=800)
    config = GPTNeoXConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=PYTHIA_D,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=4 * PYTHIA_D,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        use_parallel_residual=True,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
        initializer_range=0.3,  # logit differences of order 1, so the circuit has nodes
    )
    torch.manual_seed(0)
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    add_causal_lm(
        HubCache(cache, "EleutherAI/pythia-70m-deduped"),
        GPTNeoXForCausalLM(config),
        tokenizer,
        {"add_prefix_space": False, "tokenizer_class": "GPTNeoXTokenizer", **special},
        special,
    )
    written = {}
    g = torch.Generator().manual_seed(0)
    for name in ("res", "att", "mlp"):
        info = release(f"pythia-70m-deduped-{name}-sm")
        assert info.conversion_func is None  # SAELens' plain loader
        hub = HubCache(cache, info.repo_id)
        for sae_id, folder in info.saes_map.items():
            weights = random_sae_weights(PYTHIA_D, PYTHIA_SAE, g)
            sparsity = -5 * torch.rand(PYTHIA_SAE, generator=g)
            hub.add_sae(folder, pythia_sae_cfg(sae_id), weights, sparsity)
            written[sae_id] = checksums(weights)
    return home, written


def test_pythia_70m_recipe_runs_offline(pythia_hub, tmp_path):
    home, written = pythia_hub
    report = run_recipe("pythia-70m.md", home, tmp_path, model_shape=(6, PYTHIA_D))
    saes = report["saes"]["saes"]
    hooks = ["blocks.0.hook_resid_pre"] + [
        f"blocks.{L}.{h}"
        for L in range(6)
        for h in ("hook_attn_out", "hook_mlp_out", "hook_resid_post")
    ]
    assert sorted(saes) == sorted(hooks) and len(saes) == 19
    for hook, got in saes.items():
        assert got["class"] == "StandardSAE" and got["hook_name"] == hook
        assert (got["W_enc_sum"], got["W_dec_sum"]) == pytest.approx(written[hook], abs=1e-4)
    scalars = report["scalars"]
    assert scalars["circuit.nodes"] > 0
    assert np.isfinite(scalars["faithfulness"]) and np.isfinite(scalars["completeness"])
    assert (report["work"] / "pythia-70m_across_rc.json").is_file()
    assert (report["work"] / "pythia-70m_across_rc.html").is_file()


# ------------------------------------------------------------------ GPT-2 small, transcoders


GPT2_D, GPT2_HEADS, GPT2_SAE = 32, 4, 64


def ioi_texts() -> list[str]:
    smol = sfc.load_tokenizer()
    rows = sfc.datasets.ioi(smol, split="all")
    return [r["clean_prefix"] + r["clean_answer"] for r in rows]


@pytest.fixture
def gpt2_hub(tmp_path):
    from hub_cache import write_dunefsky
    from transformers import GPT2Config, GPT2LMHeadModel

    home = tmp_path / "hf_home"
    cache = home / "hub"
    eot = "<|endoftext|>"
    tokenizer = bpe_tokenizer(agreement_texts() * 3 + ioi_texts(), [eot], vocab_size=900)
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=1024,
        n_embd=GPT2_D,
        n_layer=12,
        n_head=GPT2_HEADS,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.3,  # logit differences of order 1, so the trace has nodes
    )
    torch.manual_seed(0)
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    add_causal_lm(
        HubCache(cache, "gpt2"),
        GPT2LMHeadModel(config),
        tokenizer,
        {"add_prefix_space": False, "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer",
         **special},
        special,
        config_extra={"n_ctx": 1024},  # a legacy field of gpt2's config.json, read by TL
    )  # fmt: skip
    written = {}
    transcoders = HubCache(cache, "pchlenski/gpt2-transcoders")
    for layer in range(12):
        path, state = write_dunefsky(tmp_path, layer, GPT2_D, GPT2_SAE, seed=layer)
        transcoders.add_file(path.name, path.read_bytes())
        written[f"blocks.{layer}.hook_mlp_out"] = checksums(state)
    transcoders.add_json(".gitattributes", {})  # a non-.pt file the download skips
    info = release("gpt2-small-hook-z-kk")
    assert info.conversion_func == "connor_rob_hook_z"
    attention = HubCache(cache, info.repo_id)
    g = torch.Generator().manual_seed(100)
    for sae_id, sae_file in info.saes_map.items():
        layer = int(re.search(r"blocks\.(\d+)", sae_id).group(1))
        hook = f"blocks.{layer}.attn.hook_z"
        weights = random_sae_weights(GPT2_D, GPT2_SAE, g)
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        attention.add_file(sae_file, buffer.getvalue())
        cfg = {"act_name": hook, "act_size": GPT2_D, "dict_size": GPT2_SAE, "layer": layer,
               "site": "z", "model_name": "gpt2-small", "lr": 0.0012, "l1_coeff": 1.0}  # fmt: skip
        attention.add_json(sae_file.split(".pt")[0] + "_cfg.json", cfg)
        written[hook] = checksums(weights)
    return home, written


def test_gpt2_transcoders_recipe_runs_offline(gpt2_hub, tmp_path):
    home, written = gpt2_hub
    report = run_recipe("gpt2-transcoders.md", home, tmp_path, model_shape=(12, GPT2_D))
    saes = report["saes"]["saes"]
    assert sorted(saes) == sorted(written)
    for hook, got in saes.items():
        if hook.endswith("hook_mlp_out"):
            assert got["class"] == "Transcoder" and got["hook_name_out"] == hook
            assert got["hook_name"] == hook.replace("hook_mlp_out", "ln2.hook_normalized")
        else:
            assert got["class"] == "StandardSAE" and got["hook_name"] == hook
        assert (got["W_enc_sum"], got["W_dec_sum"]) == pytest.approx(written[hook], abs=1e-4)
    scalars = report["scalars"]
    assert scalars["graph.nodes"] > 0 and np.isfinite(scalars["faithfulness"])
    assert (report["work"] / "gpt2_ioi_trace.json").is_file()
    assert (report["work"] / "graphs" / "gpt2_ioi.json").is_file()


# ------------------------------------------------------------------ Gemma-2-2B, Gemma Scope


GEMMA_D, GEMMA_Z, GEMMA_SAE, GEMMA_LIVE, GEMMA_LAYERS = 2304, 2048, 16384, 64, 2

# TransformerLens hard-codes Gemma-2-2B's architecture; the stand-in model is narrower in
# depth, MLP and vocabulary, so TL takes those three from the cached config.json.
GEMMA_PRELUDE = """
import json
import transformer_lens.loading_from_pretrained as loading
from huggingface_hub import hf_hub_download

hard_coded = loading.convert_hf_model_config

def stand_in_gemma(model_name, **kwargs):
    cfg = hard_coded(model_name, **kwargs)
    hf = json.loads(open(hf_hub_download("google/gemma-2-2b", "config.json")).read())
    n = hf["num_hidden_layers"]
    cfg.update(n_layers=n, d_mlp=hf["intermediate_size"], d_vocab=hf["vocab_size"],
               attn_types=cfg["attn_types"][:n])
    return cfg

loading.convert_hf_model_config = stand_in_gemma
"""


def gemma_scope_params(d_in: int, seed: int, path: Path) -> tuple[float, float]:
    """params.npz as Gemma Scope ships it (float16 here; only the first features live)."""
    rng = np.random.default_rng(seed)
    w_enc = np.zeros((d_in, GEMMA_SAE), np.float16)
    w_enc[:, :GEMMA_LIVE] = rng.standard_normal((d_in, GEMMA_LIVE)) / d_in**0.5
    w_dec = np.zeros((GEMMA_SAE, d_in), np.float16)
    w_dec[:GEMMA_LIVE] = rng.standard_normal((GEMMA_LIVE, d_in)) / GEMMA_LIVE**0.5
    np.savez(
        path,
        W_enc=w_enc,
        W_dec=w_dec,
        b_enc=np.zeros(GEMMA_SAE, np.float16),
        b_dec=(0.1 * rng.standard_normal(d_in)).astype(np.float16),
        threshold=np.full(GEMMA_SAE, 0.05, np.float16),
    )
    return float(w_enc.astype(np.float64).sum()), float(w_dec.astype(np.float64).sum())


@pytest.fixture
def gemma_hub(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    home = tmp_path / "hf_home"
    cache = home / "hub"
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokenizer = bpe_tokenizer(
        agreement_texts() * 3, specials, vocab_size=800, style="sentencepiece"
    )
    config = Gemma2Config(
        vocab_size=tokenizer.get_vocab_size(),
        num_hidden_layers=GEMMA_LAYERS,
        intermediate_size=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )  # otherwise Gemma-2-2B's: d_model 2304, 8 x 256 query and 4 key-value heads, ...
    torch.manual_seed(0)
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
               "unk_token": "<unk>"}  # fmt: skip
    add_causal_lm(
        HubCache(cache, "google/gemma-2-2b"),
        Gemma2ForCausalLM(config),
        tokenizer,
        {"add_bos_token": True, "add_eos_token": False, "tokenizer_class": "GemmaTokenizer",
         **special},
        special,
    )  # fmt: skip
    written = {}
    hooks = {
        "res": "blocks.{}.hook_resid_post",
        "att": "blocks.{}.attn.hook_z",
        "mlp": "blocks.{}.hook_mlp_out",
        "transcoders": "blocks.{}.hook_mlp_out",
    }
    for kind, hook in hooks.items():
        name = f"gemma-scope-2b-pt-{kind}" + ("" if kind == "transcoders" else "-canonical")
        info = release(name)
        hub = HubCache(cache, info.repo_id)
        for sae_id, folder in list(info.saes_map.items())[:GEMMA_LAYERS]:
            layer = int(re.match(r"layer_(\d+)/width_16k/", sae_id).group(1))
            assert layer < GEMMA_LAYERS
            npz = tmp_path / "params.npz"
            d_in = GEMMA_Z if kind == "att" else GEMMA_D
            sums = gemma_scope_params(d_in, seed=len(written), path=npz)
            hub.move_file(f"{folder}/params.npz", npz)
            written[(kind, hook.format(layer))] = sums
    return home, written


def test_gemma_2_2b_recipe_runs_offline(gemma_hub, tmp_path):
    home, written = gemma_hub
    # Gemma Scope's real widths cost about a second of CPU per pair and site: 8 pairs, not 64.
    smaller = {
        'n=64, split="train"': 'n=8, split="train"',
        'n=64, split="test"': 'n=8, split="test"',
    }
    shape = (GEMMA_LAYERS, GEMMA_D)
    report = run_recipe("gemma-2-2b.md", home, tmp_path, shape, GEMMA_PRELUDE, smaller)
    sets = report["saes"]
    kinds = {"saes": ("res", "att", "mlp"), "replacement": ("transcoders", "att")}
    for name, wanted in kinds.items():
        want = {hook: sums for (kind, hook), sums in written.items() if kind in wanted}
        assert sorted(sets[name]) == sorted(want)
        for hook, got in sets[name].items():
            assert (got["W_enc_sum"], got["W_dec_sum"]) == pytest.approx(want[hook], rel=1e-3)
            assert got["class"] == ("JumpReLUTranscoder" if name == "replacement"
                                    and hook.endswith("mlp_out") else "JumpReLUSAE")  # fmt: skip
    scalars = report["scalars"]
    assert scalars["circuit.nodes"] > 0 and np.isfinite(scalars["faithfulness"])
    assert scalars["graph.nodes"] > 0
    assert (report["work"] / "gemma-2-2b_across_rc.json").is_file()
