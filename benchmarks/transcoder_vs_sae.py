"""The bundled transcoders against the bundled mlp_out SAEs at the same layers: how much of
the |indirect effect| at each MLP site the dictionary leaves in its error, on the agreement
tasks.

    .venv/bin/python benchmarks/transcoder_vs_sae.py [--pairs 32] [--method ig]

For each task (train split, ``--pairs`` pairs, patch ablation, templatic, logit difference),
node effects are computed twice with every bundled SAE (``smollm2-135m-sfc``): once as they
are, once with each mlp_out SAE replaced by the bundled transcoder writing the same hook
(``smollm2-135m-sfc-transcoders``). The error share of a site is sum |IE(error)| /
(sum |IE(error)| + sum |IE(features)|) over positions; the table prints it per MLP layer for
both dictionaries, averaged over the tasks.
"""

from __future__ import annotations

import argparse

import pandas as pd

from sfc_plugin import load_model, load_saes, node_effects
from sfc_plugin.datasets import agreement
from sfc_plugin.datasets.agreement import TASKS


def error_share(effects, hooks: list[str]) -> dict[str, float]:
    """sum |IE(error)| / sum |IE| at each hook of ``hooks``."""
    out = {}
    for h in hooks:
        err = float(effects.errors[h].abs().nansum())
        feat = float(effects.features[h].abs().nansum())
        out[h] = err / (err + feat) if err + feat > 0 else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--method", default="ig", choices=["atp", "ig"])
    args = ap.parse_args()
    model = load_model("smollm2-135m")
    saes = load_saes("smollm2-135m-sfc")
    transcoders = load_saes("smollm2-135m-sfc-transcoders")
    mlp = [h for h in saes if h.endswith("hook_mlp_out")]
    layouts = {"SAE": saes, "transcoder": saes | {h: transcoders[h] for h in mlp}}
    rows = []
    for task in TASKS:
        data = agreement(task, model, n=args.pairs)
        for name, dicts in layouts.items():
            effects = node_effects(model, dicts, data, method=args.method, progress=False)
            for hook, share in error_share(effects, mlp).items():
                rows.append(dict(task=task, dictionary=name, hook=hook, error_share=share))
            print(f"{task}: {name} done", flush=True)
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index="hook", columns="dictionary", values="error_share")
    wide = wide.loc[sorted(wide.index, key=lambda h: int(h.split(".")[1]))]
    print(f"error share of |IE| at mlp_out ({args.method}, {args.pairs} pairs, mean of {TASKS})")
    print(wide.round(3).to_string())
    print("mean", wide.mean().round(3).to_dict())


if __name__ == "__main__":
    main()
