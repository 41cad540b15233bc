"""Traced circuits (direct effects) against SFC circuits (indirect effects) on the same
dictionaries, pairs and evaluator: one command regenerates ``docs/tracing_vs_sfc.md``.

    sfc compare-tracing [--out docs] [--train 32] [--test 64] [--method ig]

Dictionaries: the bundled transcoders at every MLP (``smollm2-135m-sfc-transcoders``) and the
bundled attention-output SAEs (``smollm2-135m-sfc``, every third layer), so the replacement
model is exact. For each task (the four agreement tasks and IOI):

1. **SFC**: node effects on the training pairs (``--method``, patch ablation, templatic);
   circuits ``{|IE| > t}`` over a sweep of ``t``;
2. **tracing**: ``trace`` from the metric on the same pairs at each of ``--trace-thresholds``
   (node threshold; edge threshold a tenth of it), with its wall time;
3. both scored on held-out pairs by one ``Evaluator`` (mean ablation, errors kept as nodes):
   faithfulness (sufficiency) and completeness (necessity) against node count;
4. **judge against threshold pruning**: the traced circuit at ``--judge-threshold`` pruned by
   the offline ``keyword_judge`` (the task's contrast words: the words that differ between
   clean and patch prefixes, and the answers), against the same circuit cut to the same
   number of nodes by influence;
5. node overlap (Jaccard, position-specific ids) of the traced circuit at the judge threshold
   and the SFC circuit closest to it in size.

Per-task results are written under ``OUT/tracing_vs_sfc/<task>/`` as they finish (a rerun
skips finished tasks; ``--fresh`` recomputes); the page's generated section is rewritten.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from sfc_plugin.attribution import node_effects
from sfc_plugin.circuit import Circuit
from sfc_plugin.datasets import TASKS, agreement, ioi
from sfc_plugin.dictionaries import load_saes
from sfc_plugin.evaluation import Evaluator, default_thresholds, interpolated_nodes
from sfc_plugin.experiments.reproduce import END, START, write_page
from sfc_plugin.frontend.dashboards import feature_index
from sfc_plugin.frontend.plots import plot_faithfulness_curve
from sfc_plugin.judges import keyword_judge
from sfc_plugin.models import load_model
from sfc_plugin.sites import hook_sort_key
from sfc_plugin.tracing import prune_with_judge, trace

COMPARISON_TASKS = (*TASKS, "ioi")
ATTENTION_HOOKS = [f"blocks.{layer}.hook_attn_out" for layer in range(2, 30, 3)]
_WORD = re.compile(r"[^\W\d_]+")


@dataclass
class ComparisonSettings:
    """The options of ``sfc compare-tracing`` (same names)."""

    out: str | Path = "docs"
    tasks: list[str] = field(default_factory=lambda: list(COMPARISON_TASKS))
    train: int = 32
    test: int = 64
    method: Literal["atp", "ig"] = "ig"
    steps: int = 10
    points: int = 13
    decades: float = 3.0
    trace_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.03, 0.01, 0.003])
    judge_threshold: float = 0.01
    max_nodes: int = 2000
    batch_size: int = 16
    index_tokens: int = 30_000
    fresh: bool = False

    def __post_init__(self) -> None:
        if bad := [t for t in self.tasks if t not in COMPARISON_TASKS]:
            raise ValueError(f"tasks: unknown {bad}; choose from {', '.join(COMPARISON_TASKS)}")
        if self.method not in ("atp", "ig"):
            raise ValueError(f"method: {self.method!r}; choose from atp, ig")
        if self.judge_threshold not in self.trace_thresholds:
            raise ValueError(
                f"judge_threshold {self.judge_threshold} must be one of trace_thresholds "
                f"{self.trace_thresholds}"
            )

    def command(self) -> str:
        """The command line the page quotes (options that differ from the defaults)."""
        defaults = {f.name: f.default for f in fields(self)}
        cmd = "sfc compare-tracing" + (f" --out {self.out}" if str(self.out) != "docs" else "")
        for name in ("train", "test", "method"):
            if getattr(self, name) != defaults[name]:
                cmd += f" --{name} {getattr(self, name)}"
        return cmd


def tracing_dictionaries(device=None) -> dict:
    """The embedded model's dictionaries for exact tracing: the bundled transcoders at every
    MLP and the bundled attention-output SAEs, in forward order."""
    saes = {
        **load_saes("smollm2-135m-sfc", ATTENTION_HOOKS, device=device),
        **load_saes("smollm2-135m-sfc-transcoders", device=device),
    }
    return dict(sorted(saes.items(), key=lambda kv: hook_sort_key(kv[0])))


def task_pairs(task: str, model, n: int, split: Literal["train", "test"]) -> list[dict]:
    """The task's pairs: agreement tasks from ``datasets.agreement``, IOI from
    ``datasets.ioi``."""
    if task == "ioi":
        return ioi(model, n=n, split=split)
    return agreement(task, model, n=n, split=split)  # type: ignore[arg-type]


def contrast_words(rows: list[dict]) -> set[str]:
    """The words that carry a task's contrast: the answers and the words in which clean and
    patch prefixes differ (lower-cased)."""
    words: set[str] = set()
    for row in rows:
        words |= {
            w.lower() for k in ("clean_answer", "patch_answer") for w in _WORD.findall(row[k])
        }
        clean, patch = row["clean_prefix"].split(), row["patch_prefix"].split()
        for a, b in zip(clean, patch):
            if a != b:
                words |= {w.lower() for w in _WORD.findall(a + " " + b)}
    return words


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def run_task(model, saes, task: str, settings: ComparisonSettings, directory: Path, index):
    """Curves, judge comparison and overlap of one task; written to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    train = task_pairs(task, model, settings.train, "train")
    test = task_pairs(task, model, settings.test, "test")
    evaluator = Evaluator(model, saes, test, batch_size=settings.batch_size, progress=False)

    t0 = time.perf_counter()
    effects = node_effects(
        model, saes, train, method=settings.method, steps=settings.steps,
        batch_size=settings.batch_size, progress=False,
    )  # fmt: skip
    sfc_seconds = time.perf_counter() - t0
    table = effects.to_frame()
    rows = []
    sfc_circuits = {}
    for t in default_thresholds(effects, n=settings.points, decades=settings.decades):
        nodes = list(table.node[table.effect.abs() > t])
        s = evaluator.scores(nodes)
        sfc_circuits[s.n_nodes] = set(nodes)
        rows.append(("SFC", t, s.n_nodes, s.faithfulness, s.completeness, sfc_seconds))

    traced: dict[float, Circuit] = {}
    for tau in settings.trace_thresholds:
        t0 = time.perf_counter()
        circuit = trace(
            model, saes, train, node_threshold=tau, edge_threshold=tau / 10,
            max_nodes=settings.max_nodes, on_budget="stop", batch_rows=32, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        traced[tau] = circuit
        s = evaluator.scores(circuit)
        rows.append(("traced", tau, s.n_nodes, s.faithfulness, s.completeness, seconds))
        circuit.save(directory / f"traced_{tau:g}.json")
    curve = pd.DataFrame(
        rows, columns=["kind", "threshold", "nodes", "faithfulness", "completeness", "seconds"]
    )
    curve.to_csv(directory / "curve.csv", index=False)

    base = traced[settings.judge_threshold]
    words = contrast_words(train)
    judged, judgements = prune_with_judge(base, keyword_judge(words), index, progress=False)
    judged.save(directory / "judged.json")
    s_judged = evaluator.scores(judged)
    frozen = set(base.settings["frozen_hooks"])
    ranked = base.nodes[~base.nodes.hook_name.isin(frozen)]
    cut = list(ranked.node[: s_judged.n_nodes])
    s_cut = evaluator.scores(cut)
    s_base = evaluator.scores(base)

    traced_ids = set(ranked.node)
    size = s_base.n_nodes
    nearest = min(sfc_circuits, key=lambda k: abs(k - size)) if sfc_circuits else 0
    summary = {
        "task": task,
        "n_train": len(train),
        "n_test": len(test),
        "example": train[0],
        "method": settings.method,
        "m_model": s_base.m_model,
        "m_empty": s_base.m_empty,
        "sfc_seconds": sfc_seconds,
        "reach": {
            kind: {
                str(level): interpolated_nodes(curve[curve.kind == kind], level)
                for level in (0.5, 0.8)
            }
            for kind in ("SFC", "traced")
        },
        "judge": {
            "threshold": settings.judge_threshold,
            "words": sorted(words),
            "features": len(judgements),
            "pruned": sum(j.spurious for j in judgements),
            "base": [s_base.n_nodes, s_base.faithfulness, s_base.completeness],
            "judged": [s_judged.n_nodes, s_judged.faithfulness, s_judged.completeness],
            "threshold_cut": [s_cut.n_nodes, s_cut.faithfulness, s_cut.completeness],
        },
        "overlap": {
            "traced_nodes": size,
            "sfc_nodes": nearest,
            "common": len(traced_ids & sfc_circuits.get(nearest, set())),
            "jaccard": _jaccard(traced_ids, sfc_circuits.get(nearest, set())),
        },
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _f(value) -> str:
    if value is None:
        return "not reached"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def generated_section(summaries: dict, curves: dict[str, pd.DataFrame], command: str) -> str:
    """The markdown between the page's markers."""
    lines = [START, "", f"Generated by `{command}`.", ""]
    lines += [
        "Nodes needed to reach held-out faithfulness 0.5 and 0.8 (interpolated on the sweep; "
        "fewer is better), and wall time:",
        "",
        "| task | pairs train / test | SFC F≥0.5 | traced F≥0.5 | SFC F≥0.8 | traced F≥0.8 | "
        "SFC node effects (s) | traces (s, per threshold) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, s in summaries.items():
        r = s["reach"]
        tr = curves[task][curves[task].kind == "traced"]
        times = " / ".join(f"{x:.0f}" for x in tr.seconds)
        lines.append(
            f"| {task} | {s['n_train']} / {s['n_test']} | {_f(r['SFC']['0.5'])} | "
            f"{_f(r['traced']['0.5'])} | {_f(r['SFC']['0.8'])} | {_f(r['traced']['0.8'])} | "
            f"{s['sfc_seconds']:.0f} | {times} |"
        )
    taus = list(curves[next(iter(curves))].query("kind == 'traced'").threshold)
    lines += [
        "",
        "Traced circuits at each node threshold τ (nodes at evaluated sites: faithfulness / "
        "completeness on held-out pairs):",
        "",
        "| task | " + " | ".join(f"τ={t:g}" for t in taus) + " |",
        "|---" * (1 + len(taus)) + "|",
    ]
    for task, curve in curves.items():
        tr = curve[curve.kind == "traced"]
        cells = [
            f"{int(n)}: {f:.2f} / {c:.2f}"
            for n, f, c in zip(tr.nodes, tr.faithfulness, tr.completeness)
        ]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Judge against threshold pruning: the traced circuit at the judge threshold, pruned by "
        "the offline keyword judge, and the same circuit cut to as many nodes by influence "
        "(nodes: faithfulness / completeness):",
        "",
        "| task | traced | features judged / pruned | judge-pruned | influence-cut, same size | "
        "task words |",
        "|---|---|---|---|---|---|",
    ]
    for task, s in summaries.items():
        j = s["judge"]
        cell = lambda x: f"{x[0]}: {x[1]:.2f} / {x[2]:.2f}"  # noqa: E731
        words = ", ".join(j["words"][:12]) + (" ..." if len(j["words"]) > 12 else "")
        lines.append(
            f"| {task} | {cell(j['base'])} | {j['features']} / {j['pruned']} | "
            f"{cell(j['judged'])} | {cell(j['threshold_cut'])} | {words} |"
        )
    lines += [
        "",
        "Node overlap of the traced circuit at the judge threshold with the SFC circuit "
        "closest in size (position-specific ids):",
        "",
        "| task | traced nodes | SFC nodes | common | Jaccard |",
        "|---|---|---|---|---|",
    ]
    for task, s in summaries.items():
        o = s["overlap"]
        lines.append(
            f"| {task} | {o['traced_nodes']} | {o['sfc_nodes']} | {o['common']} | "
            f"{o['jaccard']:.2f} |"
        )
    lines += ["", "![faithfulness and completeness against size](tracing_vs_sfc/curves.png)", ""]
    lines.append(END)
    return "\n".join(lines)


def compare_tracing(settings: ComparisonSettings) -> Path:
    """Run the comparison (printing progress) and rewrite the generated section of
    ``settings.out/tracing_vs_sfc.md``; returns the page's path."""
    out = Path(settings.out)
    work = out / "tracing_vs_sfc"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    saes = tracing_dictionaries(model.cfg.device)
    index = None
    summaries, curves = {}, {}
    for task in settings.tasks:
        done = work / task / "summary.json"
        if done.exists() and not settings.fresh:
            summaries[task] = json.loads(done.read_text())
            print(f"{task}: already done ({done})")
        else:
            if index is None:
                index = feature_index(saes, model, max_tokens=settings.index_tokens)
            t0 = time.perf_counter()
            summaries[task] = run_task(model, saes, task, settings, work / task, index)
            print(f"{task}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        curves[task] = pd.read_csv(work / task / "curve.csv")
    plot_faithfulness_curve(curves).savefig(work / "curves.png", dpi=110)
    page = out / "tracing_vs_sfc.md"
    write_page(
        page,
        generated_section(summaries, curves, settings.command()),
        title="Traced circuits against SFC circuits",
    )
    return page
