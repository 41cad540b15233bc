"""Models: ``load_model`` for any TransformerLens name and the embedded SmolLM2-135M-Instruct
(``embedded``), and the on-disk cache of built artefacts (``cache``)."""

from sfc_plugin.models.cache import cache_dir
from sfc_plugin.models.embedded import (
    EMBEDDED_MODEL,
    EmbeddedModelNotInstalledError,
    default_device,
    embedded_gguf_path,
    is_embedded_model,
    load_model,
    load_tokenizer,
)

__all__ = [
    "EMBEDDED_MODEL",
    "EmbeddedModelNotInstalledError",
    "cache_dir",
    "default_device",
    "embedded_gguf_path",
    "is_embedded_model",
    "load_model",
    "load_tokenizer",
]
