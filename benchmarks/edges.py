"""Cost of edge effects on the embedded model: one backward per downstream node vs batched.

    .venv/bin/python benchmarks/edges.py [--pairs 32] [--nodes 100] [--d-sae 4608]

Setup: SmolLM2-135M, 32 across-PP pairs in one batch, random SAEs at 9 sites (attn_out,
mlp_out, resid_post at layers 5, 15, 25), a circuit of the ``--nodes`` nodes with the largest
AtP effects. Times only the edge pass (the node
gradients are computed once beforehand and shared): (a) one downstream node per backward,
(b) many per backward (``is_grads_batched``, ``max_batch_rows`` = batch x 16). Both are also
given in units of one plain forward + backward (to the activations) of the same batch.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import SITES, plain_forward_backward, random_saes

from sfc_plugin import load_model
from sfc_plugin.attribution import node_effects
from sfc_plugin.attribution.edges import EdgeAccumulator, batch_edges, kept_nodes
from sfc_plugin.attribution.run import prepare_run
from sfc_plugin.datasets import agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--per-backward", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    model.requires_grad_(False)
    data = agreement("across_pp", model, n=args.pairs)
    saes = random_saes(model, SITES, args.d_sae)
    run = prepare_run(
        model,
        saes,
        data,
        method="atp",
        steps=1,
        metric=None,
        ablation="patch",
        aggregation="templatic",
        batch_size=len(data),
        max_batch_rows=None,
    )
    batch = next(run.batches(progress=False, desc=""))
    clean, terms = run.gradient_terms(model, batch)

    # the circuit: the nodes with the largest |AtP effect|
    table = node_effects(
        model, saes, data, method="atp", batch_size=len(data), progress=False
    ).to_frame()
    nodes = list(table.node[: args.nodes])
    kept = kept_nodes(run.sites, nodes, run.tokens.n_pos, run.templatic)

    def edges(rows: int) -> tuple[float, EdgeAccumulator]:
        run.max_rows = rows
        acc = EdgeAccumulator(kept)
        t = time.perf_counter()
        batch_edges(model, run, batch, clean, terms, kept, acc)
        return time.perf_counter() - t, acc

    def plain() -> float:
        t = time.perf_counter()
        plain_forward_backward(model, batch)
        return time.perf_counter() - t

    plain()
    unit = min(plain() for _ in range(3))
    t_one, acc_one = edges(len(batch))
    t_many, acc_many = edges(len(batch) * args.per_backward)
    n_edges = len(acc_many.frame(len(batch)))
    diff = max(float((acc_one.blocks[k] - acc_many.blocks[k]).abs().max()) for k in acc_one.blocks)
    per_site = {s.hook_name: len(kept[s.hook_name].nodes) for s in run.sites}
    print(
        f"model smollm2-135m, {len(batch)} pairs x {batch.clean_tokens.shape[1]} tokens, "
        f"{len(run.sites)} sites, d_sae {args.d_sae}, {len(nodes)} nodes {per_site}, "
        f"{n_edges} nonzero edges, torch threads {torch.get_num_threads()}"
    )
    print(f"plain forward+backward: {unit:.3f} s (the unit)")
    print(f"(a) one backward per downstream node: {t_one:.2f} s = {t_one / unit:.1f} units")
    print(
        f"(b) {args.per_backward} downstream nodes per backward: {t_many:.2f} s = "
        f"{t_many / unit:.1f} units; (a)/(b) = {t_one / t_many:.2f}"
    )
    print(f"max |(a) - (b)| over all edge sums: {diff:.2e}")


if __name__ == "__main__":
    main()
