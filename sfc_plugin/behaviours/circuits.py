"""A circuit per behaviour cluster (METHOD.md section 8, step 4), locally or on Ray.

Each cluster's samples are shuffled with the seed and split in two: circuits are discovered
on the first part and scored on the held-out rest. Discovery is ``discover_circuit`` with the
paper's settings for behaviours: zero ablation, metric = log-probability of the true next
token at the last context position (the default single-input metric), effects summed over
each sample's positions (variable-length contexts); faithfulness is
``evaluation.faithfulness`` with zero ablation on the held-out part. No effect code here.

Clusters are independent: ``engine="local"`` runs them one after another in this process;
``engine="ray"`` runs each as a ``@ray.remote`` task (model and dictionaries put in the
object store once), at most ``max_in_flight`` at a time, gathering results in completion
order. Either way each finished cluster is written to ``out/cluster_NNNNN.json`` (its
circuit) and ``out/cluster_NNNNN.scores.json``, so a rerun skips it.

On a Ray cluster: call ``ray.init(address="auto")`` (or ``"ray://head:10001"``) before
``cluster_circuits``; ``num_gpus=1`` gives each task a GPU and moves the model there.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from sae_lens import SAE
from tqdm.auto import tqdm

from sfc_plugin.behaviours.sampling import sample_rows
from sfc_plugin.circuit import Circuit, discover_circuit
from sfc_plugin.evaluation import faithfulness
from sfc_plugin.files import check_run_settings, write_atomic

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Engine = Literal["local", "ray"]
RESULT_COLUMNS = [
    "cluster",
    "size",
    "n_train",
    "n_test",
    "n_nodes",
    "n_feature_nodes",
    "n_error_nodes",
    "n_edges",
    "metric_clean",
    "faithfulness",
    "circuit_seconds",
    "circuit_file",
]


@dataclass(frozen=True)
class CircuitSettings:
    """Discovery and scoring settings shared by every cluster."""

    method: Literal["atp", "ig"] = "atp"
    steps: int = 10
    node_threshold: float = 0.1
    edge_threshold: float = 0.01
    max_nodes: int | None = None
    n_examples: int = 100
    held_out: float = 0.5
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.held_out < 1:
            raise ValueError(f"held_out must be in [0, 1), got {self.held_out!r}")
        if self.n_examples < 1:
            raise ValueError(f"n_examples must be positive, got {self.n_examples!r}")


@dataclass(frozen=True)
class ClusterJob:
    """One cluster's discovery and held-out rows (``{"prefix", "answer"}``)."""

    cluster: int
    size: int
    train: list[dict[str, str]]
    test: list[dict[str, str]]


def cluster_jobs(
    samples: pd.DataFrame,
    labels: Sequence[int] | np.ndarray,
    settings: CircuitSettings,
    clusters: Iterable[int] | None = None,
) -> list[ClusterJob]:
    """The jobs of ``clusters`` (default: all, largest first). A cluster with one sample has
    nothing to score on: it is skipped with a warning naming it."""
    labels = np.asarray(labels)
    if len(labels) != len(samples):
        raise ValueError(f"{len(labels)} labels for {len(samples)} samples")
    if clusters is None:
        ids, sizes = np.unique(labels, return_counts=True)
        clusters = [int(c) for c in ids[np.argsort(-sizes, kind="stable")]]
    rows = sample_rows(samples)
    jobs, single = [], []
    for c in clusters:
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            raise ValueError(f"cluster {c} has no samples")
        if len(members) < 2 and settings.held_out > 0:
            single.append(int(c))
            continue
        order = np.random.default_rng([settings.seed, int(c)]).permutation(members)
        n_test = math.floor(len(order) * settings.held_out)
        train = order[: len(order) - n_test][: settings.n_examples]
        test = order[len(order) - n_test :][: settings.n_examples]
        jobs.append(
            ClusterJob(int(c), len(members), [rows[i] for i in train], [rows[i] for i in test])
        )
    if single:
        warnings.warn(
            f"clusters {single} have one sample each: no held-out part, no circuit",
            stacklevel=2,
        )
    return jobs


def cluster_circuit(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    job: ClusterJob,
    settings: CircuitSettings,
    progress: bool = False,
) -> tuple[Circuit, dict[str, Any]]:
    """The circuit of one cluster and its scores (``RESULT_COLUMNS`` but the file)."""
    start = time.perf_counter()
    circuit = discover_circuit(
        model,
        saes,
        job.train,
        method=settings.method,
        steps=settings.steps,
        node_threshold=settings.node_threshold,
        edge_threshold=settings.edge_threshold,
        max_nodes=settings.max_nodes,
        ablation="zero",
        aggregation="sum",
        batch_size=settings.batch_size,
        progress=progress,
    )
    faithful = float("nan")
    if job.test:
        faithful = faithfulness(
            model,
            saes,
            circuit,
            job.test,
            ablation="zero",
            batch_size=settings.batch_size,
            progress=progress,
        )
    kinds = circuit.nodes.kind.value_counts()
    scores = {
        "cluster": job.cluster,
        "size": job.size,
        "n_train": len(job.train),
        "n_test": len(job.test),
        "n_nodes": len(circuit.nodes),
        "n_feature_nodes": int(kinds.get("feature", 0)),
        "n_error_nodes": int(kinds.get("error", 0)),
        "n_edges": len(circuit.edges),
        "metric_clean": float(circuit.settings["metric_clean"]),
        "faithfulness": faithful,
        "circuit_seconds": time.perf_counter() - start,
    }
    return circuit, scores


def _ray_task(model, saes, job: ClusterJob, settings: CircuitSettings, device, threads: int):
    """One cluster in a Ray worker (``cluster_circuit`` on the worker's copy)."""
    torch.set_num_threads(max(1, threads))
    if device is not None:
        model = model.to(device)
        saes = {h: sae.to(device) for h, sae in saes.items()}
    return cluster_circuit(model, saes, job, settings)


def _run_ray(
    model, saes, jobs: list[ClusterJob], settings: CircuitSettings, options: dict[str, Any]
) -> Iterable[tuple[Circuit, dict[str, Any]]]:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "engine='ray' needs Ray: pip install 'sfc_plugin[ray]' (or use engine='local')"
        ) from None
    if not ray.is_initialized():
        ray.init()
    num_cpus, num_gpus = options["num_cpus"], options["num_gpus"]
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_ray_task)
    device = "cuda" if num_gpus else None
    model_ref, saes_ref = ray.put(model), ray.put(dict(saes))
    limit = options["max_in_flight"] or max(1, int(ray.available_resources().get("CPU", 1)))
    pending: list[Any] = []
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < limit:
            job = queue.pop(0)
            pending.append(
                task.remote(model_ref, saes_ref, job, settings, device, max(1, int(num_cpus)))
            )
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def _run_local(
    model, saes, jobs: list[ClusterJob], settings: CircuitSettings
) -> Iterable[tuple[Circuit, dict[str, Any]]]:
    for job in jobs:
        yield cluster_circuit(model, saes, job, settings)


def _paths(out: Path, cluster: int) -> tuple[Path, Path]:
    stem = f"cluster_{cluster:05d}"
    return out / f"{stem}.json", out / f"{stem}.scores.json"


def cluster_circuits(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    samples: pd.DataFrame,
    labels: Sequence[int] | np.ndarray,
    out: str | Path,
    *,
    clusters: Iterable[int] | None = None,
    settings: CircuitSettings = CircuitSettings(),
    engine: Engine = "local",
    max_in_flight: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Discover and score a circuit for each cluster.

    Args:
        model, saes: as for ``discover_circuit``.
        samples, labels: ``behaviours.samples`` and the cluster of each sample.
        out: directory of the per-cluster files; clusters already there are read, not rerun.
        clusters: cluster ids to run (default: every cluster, largest first).
        settings: ``CircuitSettings`` (method, thresholds, examples per part, held-out share).
        engine: ``"local"`` (one after another here) or ``"ray"`` (a task per cluster on the
            Ray cluster ``ray.init`` connected to, or a local one).
        max_in_flight: Ray tasks submitted at once (default: the cluster's CPU count).
        num_cpus, num_gpus: resources of each Ray task (torch threads = ``num_cpus``).

    Returns:
        One row per cluster (``RESULT_COLUMNS``), in ``clusters`` order.
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    out = Path(out)
    check_run_settings(out, asdict(settings), "circuits")
    jobs = cluster_jobs(samples, labels, settings, clusters)
    done: dict[int, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        circuit_path, scores_path = _paths(out, job.cluster)
        if scores_path.exists() and circuit_path.exists():
            done[job.cluster] = json.loads(scores_path.read_text())
        else:
            todo.append(job)
    if todo:
        if engine == "ray":
            options = dict(max_in_flight=max_in_flight, num_cpus=num_cpus, num_gpus=num_gpus)
            results = _run_ray(model, saes, todo, settings, options)
        else:
            results = _run_local(model, saes, todo, settings)
        bar = tqdm(total=len(todo), desc=f"cluster circuits ({engine})", disable=not progress)
        for circuit, scores in results:
            circuit_path, scores_path = _paths(out, scores["cluster"])
            circuit.save(circuit_path)
            scores["circuit_file"] = circuit_path.name
            write_atomic(scores_path, json.dumps(scores, indent=1))
            done[scores["cluster"]] = scores
            bar.update(1)
        bar.close()
    frame = pd.DataFrame([done[j.cluster] for j in jobs], columns=RESULT_COLUMNS)
    return frame


def load_cluster_circuit(out: str | Path, cluster: int) -> Circuit:
    """The circuit ``cluster_circuits`` wrote for ``cluster``."""
    return Circuit.load(_paths(Path(out), cluster)[0])
