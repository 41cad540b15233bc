"""The ``sfc`` command: circuits, their evaluation and agreement data without writing Python.

    sfc data --task across_rc --split train --out train.jsonl
    sfc circuit --data train.jsonl --test-data test.jsonl --out report.html
    sfc evaluate --circuit circuit.json --data test.jsonl

``--model`` defaults to the embedded SmolLM2-135M and ``--saes`` to its bundled SAEs; any
``load_model`` name and any ``load_saes`` source (a SAELens release with ``--sae-ids``, or
directories) work the same way. Run ``sfc <command> --help`` for every option.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EMBEDDED_MODEL = "smollm2-135m"  # models.EMBEDDED_MODEL, not imported: --help stays instant
DEFAULT_SAES = "smollm2-135m-sfc"

_EPILOG = """examples:
  sfc data --task across_rc --split train --out train.jsonl
  sfc data --task across_rc --split test --out test.jsonl
  sfc circuit --data train.jsonl --test-data test.jsonl --out report.html --circuit-out c.json
  sfc evaluate --circuit c.json --data test.jsonl --errors remove

Data files are JSONL, one pair per line:
  {"clean_prefix": "The boy that the girls like", "patch_prefix": "The boys that the girls
   like", "clean_answer": " does", "patch_answer": " do"}
or single inputs {"prefix": ..., "answer": ...}; answers must be one token."""


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
    data.add_argument(
        "--task", required=True, choices=["simple", "within_rc", "across_rc", "across_pp"]
    )
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_args(evaluate)
    evaluate.add_argument("--circuit", required=True, help="circuit JSON file")
    evaluate.add_argument("--data", required=True, help="evaluation pairs (JSONL)")
    evaluate.add_argument("--ablation", choices=["mean", "zero"], default="mean")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    _eval_args(evaluate)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"data": _run_data, "circuit": _run_circuit, "evaluate": _run_evaluate}[args.command](args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"sfc {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
