"""The dictionary release ``smollm2-135m-sfc-transcoders`` of sfc_plugin, for SmolLM2-135M-Instruct.

30 transcoders (BatchTopK k 32, saved as JumpReLU; d_sae 768) from ln2.hook_normalized to
hook_mlp_out of every layer 0-29. ``sfc_plugin.load_saes("smollm2-135m-sfc-transcoders")`` finds
:data:`DIRECTORY` through this distribution's ``sfc_plugin.releases`` entry point.
"""

from pathlib import Path

DIRECTORY = Path(__file__).parent / "saes"
"""One ``SAE.save_model`` directory per SAE id (the TransformerLens hook it writes)."""
