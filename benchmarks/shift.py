"""Cost of each SHIFT stage on the embedded model, as ratios to one forward+backward of the
probe's metric on the same batch of biographies.

    .venv/bin/python benchmarks/shift.py [--texts 8] [--threads 2]

Setup: SmolLM2-135M and its bundled SAEs (the 27 sites at or before the probe's hook,
``blocks.28.hook_resid_post``), ``--texts`` ambiguous training biographies from the offline
generator in one batch, a probe trained on them. Stages: pooled activations (no hooks, and
with 50 features ablated), the probe circuit by AtP and by IG (10 steps), each on the same
texts. The unit is one forward (to the probe's hook) and backward to the embeddings of
the probe metric with no SAEs attached. The whole table's wall time is what ``sfc shift``
prints at the end.
"""

from __future__ import annotations

import argparse
import time

import torch

from sfc_plugin import load_model, load_saes
from sfc_plugin.data import read_dataset, tokenize
from sfc_plugin.datasets import bias_in_bios
from sfc_plugin.metrics import forward_metric
from sfc_plugin.shift import (
    ablation_hooks,
    pooled_activations,
    probe_circuit,
    probe_metric,
    probe_sites,
    random_features,
    train_probe,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    saes = load_saes("smollm2-135m-sfc")
    data = bias_in_bios("ambiguous", "train", n=args.texts)
    texts, labels = list(data.text), list(data.profession)
    probe = train_probe(model, texts, labels, progress=False)
    sites = probe_sites(saes, probe)
    metric = probe_metric(model, probe, labels)
    batch = tokenize(
        model, read_dataset([{"prefix": t} for t in texts]), same_length=False, need_patch=False
    ).tokens
    n_tokens = int(batch.mask.sum())

    def unit_pass() -> None:
        embed = []

        def grab(x, hook):
            x = x.detach().requires_grad_()
            embed.append(x)
            return x

        m = forward_metric(model, metric, batch, hooks=[("hook_embed", grab)])
        torch.autograd.grad(m.sum(), embed)

    unit_pass()  # warm-up
    t = time.perf_counter()
    unit_pass()
    unit = time.perf_counter() - t

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    hooks = ablation_hooks(model, sites, random_features(sites, 50, seed=0))
    bs = len(texts)
    rows = {
        "pooled activations": timed(
            lambda: pooled_activations(model, texts, batch_size=bs, progress=False)
        ),
        "pooled activations, 50 features ablated": timed(
            lambda: pooled_activations(model, texts, fwd_hooks=hooks, batch_size=bs, progress=False)
        ),
    }
    for method in ("atp", "ig"):
        rows[f"probe circuit, {method}"] = timed(
            lambda method=method: probe_circuit(
                model, sites, probe, texts, labels, method=method, batch_size=4, progress=False
            )
        )
    print(
        f"{len(texts)} biographies, {n_tokens} tokens, {len(sites)} sites, "
        f"{torch.get_num_threads()} threads; unit (forward+backward of the probe metric) "
        f"{unit:.2f} s"
    )
    for name, seconds in rows.items():
        print(f"{name:42s} {seconds:8.1f} s  {seconds / unit:8.1f} units")


if __name__ == "__main__":
    main()
