"""What limits the faithfulness of small circuits on the embedded model: one command
regenerates ``docs/faithfulness_levers.md``.

    sfc levers [--out docs] [--rows bundled_atp bundled_ig ...] [--train 32] [--test 64]

One task (across-RC agreement by default), one set of training pairs for node effects and one
of held-out pairs for evaluation. Each *row* changes one lever against the baseline (the
bundled SAEs at every third layer, AtP): the attribution method (AtP or IG), the first layer
evaluated (``start_layer``), keeping every error node, which sites exist (no residual-stream
SAEs, residual only), and transcoders in place of the MLP-output SAEs. Each row ranks the
nodes by ``|IE|`` on the training pairs, then scores the top ``k`` nodes on the held-out pairs
for a fixed list of ``k`` (``Evaluator``, mean ablation, errors kept as nodes). It reports
faithfulness and completeness at 50, 100 and 150 nodes and the interpolated size at which
faithfulness reaches 0.5. ``k`` counts the nodes at evaluated sites; in the "every error
kept" row it counts features, and every error node is in the circuit as well.

Each row's result is written to ``OUT/faithfulness_levers/<row>.json`` when it finishes (a
rerun skips finished rows; ``--fresh`` recomputes). The page's generated section is rewritten.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from sfc_plugin.attribution import node_effects
from sfc_plugin.datasets import TASKS, agreement
from sfc_plugin.datasets.agreement import Task
from sfc_plugin.dictionaries import load_saes
from sfc_plugin.evaluation import Evaluator, interpolated_nodes
from sfc_plugin.experiments.reproduce import END, START, write_page
from sfc_plugin.experiments.tracing import tracing_dictionaries
from sfc_plugin.models import load_model

SIZES = (10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000)
"""The circuit sizes ``k`` each row scores."""


def _bundled(device, keep: Callable[[str], bool] = lambda hook: True) -> dict:
    return {h: s for h, s in load_saes("smollm2-135m-sfc", device=device).items() if keep(h)}


def _transcoders_every_third(device) -> dict:
    """The bundled SAEs with the bundled transcoders in place of the mlp_out SAEs."""
    transcoders = load_saes("smollm2-135m-sfc-transcoders", device=device)
    return {
        hook: transcoders[hook] if hook.endswith("mlp_out") else sae
        for hook, sae in _bundled(device).items()
    }


def _every_layer(device) -> dict:
    """Attention-output SAEs and MLP transcoders at all 30 layers: every attention and MLP
    output is a site."""
    return load_saes(
        {
            **load_saes("smollm2-135m-sfc-attn", device=device),
            **load_saes("smollm2-135m-sfc-transcoders", device=device),
        }
    )


DICTIONARIES: dict[str, tuple[str, Callable[..., dict]]] = {
    "bundled": (
        "SAEs at attn_out, mlp_out and resid_post, every third layer",
        lambda device: _bundled(device),
    ),
    "no_resid": (
        "SAEs at attn_out and mlp_out, every third layer",
        lambda device: _bundled(device, lambda h: not h.endswith("resid_post")),
    ),
    "resid_only": (
        "SAEs at resid_post, every third layer",
        lambda device: _bundled(device, lambda h: h.endswith("resid_post")),
    ),
    "transcoders_3rd": (
        "SAEs at attn_out and resid_post, transcoders at the MLPs, every third layer",
        _transcoders_every_third,
    ),
    "transcoders_all": (
        "SAEs at attn_out every third layer, transcoders at all 30 MLPs, no resid_post",
        tracing_dictionaries,
    ),
    "every_layer": (
        "SAEs at attn_out (`smollm2-135m-sfc-attn`) and transcoders at the MLPs, all 30 "
        "layers, no resid_post",
        _every_layer,
    ),
}
"""Dictionary sets: name -> (description, ``device -> {hook: SAE}``)."""


@dataclass(frozen=True)
class Lever:
    """One row: dictionaries, node-effect method, first evaluated layer, error policy."""

    dictionaries: str
    method: Literal["atp", "ig"]
    start_layer: int = 0
    all_errors: bool = False


ROWS: dict[str, Lever] = {
    "bundled_atp": Lever("bundled", "atp"),
    "bundled_ig": Lever("bundled", "ig"),
    "bundled_ig_from_10": Lever("bundled", "ig", start_layer=10),
    "bundled_ig_all_errors": Lever("bundled", "ig", all_errors=True),
    "no_resid_ig": Lever("no_resid", "ig"),
    "resid_only_ig": Lever("resid_only", "ig"),
    "transcoders_3rd_ig": Lever("transcoders_3rd", "ig"),
    "transcoders_all_atp": Lever("transcoders_all", "atp"),
    "transcoders_all_ig": Lever("transcoders_all", "ig"),
    "every_layer_atp": Lever("every_layer", "atp"),
    "every_layer_ig": Lever("every_layer", "ig"),
}


@dataclass
class LeverSettings:
    """The options of ``sfc levers`` (same names)."""

    out: str | Path = "docs"
    rows: list[str] | None = None
    """Row names (``ROWS``); None: all, in order."""
    task: Task = "across_rc"
    train: int = 32
    test: int = 64
    steps: int = 10
    batch_size: int = 16
    fresh: bool = False

    def __post_init__(self) -> None:
        self.rows = list(ROWS) if self.rows is None else list(self.rows)
        if bad := [r for r in self.rows if r not in ROWS]:
            raise ValueError(f"rows: unknown {bad}; choose from {', '.join(ROWS)}")
        if self.task not in TASKS:
            raise ValueError(f"task: {self.task!r}; choose from {', '.join(TASKS)}")


def run_row(model, lever: Lever, train: list[dict], test: list[dict], settings: LeverSettings):
    """Rank nodes by ``|IE|`` on ``train``, score the top ``k`` on ``test``: a dict."""
    saes = DICTIONARIES[lever.dictionaries][1](model.cfg.device)
    t0 = time.perf_counter()
    effects = node_effects(
        model, saes, train, method=lever.method, steps=settings.steps,
        batch_size=settings.batch_size, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    evaluator = Evaluator(
        model, saes, test, start_layer=lever.start_layer, batch_size=settings.batch_size,
        progress=False,
    )  # fmt: skip
    table = effects.to_frame()
    table = table[table.layer.fillna(0) >= lever.start_layer]
    errors = list(table.node[table.kind == "error"])
    ranked = list(table.node[table.kind == "feature"]) if lever.all_errors else list(table.node)
    curve = []
    for k in SIZES:
        if k > len(ranked):
            break
        nodes = ranked[:k] + (errors if lever.all_errors else [])
        s = evaluator.scores(nodes)
        curve.append({"nodes": k, "faithfulness": s.faithfulness, "completeness": s.completeness})
    frame = pd.DataFrame(curve)

    def at(column: str) -> dict[str, float | None]:
        row = dict(zip(frame.nodes, frame[column]))
        return {str(k): row.get(k) for k in (50, 100, 150)}

    return {
        "lever": asdict(lever),
        "sites": len(saes),
        "ranked_nodes": len(ranked),
        "error_nodes": len(errors),
        "effects_seconds": seconds,
        "m_model": evaluator.m_model,
        "m_empty": evaluator.m_empty,
        "faithfulness_at": at("faithfulness"),
        "completeness_at": at("completeness"),
        "nodes_for_half": interpolated_nodes(frame, 0.5),
        "curve": curve,
    }


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def generated_section(results: dict[str, dict], settings: LeverSettings) -> str:
    """The page's generated section: the levers table."""
    lines = [
        START,
        "",
        f"Generated by `sfc levers` ({settings.task}; {settings.train} training pairs for "
        f"node effects, {settings.test} held-out pairs for scores; IG with "
        f"{settings.steps} steps).",
        "",
        "| row | dictionaries | method | from layer | errors | m(∅)/m(M) | F@50 | F@100 | "
        "F@150 | C@100 | nodes for F 0.5 | node effects (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lever = r["lever"]
        f, c = r["faithfulness_at"], r["completeness_at"]
        half = r["nodes_for_half"]
        lines.append(
            f"| {name} | {lever['dictionaries']} ({r['sites']} sites) | {lever['method']} | "
            f"{lever['start_layer']} | {'all kept' if lever['all_errors'] else 'ranked'} | "
            f"{r['m_empty'] / r['m_model']:.2f} | {_f(f['50'])} | {_f(f['100'])} | "
            f"{_f(f['150'])} | {_f(c['100'])} | "
            f"{'not reached' if half is None else f'{half:.0f}'} | {r['effects_seconds']:.0f} |"
        )
    lines += [
        "",
        "m(∅)/m(M): the share of the model's metric left when every node is ablated (the "
        "empty circuit); F measures the rest.",
        "",
        "Dictionary sets:",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, (text, _) in DICTIONARIES.items()]
    lines += ["", END]
    return "\n".join(lines)


def levers(settings: LeverSettings) -> Path:
    """Run the rows of ``settings`` (printing progress), writing each row's result as it
    finishes, and rewrite the generated section of ``settings.out/faithfulness_levers.md``
    with every finished row (those run now and those found done), in the order of ``ROWS``."""
    out = Path(settings.out)
    work = out / "faithfulness_levers"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    train = agreement(settings.task, model, n=settings.train, split="train")
    test = agreement(settings.task, model, n=settings.test, split="test")
    for name in settings.rows or ():
        done = work / f"{name}.json"
        if done.exists() and not settings.fresh:
            print(f"{name}: already done ({done})")
            continue
        t0 = time.perf_counter()
        done.write_text(json.dumps(run_row(model, ROWS[name], train, test, settings), indent=1))
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {
        name: json.loads((work / f"{name}.json").read_text())
        for name in ROWS
        if (work / f"{name}.json").exists()
    }
    page = out / "faithfulness_levers.md"
    write_page(page, generated_section(results, settings), title="What limits faithfulness")
    return page
