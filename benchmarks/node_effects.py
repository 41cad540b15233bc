"""Cost of node effects on the embedded model, as ratios to one plain forward+backward.

    .venv/bin/python benchmarks/node_effects.py [--pairs 32] [--d-sae 4608] [--steps 10]

Setup: SmolLM2-135M, 32 across-PP agreement pairs in one batch, random SAEs at 9 sites
(attn_out, mlp_out, resid_post at layers 5, 15, 25). Every time is the median of ``--repeat``
runs in this process; the unit is one forward+backward of the plain model (no SAEs) on the
same clean batch with the same metric, backpropagated to the activations (an attribution
method needs no weight gradients; the time with weight gradients is printed too). The
reference implementation's IG costs ``sites x steps`` such units (plus a patch forward); the
script prints that count beside ours.
Random SAE weights cost the same as trained ones: only shapes matter for time.
"""

from __future__ import annotations

import argparse

import torch
from common import SITES, plain_forward_backward, random_saes, timed

from sfc_plugin import load_model, node_effects
from sfc_plugin.data import read_dataset, tokenize
from sfc_plugin.datasets import agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    data = agreement("across_pp", model, n=args.pairs)
    saes = random_saes(model, SITES, args.d_sae)
    batch = tokenize(model, read_dataset(data), same_length=True, need_patch=True).tokens

    def effects(method: str) -> None:
        node_effects(
            model, saes, data, method=method, steps=args.steps, batch_size=len(data), progress=False
        )

    plain_forward_backward(model, batch)  # warm-up
    unit = timed(lambda: plain_forward_backward(model, batch), args.repeat)
    unit_weights = timed(lambda: plain_forward_backward(model, batch, weights=True), args.repeat)
    atp = timed(lambda: effects("atp"), args.repeat)
    ig = timed(lambda: effects("ig"), max(1, args.repeat - 2))
    n_sites = len(saes)
    print(
        f"model smollm2-135m, {len(data)} pairs x {batch.clean_tokens.shape[1]} tokens, "
        f"{n_sites} sites, d_sae {args.d_sae}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"plain forward+backward to the activations: {unit:.3f} s (the unit); "
        f"with weight gradients too: {unit_weights:.3f} s"
    )
    print(f"AtP:    {atp:.3f} s = {atp / unit:.2f} units (floor ~1.5: two forwards, one backward)")
    print(
        f"IG-{args.steps}:  {ig:.3f} s = {ig / unit:.2f} units "
        f"(reference: sites x steps = {n_sites * args.steps} units)"
    )


if __name__ == "__main__":
    main()
