"""Cost of an IG circuit (``discover_circuit``) on the embedded model, with the node pass's
gradient terms reused by the edge pass (the default) and recomputed (before: the edge pass
ran its own IG), as ratios to one plain forward+backward.

    .venv/bin/python benchmarks/circuit.py [--pairs 16] [--d-sae 4608] [--steps 10]

Setup: SmolLM2-135M, across-RC agreement pairs in one batch, random SAEs at 9 sites (attn_out,
mlp_out, resid_post at layers 5, 15, 25); the node threshold is the ``--nodes``-th largest AtP
effect (IG keeps more nodes at it). The unit is one forward+backward of the plain model on the
same clean batch (``common.plain_forward_backward``). Both circuits are checked equal.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from common import SITES, plain_forward_backward, random_saes

from sfc_plugin import discover_circuit, load_model, node_effects
from sfc_plugin.data import read_dataset, tokenize
from sfc_plugin.datasets import agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=60, help="threshold: this many AtP nodes")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    data = agreement("across_rc", model, n=args.pairs)
    saes = random_saes(model, SITES, args.d_sae)
    batch = tokenize(model, read_dataset(data), same_length=True, need_patch=True).tokens
    kw = dict(method="ig", steps=args.steps, batch_size=len(data), progress=False)
    # the threshold that keeps --nodes nodes by AtP (cheap)
    table = node_effects(model, saes, data, method="atp", batch_size=len(data), progress=False)
    threshold = float(table.to_frame().effect.abs().iloc[args.nodes])

    plain_forward_backward(model, batch)  # warm-up
    t = time.perf_counter()
    plain_forward_backward(model, batch)
    unit = time.perf_counter() - t
    timings, circuits = {}, {}
    for name, cache in (("reused (now)", 2**30), ("recomputed (before)", 0)):
        t = time.perf_counter()
        circuits[name] = discover_circuit(
            model, saes, data, node_threshold=threshold, gradient_cache_bytes=cache, **kw
        )
        timings[name] = time.perf_counter() - t
    now, before = circuits.values()
    pd.testing.assert_frame_equal(now.nodes, before.nodes)
    pd.testing.assert_frame_equal(now.edges, before.edges)
    print(
        f"model smollm2-135m, {len(data)} pairs x {batch.clean_tokens.shape[1]} tokens, "
        f"{len(saes)} sites, d_sae {args.d_sae}, IG-{args.steps}, {len(now.nodes)} nodes, "
        f"{len(now.edges)} edges, torch threads {torch.get_num_threads()}"
    )
    print(f"plain forward+backward: {unit:.3f} s (the unit)")
    for name, seconds in timings.items():
        print(f"IG circuit, gradients {name}: {seconds:.1f} s = {seconds / unit:.1f} units")
    print(f"before / now: {timings['recomputed (before)'] / timings['reused (now)']:.2f}")


if __name__ == "__main__":
    main()
