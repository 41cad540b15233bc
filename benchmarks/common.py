"""What the benchmark scripts share: the site layout and the unit they divide by."""

from __future__ import annotations

import statistics
import time

import torch
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

from sfc_plugin.data import Batch
from sfc_plugin.metrics import logit_diff

# attn_out, mlp_out and resid_post at layers 5, 15 and 25 of the embedded model
SITES = [
    f"blocks.{layer}.hook_{kind}"
    for layer in (5, 15, 25)
    for kind in ("attn_out", "mlp_out", "resid_post")
]


def plain_forward_backward(model, batch: Batch, weights: bool = False) -> None:
    """The unit: a forward of the plain model (no SAEs) on the clean batch, then a backward
    of the logit difference to the embeddings (and to the weights if ``weights``)."""
    was = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(weights)
    embed = []

    def grab(x, hook):
        x = x.detach().requires_grad_()
        embed.append(x)
        return x

    logits = model.run_with_hooks(batch.clean_tokens, fwd_hooks=[("hook_embed", grab)])
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(logit_diff(logits, batch).sum(), embed + params, allow_unused=True)
    for p, r in zip(model.parameters(), was):
        p.requires_grad_(r)


def random_saes(model, hooks: list[str], d_sae: int, seed: int = 0) -> dict[str, StandardSAE]:
    """Seeded random ReLU SAEs of any width: cost depends on the width, not on training."""
    g = torch.Generator().manual_seed(seed)
    saes = {}
    for hook in hooks:
        d = model.cfg.d_model
        sae = StandardSAE(
            StandardSAEConfig(d_in=d, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook))
        )
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(d, d_sae, generator=g) / d**0.5)
            sae.W_dec.copy_(sae.W_enc.T / d_sae**0.5)
            sae.b_enc.fill_(-1.0)
        saes[hook] = sae.to(model.cfg.device)
    return saes


def random_transcoders(
    model, write_hooks: list[str], d_sae: int, seed: int = 0
) -> dict[str, Transcoder]:
    """Seeded random ReLU transcoders reading ``blocks.L.ln2.hook_normalized`` and writing
    each ``blocks.L.hook_mlp_out`` of ``write_hooks``, of the SAEs' shapes."""
    g = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    out = {}
    for hook in write_hooks:
        read = hook.replace("hook_mlp_out", "ln2.hook_normalized")
        meta = SAEMetadata(hook_name=read, hook_name_out=hook)
        tc = Transcoder(
            TranscoderConfig(
                d_in=d, d_sae=d_sae, d_out=d, apply_b_dec_to_input=False, metadata=meta
            )
        )
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, d_sae, generator=g) / d**0.5)
            tc.W_dec.copy_(tc.W_enc.T / d_sae**0.5)
            tc.b_enc.fill_(-1.0)
        out[hook] = tc.to(model.cfg.device)
    return out


def timed(fn, repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn`` (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
