"""The agreement reproduction on the embedded model: one command regenerates the numbers and
figures of ``docs/reproduction.md``.

    sfc reproduce [--out docs] [--train 64] [--test 64] [--methods ig atp]

For each attribution method (the first is the page's headline, the others are shown beside it)
and each task of METHOD.md section 6 (simple, within_rc, across_rc, across_pp), with the
bundled SAEs and neuron dictionaries at the same 30 hooks:

1. node effects on the training pairs (IG or AtP, patch ablation, templatic);
2. faithfulness and completeness of the circuits ``{|IE| > t}`` on held-out pairs for a
   sweep of ``t`` (mean ablation, per position), features and neurons
   (``evaluation.faithfulness_curve``);
3. the node counts at which faithfulness first reaches 0.5 and 0.8, the circuit at
   ``--node-threshold`` (size, faithfulness, completeness), and the share of the total
   ``|IE|`` that error nodes carry.

Then the share of nodes common to the across-RC and across-PP circuits (position-free:
``site/feature``), and an approximation check (AtP and IG against exact patching) on
``--approx-task``. Per-task results are written as they finish under
``OUT/reproduction/<method>/<task>/`` (a rerun skips finished tasks; ``--fresh``
recomputes); the page's generated section, between its ``<!-- generated -->`` markers, is
rewritten and the text around it is kept. From Python: ``reproduce(ReproduceSettings(...))``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import pandas as pd
import torch

from sfc_plugin.attribution import NodeEffects, approximation_check, node_effects
from sfc_plugin.datasets import TASKS, agreement
from sfc_plugin.datasets.agreement import Task
from sfc_plugin.dictionaries import load_saes, neuron_saes
from sfc_plugin.evaluation import Evaluator, default_thresholds, faithfulness_curve
from sfc_plugin.frontend.plots import plot_approximation, plot_faithfulness_curve
from sfc_plugin.models import load_model
from sfc_plugin.nodes import is_error, without_position

START, END = "<!-- generated:start -->", "<!-- generated:end -->"
LEVELS = (0.5, 0.8)
Method = Literal["atp", "ig"]


@dataclass
class ReproduceSettings:
    """The options of ``sfc reproduce`` (same names): where the page goes, which tasks, the
    pairs, attribution methods (the first is the headline) and IG steps, the circuit
    threshold, the curve's sweep (``points`` thresholds over ``decades`` powers of ten), and
    the approximation check (``approx=False`` skips it). ``fresh`` recomputes tasks finished
    by an earlier run."""

    out: str | Path = "docs"
    tasks: list[Task] = field(default_factory=lambda: list(TASKS))
    train: int = 64
    test: int = 64
    methods: list[Method] = field(default_factory=lambda: ["ig", "atp"])
    steps: int = 10
    node_threshold: float = 0.1
    points: int = 21
    decades: float = 5.0
    batch_size: int = 16
    approx_task: Task = "across_rc"
    approx_pairs: int = 16
    approx_top: int = 15
    approx: bool = True
    fresh: bool = False

    def __post_init__(self) -> None:
        self.tasks = list(self.tasks)
        for name, chosen in (("tasks", self.tasks), ("approx_task", [self.approx_task])):
            if bad := [t for t in chosen if t not in TASKS]:
                raise ValueError(f"{name}: unknown task(s) {bad}; choose from {', '.join(TASKS)}")
        self.methods = list(self.methods)
        if not self.methods or [m for m in self.methods if m not in get_args(Method)]:
            raise ValueError(f"methods: {self.methods!r}; choose one or more of ig, atp")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods: {self.methods!r} names a method twice")

    def command(self) -> str:
        """The ``sfc reproduce`` command line that the page quotes: ``--out`` and the options
        that set its numbers (``--train``, ``--test``, ``--methods``) where not the defaults."""
        defaults = ReproduceSettings()
        cmd = "sfc reproduce" + (f" --out {self.out}" if str(self.out) != "docs" else "")
        for name in ("train", "test", "methods"):
            if (value := getattr(self, name)) != getattr(defaults, name):
                cmd += f" --{name} " + (" ".join(value) if isinstance(value, list) else str(value))
        return cmd


def error_share(effects: NodeEffects) -> float:
    """Share of the total ``|IE|`` (all nodes, all sites) carried by error nodes."""
    err = sum(float(t.abs().sum()) for t in effects.errors.values())
    feat = sum(float(t.abs().sum()) for t in effects.features.values())
    return err / (err + feat) if err + feat else float("nan")


def _first_reaching(curve: pd.DataFrame, kind: str, level: float) -> int | None:
    part = curve[(curve.kind == kind) & (curve.faithfulness >= level)]
    return int(part.nodes.min()) if len(part) else None


def run_task(
    model, saes, task: Task, method: Method, settings: ReproduceSettings, directory: Path
) -> dict:
    """Effects, curve and summary of one task with one attribution method; written to
    ``directory`` (summary last)."""
    directory.mkdir(parents=True, exist_ok=True)
    train = agreement(task, model, n=settings.train, split="train")
    test = agreement(task, model, n=settings.test, split="test")
    t0 = time.perf_counter()
    kinds = {"features": saes, "neurons": neuron_saes(model, saes)}
    effects = {
        kind: node_effects(
            model,
            d,
            train,
            method=method,
            steps=settings.steps,
            batch_size=settings.batch_size,
        )
        for kind, d in kinds.items()
    }
    thresholds = {
        k: default_thresholds(e, n=settings.points, decades=settings.decades)
        for k, e in effects.items()
    }
    evaluator = Evaluator(model, saes, test, batch_size=settings.batch_size, progress=False)
    curves = [
        faithfulness_curve(
            model, kinds[k], train, test, thresholds[k], neurons=False,
            effects={"features": effects[k]},
            evaluators={"features": evaluator} if k == "features" else None,
            batch_size=settings.batch_size,
        ).assign(kind=k)
        for k in kinds
    ]  # fmt: skip
    curve = pd.concat(curves, ignore_index=True)
    curve.to_csv(directory / "curve.csv", index=False)
    table = effects["features"].to_frame()
    circuit = list(table.node[table.effect.abs() > settings.node_threshold])
    scores = evaluator.scores(circuit)
    summary = {
        "task": task,
        "n_train": len(train),
        "n_test": len(test),
        "example": train[0],
        "method": method,
        "m_model": scores.m_model,
        "m_empty": scores.m_empty,
        "error_share": error_share(effects["features"]),
        "circuit_threshold": settings.node_threshold,
        "circuit_nodes": scores.n_nodes,
        "circuit_error_nodes": sum(is_error(n) for n in circuit),
        "circuit_faithfulness": scores.faithfulness,
        "circuit_completeness": scores.completeness,
        "circuit_nodes_summed": sorted({without_position(n) for n in circuit}),
        "reach": {
            kind: {str(level): _first_reaching(curve, kind, level) for level in LEVELS}
            for kind in kinds
        },
        "seconds": time.perf_counter() - t0,
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def overlap(a: list[str], b: list[str]) -> dict[str, float | int]:
    """Shared position-free nodes of two circuits: counts and shares of each."""
    sa, sb = set(a), set(b)
    common = len(sa & sb)
    return {
        "a": len(sa),
        "b": len(sb),
        "common": common,
        "share_of_a": common / len(sa) if sa else float("nan"),
        "share_of_b": common / len(sb) if sb else float("nan"),
        "jaccard": common / len(sa | sb) if sa | sb else float("nan"),
    }


def _fmt(value) -> str:
    if value is None:
        return "not reached"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


_METHOD_NAMES = {"ig": "IG", "atp": "AtP"}


def generated_section(
    summaries: dict[str, dict[str, dict]], extra: dict, figures: dict[str, str]
) -> str:
    """The markdown between the page's markers. ``summaries``: method -> task -> summary,
    the headline method first; each table has one row per task and method."""
    methods = list(summaries)
    tasks = list(dict.fromkeys(t for per_task in summaries.values() for t in per_task))
    rows = [(t, m, summaries[m][t]) for t in tasks for m in methods if t in summaries[m]]
    lines = [START, "", f"Generated by `{extra['command']}`.", ""]
    lines += [
        "| task | node effects | train / test pairs | nodes for F≥0.5: features | neurons | "
        "nodes for F≥0.8: features | neurons | error share of \\|IE\\| | time (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, method, s in rows:
        r = s["reach"]
        lines.append(
            f"| {task} | {_METHOD_NAMES[method]} | {s['n_train']} / {s['n_test']} | "
            f"{_fmt(r['features']['0.5'])} | {_fmt(r['neurons']['0.5'])} | "
            f"{_fmt(r['features']['0.8'])} | {_fmt(r['neurons']['0.8'])} | "
            f"{s['error_share']:.2f} | {s['seconds'] / 60:.1f} |"
        )
    lines += [
        "",
        f"Circuits at node threshold {extra['node_threshold']} (features and errors, "
        "held-out faithfulness and completeness, mean ablation):",
        "",
        "| task | node effects | nodes | of which errors | faithfulness | completeness | "
        "m(M) | m(∅) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, method, s in rows:
        lines.append(
            f"| {task} | {_METHOD_NAMES[method]} | {s['circuit_nodes']} | "
            f"{s['circuit_error_nodes']} | {s['circuit_faithfulness']:.3f} | "
            f"{s['circuit_completeness']:.3f} | {s['m_model']:.3f} | {s['m_empty']:.3f} |"
        )
    for method, o in extra.get("overlap", {}).items():
        lines += [
            "",
            f"Across-RC and across-PP circuits ({_METHOD_NAMES[method]}, threshold "
            f"{extra['node_threshold']}, nodes compared as `site/feature`, positions ignored): "
            f"{o['a']} and {o['b']} nodes, {o['common']} in common: {o['share_of_a']:.0%} of "
            f"the RC circuit, {o['share_of_b']:.0%} of the PP circuit "
            f"(Jaccard {o['jaccard']:.2f}).",
        ]
    for method in methods:
        lines += [
            "",
            f"![faithfulness and completeness curves, {_METHOD_NAMES[method]} node effects]"
            f"({figures[method]})",
        ]
    lines.append("")
    if "approximation" in extra:
        a = extra["approximation"]
        lines += [
            f"Approximation check on {a['task']} ({a['pairs']} pairs, top {a['top']} nodes per "
            f"site kind by max(|AtP|, |IG|), IG with {a['steps']} steps; "
            f"{a['seconds'] / 60:.1f} min): mean |estimate − exact| and correlation with "
            "exact, per site kind and layer range.",
            "",
            "| site kind | layers | nodes | AtP mean abs error | IG mean abs error | "
            "AtP corr | IG corr |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += a["rows"]
        lines += ["", f"![AtP and IG against exact patching]({figures['approximation']})", ""]
    lines.append(END)
    return "\n".join(lines)


def approximation_rows(table: pd.DataFrame) -> list[str]:
    rows = []
    table = table.assign(
        band=pd.cut(table.layer, [-1, 10, 20, 100], labels=["≤10", "11-20", ">20"])
    )
    for (component, band), part in table.groupby(["component", "band"], observed=True):
        if len(part) == 0:
            continue
        err_atp = float((part.atp - part.exact).abs().mean())
        err_ig = float((part.ig - part.exact).abs().mean())
        corr = [
            float(part[c].corr(part.exact)) if len(part) > 2 else float("nan")
            for c in ("atp", "ig")
        ]
        rows.append(
            f"| {component} | {band} | {len(part)} | {err_atp:.4f} | {err_ig:.4f} | "
            f"{corr[0]:.2f} | {corr[1]:.2f} |"
        )
    return rows


def write_page(
    page: Path, section: str, title: str = "Reproduction: subject-verb agreement"
) -> None:
    """Replace the generated section of ``page`` (or create the page, headed ``title``,
    around it)."""
    if page.exists() and START in (text := page.read_text()) and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        page.write_text(head + section + tail)
    else:
        page.write_text(f"# {title}\n\n" + section + "\n")


def finished_task(done: Path, method: Method, settings: ReproduceSettings) -> dict | None:
    """The summary at ``done`` if it exists and is to be reused (not ``fresh``); an error if
    it was computed with another attribution method than ``method``."""
    if settings.fresh or not done.exists():
        return None
    summary = json.loads(done.read_text())
    if summary["method"] != method:
        raise ValueError(
            f"{done} holds {summary['method']} results and this run asks for {method}: "
            "pass --fresh to replace them, or --out another directory"
        )
    return summary


def reproduce(settings: ReproduceSettings) -> Path:
    """Run the reproduction described by ``settings`` (printing progress) and rewrite the
    generated section of ``settings.out/reproduction.md``; returns the page's path."""
    out = Path(settings.out)
    work = out / "reproduction"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    saes = load_saes("smollm2-135m-sfc")

    summaries: dict[str, dict[str, dict]] = {}
    figures: dict[str, str] = {}
    extra: dict = {"node_threshold": settings.node_threshold}
    for method in settings.methods:
        summaries[method], curves = {}, {}
        for task in settings.tasks:
            directory = work / method / task
            finished = finished_task(directory / "summary.json", method, settings)
            if finished is not None:
                summaries[method][task] = finished
                print(f"{method} {task}: already done ({directory})")
            else:
                summary = run_task(model, saes, task, method, settings, directory)
                summaries[method][task] = summary
                print(f"{method} {task}: done in {summary['seconds']:.0f} s")
            curves[task] = pd.read_csv(directory / "curve.csv")
        figures[method] = f"reproduction/{method}/curves.png"
        plot_faithfulness_curve(curves, title=f"{_METHOD_NAMES[method]} node effects").savefig(
            out / figures[method], dpi=110
        )
        if {"across_rc", "across_pp"} <= set(summaries[method]):
            extra.setdefault("overlap", {})[method] = overlap(
                summaries[method]["across_rc"]["circuit_nodes_summed"],
                summaries[method]["across_pp"]["circuit_nodes_summed"],
            )
    if settings.approx:
        path, timing = work / "approximation.csv", work / "approximation_seconds.txt"
        if path.exists() and timing.exists() and not settings.fresh:
            table = pd.read_csv(path)
        else:
            t0 = time.perf_counter()
            data = agreement(settings.approx_task, model, n=settings.approx_pairs, split="train")
            table = approximation_check(
                model, saes, data, top=settings.approx_top, steps=settings.steps,
                batch_size=settings.batch_size,
            )  # fmt: skip
            table.to_csv(path, index=False)
            timing.write_text(f"{time.perf_counter() - t0:.1f}\n")
        figures["approximation"] = "reproduction/approximation.png"
        plot_approximation(table, title=settings.approx_task).savefig(
            out / figures["approximation"], dpi=110
        )
        extra["approximation"] = {
            "task": settings.approx_task,
            "pairs": settings.approx_pairs,
            "top": settings.approx_top,
            "steps": settings.steps,
            "seconds": float(timing.read_text()),
            "rows": approximation_rows(table),
        }
    extra["command"] = settings.command()
    (work / "extra.json").write_text(json.dumps(extra, indent=1))
    page = out / "reproduction.md"
    write_page(page, generated_section(summaries, extra, figures))
    return page
