"""SHIFT on the embedded model (``sfc shift``): SmolLM2-135M-Instruct, its bundled SAEs and
the offline Bias in Bios biographies, with a chosen judge, written to ``out/`` stage by stage
(``shift.run_shift``; an interrupted run resumes with the same command).

    sfc shift [--out out/shift] [--judge lexicon|llm|marked --marked nodes.txt] [--method ig]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from sfc_plugin.experiments.loading import load_with_dashboards
from sfc_plugin.shift import (
    Judge,
    ShiftResult,
    ShiftSettings,
    lexicon_judge,
    llm_judge,
    marked_judge,
    run_shift,
)


def make_judge(
    judge: Literal["lexicon", "llm", "marked"], marked: str | Path | None = None
) -> Judge:
    """The judge by name; ``marked``: a file of node ids, one per line (``#`` comments), for
    ``judge="marked"``. The LLM judge reads ``SFC_JUDGE_BASE_URL`` / ``SFC_JUDGE_MODEL`` /
    ``SFC_JUDGE_API_KEY`` (see ``llm_judge``)."""
    if judge == "lexicon":
        return lexicon_judge()
    if judge == "llm":
        return llm_judge()
    if judge == "marked":
        if marked is None:
            raise ValueError("judge 'marked' needs marked= (a file of node ids, one per line)")
        lines = Path(marked).read_text().splitlines()
        return marked_judge([x.split("#")[0].strip() for x in lines if x.split("#")[0].strip()])
    raise ValueError(f"judge must be 'lexicon', 'llm' or 'marked', got {judge!r}")


def run_shift_experiment(
    *,
    out: str | Path = "out/shift",
    model: str = "smollm2-135m",
    saes: str = "smollm2-135m-sfc",
    judge: Literal["lexicon", "llm", "marked"] = "lexicon",
    marked: str | Path | None = None,
    method: Literal["atp", "ig"] = "atp",
    steps: int = 10,
    n_train: int = ShiftSettings.n_train,
    n_oracle: int = ShiftSettings.n_oracle,
    n_test: int = ShiftSettings.n_test,
    n_circuit: int = ShiftSettings.n_circuit,
    n_features: int = ShiftSettings.n_features,
    probe_epochs: int = ShiftSettings.probe_epochs,
    dashboard_tokens: int = 32_768,
    device: str | None = None,
) -> ShiftResult:
    """Load ``model`` and ``saes``, build (or read from the cache) the dashboards the judge
    reads, run SHIFT into ``out`` and print the table. The default method is attribution
    patching: on a 2-core CPU integrated gradients (``method="ig"``, the paper's) costs
    several times more (``benchmarks/shift.py``)."""
    start = time.perf_counter()
    chosen = make_judge(judge, marked)
    lm, dictionaries, index = load_with_dashboards(
        model, saes, dashboard_tokens=dashboard_tokens, device=device
    )
    settings = ShiftSettings(
        n_train=n_train,
        n_oracle=n_oracle,
        n_test=n_test,
        n_circuit=n_circuit,
        n_features=n_features,
        probe_epochs=probe_epochs,
        method=method,
        steps=steps,
    )
    result = run_shift(lm, dictionaries, judge=chosen, settings=settings, index=index, out=out)
    print(result)
    print(f"ablated ({len(result.ablated)}): {', '.join(result.ablated) or 'none'}")
    print(f"report: {Path(out) / 'report.html'}; result: {Path(out) / 'result.json'}")
    print(f"total time {time.perf_counter() - start:.1f} s")
    return result
