"""Cost of direct effects and of traced circuits, as ratios to one plain forward+backward,
beside an SFC circuit on the same task and dictionaries.

    .venv/bin/python benchmarks/tracing.py [--pairs 16] [--repeat 3]

Setup: SmolLM2-135M with the dictionaries tracing is exact with (the bundled transcoders at
all 30 MLPs and the bundled attention SAEs at every third layer,
``experiments.tracing.tracing_dictionaries``), across-RC agreement pairs. Printed:

* direct-effect rows (one (example, target) pair each) per second, at 1, 8 and 32 rows per
  frozen forward+backward (the metric as every row's target), and the time of one row as a
  ratio to the unit;
* ``trace`` from the metric at node thresholds 0.1, 0.03 and 0.01 (edge threshold a tenth):
  nodes, rows traced, seconds and ratio to the unit;
* SFC on the same pairs: AtP and IG node effects, and an AtP ``discover_circuit`` at node
  threshold 0.1 (edges included).

Each time is the median of ``--repeat`` runs; the unit is ``common.plain_forward_backward``
on the same batch of ``--pairs`` pairs.
"""

from __future__ import annotations

import argparse

import torch
from common import plain_forward_backward, timed

from sfc_plugin import discover_circuit, load_model, node_effects
from sfc_plugin.data import read_dataset, tokenize
from sfc_plugin.datasets import agreement
from sfc_plugin.experiments.tracing import tracing_dictionaries
from sfc_plugin.metrics import logit_diff
from sfc_plugin.tracing import trace
from sfc_plugin.tracing.direct import Target, frozen_rows
from sfc_plugin.tracing.replacement import freeze


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    saes = tracing_dictionaries(model.cfg.device)
    data = agreement("across_rc", model, n=args.pairs)
    dataset = read_dataset(data)
    batch = tokenize(model, dataset, same_length=True, need_patch=True).tokens
    unit = timed(lambda: plain_forward_backward(model, batch), args.repeat)
    print(f"unit: plain forward+backward of {args.pairs} pairs: {unit:.3f} s")

    state = freeze(model, saes, batch)
    metric = Target("metric", "metric")
    print("\ndirect-effect rows (target: the metric)")
    print(f"{'rows/backward':>14} {'rows/s':>8} {'one row / unit':>15}")
    for rows in (1, 8, 32):
        examples = torch.arange(rows) % state.n_examples
        targets = [metric] * rows
        t = timed(
            lambda ex=examples, ts=targets: frozen_rows(state, ex, ts, logit_diff), args.repeat
        )
        print(f"{rows:>14} {rows / t:>8.1f} {t / rows / unit:>15.3f}")

    print("\ntrace from the metric")
    print(f"{'threshold':>9} {'nodes':>6} {'rows':>6} {'seconds':>8} {'/ unit':>8}")
    for tau in (0.1, 0.03, 0.01):
        circuit = None

        def run(tau=tau):
            nonlocal circuit
            circuit = trace(
                model, saes, data, node_threshold=tau, edge_threshold=tau / 10,
                max_nodes=5000, progress=False,
            )  # fmt: skip

        t = timed(run, args.repeat)
        assert circuit is not None
        nodes, rows = len(circuit.nodes), circuit.settings["rows"]
        print(f"{tau:>9g} {nodes:>6} {rows:>6} {t:>8.2f} {t / unit:>8.1f}")

    print("\nSFC on the same pairs and dictionaries")
    for method in ("atp", "ig"):
        t = timed(
            lambda m=method: node_effects(model, saes, data, method=m, progress=False),
            1 if method == "ig" else args.repeat,
        )
        print(f"node effects ({method}): {t:.2f} s = {t / unit:.1f} units")
    t = timed(
        lambda: discover_circuit(model, saes, data, method="atp", progress=False), args.repeat
    )
    print(f"AtP circuit (threshold 0.1, edges): {t:.2f} s = {t / unit:.1f} units")


if __name__ == "__main__":
    main()
