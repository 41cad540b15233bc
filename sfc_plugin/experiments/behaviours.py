"""Unsupervised behaviours on the embedded model (``sfc behaviours``): SmolLM2-135M-Instruct,
its bundled SAEs and any text (default: the held-out sample shipped with the package),
clustered for each ``k``, with a circuit for each of the largest clusters and one browser
page per ``k`` (``behaviours.find_behaviours``; an interrupted run resumes with the same
command). ``planted_purity`` is the check on texts with planted behaviours.

    sfc behaviours [--out out/behaviours] [--texts heldout.jsonl] [--k 100 400] [--engine ray]
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from sae_lens import SAE

from sfc_plugin.behaviours import (
    Behaviours,
    BehaviourSettings,
    CircuitSettings,
    cluster,
    find_behaviours,
    purity,
    represent,
    samples,
)
from sfc_plugin.behaviours.representations import Kind, Positions
from sfc_plugin.datasets.planted import GROUPS, planted_texts
from sfc_plugin.experiments.loading import load_with_dashboards

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def planted_purity(
    model: HookedTransformer,
    saes: Mapping[str, SAE] | None,
    *,
    n_per_group: int = 20,
    groups: tuple[str, ...] = GROUPS,
    kinds: Sequence[tuple[Kind, Positions]] = (("sae_activations", "sum"),),
    loss_threshold: float = 0.3,
    min_context: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Cluster samples of planted texts (``datasets.planted``) into as many clusters as
    groups, for each (representation, positions), and score the clusters against the groups.

    Returns one row per representation: ``representation``, ``positions``, ``samples``,
    ``purity``, ``seconds``; ``frame.attrs["group_sizes"]`` counts the samples per group."""
    rows = planted_texts(n_per_group, groups, seed)
    found = samples(
        model,
        rows,
        loss_threshold=loss_threshold,
        min_context=min_context,
        seed=seed,
        progress=progress,
    )
    truth = np.array([rows[d]["group"] for d in found.document])
    present = sorted(set(truth.tolist()))
    results = []
    for kind, positions in kinds:
        start = time.perf_counter()
        reps = represent(model, found, kind, saes=saes, positions=positions, progress=progress)
        labels = cluster(reps, len(present), seed=seed).labels
        results.append(
            {
                "representation": kind,
                "positions": positions,
                "samples": len(found),
                "purity": purity(labels, truth),
                "seconds": time.perf_counter() - start,
            }
        )
    frame = pd.DataFrame(results)
    frame.attrs["group_sizes"] = {g: int((truth == g).sum()) for g in present}
    return frame


def run_behaviours_experiment(
    *,
    out: str | Path = "out/behaviours",
    model: str = "smollm2-135m",
    saes: str = "smollm2-135m-sfc",
    texts: str | Path | None = None,
    n_samples: int = BehaviourSettings.n_samples,
    loss_threshold: float = BehaviourSettings.loss_threshold,
    min_context: int = BehaviourSettings.min_context,
    max_context: int = BehaviourSettings.max_context,
    induction: Literal["bigram", "trigram", "none"] = "bigram",
    one_per_document: bool = False,
    representation: Kind = BehaviourSettings.representation,
    positions: Positions = BehaviourSettings.positions,
    k: Sequence[int] = (BehaviourSettings.k,),
    cluster_method: Literal["auto", "spectral", "kmeans"] = "auto",
    n_circuits: int = BehaviourSettings.n_circuits,
    method: Literal["atp", "ig"] = "atp",
    node_threshold: float = CircuitSettings.node_threshold,
    n_examples: int = CircuitSettings.n_examples,
    engine: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    max_in_flight: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    dashboard_tokens: int = 32_768,
    seed: int = 0,
    device: str | None = None,
) -> list[Behaviours]:
    """Load ``model`` and ``saes``, run the pipeline for each ``k`` into ``out`` (samples and
    representations shared), print the largest and the most coherent clusters and the
    circuits, and return the results."""
    start = time.perf_counter()
    lm, dictionaries, index = load_with_dashboards(
        model, saes, dashboard_tokens=dashboard_tokens, device=device
    )
    if engine == "ray" and ray_address is not None:
        import ray

        ray.init(address=ray_address)
    base = BehaviourSettings(
        loss_threshold=loss_threshold,
        min_context=min_context,
        max_context=max_context,
        induction=induction,
        one_per_document=one_per_document,
        n_samples=n_samples,
        representation=representation,
        positions=positions,
        cluster_method=cluster_method,
        n_circuits=n_circuits,
        circuit=CircuitSettings(
            method=method, node_threshold=node_threshold, n_examples=n_examples, seed=seed
        ),
        seed=seed,
    )
    results = []
    for each in k:
        result = find_behaviours(
            lm,
            dictionaries,
            texts,
            out=out,
            settings=replace(base, k=each),
            engine=engine,
            max_in_flight=max_in_flight,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            dashboards=index,
        )
        _print(result)
        results.append(result)
    print(f"total time {time.perf_counter() - start:.1f} s")
    return results


def _print(result: Behaviours) -> None:
    counts = result.samples.attrs.get("counts", {})
    print(
        f"k = {result.settings.k}: {len(result.samples)} samples from {counts.get('targets', 0)} "
        f"targets; times (s): "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in result.timings.items())
    )
    table = result.clusters.copy()
    table["top_answers"] = [
        " ".join(repr(a) for a, _ in answers[:3]) for answers in table.top_answers
    ]
    columns = ["cluster", "size", "coherence", "answer_share", "top_answers"]
    print("largest clusters:")
    shown = columns + ["n_nodes", "faithfulness"]
    print(table[shown].head(max(result.settings.n_circuits, 10)).to_string(index=False))
    print("most coherent clusters (at least 4 samples):")
    coherent = table[table["size"] >= 4].sort_values("coherence", ascending=False)
    print(coherent[columns].head(10).to_string(index=False))
    labels = result.clustering.labels
    for c in coherent.cluster.head(5):
        print(f"cluster {c}:")
        for i in np.flatnonzero(labels == c)[:3]:
            context = result.samples.context[i].replace("\n", "\\n")
            print(f"    ...{context[-70:]!s} -> {result.samples.answer[i]!r}")
    print(f"browser: {result.page}")
