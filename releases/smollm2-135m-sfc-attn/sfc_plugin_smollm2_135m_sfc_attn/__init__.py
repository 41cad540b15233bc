"""The dictionary release ``smollm2-135m-sfc-attn`` of sfc_plugin, for SmolLM2-135M-Instruct.

30 TopK SAEs (k 32, d_sae 1152) at hook_attn_out of every layer 0-29.
``sfc_plugin.load_saes("smollm2-135m-sfc-attn")`` finds :data:`DIRECTORY` through this
distribution's ``sfc_plugin.releases`` entry point.
"""

from pathlib import Path

DIRECTORY = Path(__file__).parent / "saes"
"""One ``SAE.save_model`` directory per SAE id (the TransformerLens hook it writes)."""
