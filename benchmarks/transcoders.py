"""Cost of node effects and of a circuit with transcoders in place of the mlp_out SAEs, as
ratios to one plain forward+backward, beside the same runs with SAEs.

    .venv/bin/python benchmarks/transcoders.py [--pairs 16] [--d-sae 4608] [--nodes 60]

Setup: SmolLM2-135M, across-RC agreement pairs in one batch, random dictionaries at the 9
sites of ``common.SITES`` (attn_out, mlp_out, resid_post at layers 5, 15, 25). "SAEs": an SAE
at every site; "transcoders": the three mlp_out sites are transcoders reading
``ln2.hook_normalized``, the rest the same SAEs. AtP node effects and an AtP circuit
(``discover_circuit``, edges included; the node threshold keeps ``--nodes`` nodes by AtP of
the SAE layout, used for both). Each time is the median of ``--repeat`` runs; the unit is
``common.plain_forward_backward`` on the same batch.
"""

from __future__ import annotations

import argparse

import torch
from common import SITES, plain_forward_backward, random_saes, random_transcoders, timed

from sfc_plugin import discover_circuit, load_model, node_effects
from sfc_plugin.data import read_dataset, tokenize
from sfc_plugin.datasets import agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--nodes", type=int, default=60, help="threshold: this many AtP nodes")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    data = agreement("across_rc", model, n=args.pairs)
    batch = tokenize(model, read_dataset(data), same_length=True, need_patch=True).tokens
    saes = random_saes(model, SITES, args.d_sae)
    mlp = [h for h in SITES if h.endswith("hook_mlp_out")]
    layouts = {"SAEs": saes, "transcoders": saes | random_transcoders(model, mlp, args.d_sae)}
    kw = dict(method="atp", batch_size=len(data), progress=False)
    table = node_effects(model, saes, data, **kw)
    threshold = float(table.to_frame().effect.abs().iloc[args.nodes])

    plain_forward_backward(model, batch)  # warm-up
    unit = timed(lambda: plain_forward_backward(model, batch), args.repeat)
    print(
        f"model smollm2-135m, {len(data)} pairs x {batch.clean_tokens.shape[1]} tokens, "
        f"{len(SITES)} sites (3 of them mlp_out), d_sae {args.d_sae}, torch threads "
        f"{torch.get_num_threads()}; unit (plain forward+backward) {unit:.3f} s"
    )
    for name, dicts in layouts.items():
        effects = timed(lambda d=dicts: node_effects(model, d, data, **kw), args.repeat)
        circuit_s = timed(
            lambda d=dicts: discover_circuit(
                model, d, data, node_threshold=threshold, edge_threshold=0.0, **kw
            ),
            max(1, args.repeat - 2),
        )
        circuit = discover_circuit(
            model, dicts, data, node_threshold=threshold, edge_threshold=0.0, **kw
        )
        print(
            f"{name:12s} AtP node effects {effects:.3f} s = {effects / unit:.2f} units; "
            f"AtP circuit {circuit_s:.3f} s = {circuit_s / unit:.2f} units "
            f"({len(circuit.nodes)} nodes, {len(circuit.edges)} edges)"
        )


if __name__ == "__main__":
    main()
