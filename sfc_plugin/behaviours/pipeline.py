"""The behaviours pipeline in one call (paper section 5): samples -> representations ->
clusters -> a circuit for each of the largest clusters -> the cluster browser.

Every stage is written under ``out/`` and reused by a rerun with the same settings:

    out/samples/                  shards of samples (``samples``)
    out/representations/KIND_POS/ shards of representations (``represent``)
    out/kK/clusters.json          labels and the cluster table for k = K
    out/kK/circuits/              cluster_NNNNN.json / .scores.json / .html (``cluster_circuits``)
    out/kK/index.html             the browser (``frontend.behaviours_page``)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sae_lens import SAE

from sfc_plugin.behaviours.circuits import CircuitSettings, Engine, cluster_circuits
from sfc_plugin.behaviours.clustering import Clustering, ClusterMethod, cluster, cluster_table
from sfc_plugin.behaviours.representations import Kind, Positions, Representations, represent
from sfc_plugin.behaviours.sampling import Induction, samples
from sfc_plugin.circuit import Circuit
from sfc_plugin.files import read_document, write_document
from sfc_plugin.frontend.behaviours_page import save_behaviours_page

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

CLUSTERS_SCHEMA = "sfc_plugin.behaviour_clusters"
CLUSTERS_VERSION = 1


@dataclass(frozen=True)
class BehaviourSettings:
    """Every choice of the pipeline (the defaults: the paper's SAE-feature runs at the
    embedded model's scale)."""

    loss_threshold: float = 0.1
    min_context: int = 16
    max_context: int = 64
    induction: Induction = "bigram"
    one_per_document: bool = False
    n_samples: int = 8192
    representation: Kind = "sae_effects"
    positions: Positions = "sum"
    k: int = 100
    cluster_method: ClusterMethod = "auto"
    n_circuits: int = 10
    circuit: CircuitSettings = field(default_factory=CircuitSettings)
    batch_size: int = 16
    seed: int = 0


@dataclass
class Behaviours:
    """The pipeline's results. ``clusters``: one row per cluster, largest first, with the
    circuit columns (NaN where no circuit was run); ``timings``: seconds per stage."""

    samples: pd.DataFrame
    representations: Representations
    clustering: Clustering
    clusters: pd.DataFrame
    out: Path
    timings: dict[str, float]
    settings: BehaviourSettings

    @property
    def page(self) -> Path:
        return self.out / f"k{self.settings.k}" / "index.html"

    def circuit(self, cluster: int) -> Circuit:
        """The circuit found for ``cluster``."""
        row = self.clusters[self.clusters.cluster == cluster]
        if row.empty or not isinstance(row.circuit_file.iloc[0], str):
            raise KeyError(f"no circuit was found for cluster {cluster}")
        return Circuit.load(
            self.out / f"k{self.settings.k}" / "circuits" / row.circuit_file.iloc[0]
        )


def _clustering(out: Path, reps: Representations, settings: BehaviourSettings) -> Clustering:
    """The clustering stored at ``out`` for these settings, or a new one (then stored)."""
    key = {
        "k": settings.k,
        "method": settings.cluster_method,
        "seed": settings.seed,
        "representations": reps.settings,
    }
    path = out / "clusters.json"
    if path.exists():
        doc = read_document(path, CLUSTERS_SCHEMA, CLUSTERS_VERSION, "clusters")
        if json.loads(json.dumps(key)) == doc["settings"]:
            c = doc["clustering"]
            return Clustering(np.asarray(c["labels"]), c["method"], c["k"], c["seconds"])
    result = cluster(reps, settings.k, method=settings.cluster_method, seed=settings.seed)
    body = {
        "settings": key,
        "clustering": {
            "labels": result.labels.tolist(),
            "method": result.method,
            "k": result.k,
            "seconds": result.seconds,
        },
    }
    write_document(path, CLUSTERS_SCHEMA, CLUSTERS_VERSION, body)
    return result


def find_behaviours(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    texts: Iterable[str] | str | Path | None = None,
    *,
    out: str | Path,
    settings: BehaviourSettings = BehaviourSettings(),
    engine: Engine = "local",
    max_in_flight: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    dashboards: Any = None,
    progress: bool = True,
) -> Behaviours:
    """Run the pipeline (module docstring) and write the browser.

    Args:
        model, saes: the model and its dictionaries (sites of the SAE representations and of
            the circuits).
        texts: as for ``samples`` (default: the held-out sample shipped with the package).
        out: the run's directory; a rerun with the same settings reuses every stage.
        settings: ``BehaviourSettings``.
        engine, max_in_flight, num_cpus, num_gpus: where the per-cluster circuits run
            (``cluster_circuits``).
        dashboards: feature dashboards for the circuit pages (``feature_index``), optional.
    """
    out = Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    found = samples(
        model,
        texts,
        loss_threshold=settings.loss_threshold,
        min_context=settings.min_context,
        max_context=settings.max_context,
        induction=settings.induction,
        one_per_document=settings.one_per_document,
        max_samples=settings.n_samples,
        seed=settings.seed,
        out=out / "samples",
        batch_size=settings.batch_size,
        progress=progress,
    )
    timings["samples"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kind, positions = settings.representation, settings.positions
    reps = represent(
        model,
        found,
        kind,
        saes=saes,
        positions=positions,
        seed=settings.seed,
        batch_size=settings.batch_size,
        out=out / "representations" / (kind if kind == "gradients" else f"{kind}_{positions}"),
        progress=progress,
    )
    timings["representations"] = time.perf_counter() - t0
    run_dir = out / f"k{settings.k}"
    t0 = time.perf_counter()
    clustering = _clustering(run_dir, reps, settings)
    timings["clustering"] = time.perf_counter() - t0
    table = cluster_table(found, clustering, reps, seed=settings.seed)
    explained = [int(c) for c in table.cluster[table["size"] >= 2][: settings.n_circuits]]
    t0 = time.perf_counter()
    circuits_dir = run_dir / "circuits"
    results = cluster_circuits(
        model,
        saes,
        found,
        clustering.labels,
        circuits_dir,
        clusters=explained,
        settings=settings.circuit,
        engine=engine,
        max_in_flight=max_in_flight,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        progress=progress,
    )
    links = {}
    for c, name in zip(results.cluster, results.circuit_file):
        html = (circuits_dir / name).with_suffix(".html")
        if not html.exists():
            options = {"dashboards": dashboards} if dashboards is not None else {}
            Circuit.load(circuits_dir / name).save_html(html, **options)
        links[int(c)] = f"circuits/{html.name}"
    timings["circuits"] = time.perf_counter() - t0
    merged = table.merge(results.drop(columns=["size"]), on="cluster", how="left")
    shown = {
        "model": getattr(model.cfg, "model_name", None),
        "samples": len(found),
        **{k: v for k, v in asdict(settings).items() if k not in ("circuit",)},
        **{f"circuit {k}": v for k, v in asdict(settings.circuit).items()},
        "engine": engine,
    }
    counts = found.attrs.get("counts", {})
    notes = [
        f"{counts.get('targets', 0):,} targets scanned; {counts.get('low_loss', 0):,} below the "
        f"loss threshold; {counts.get('induction', 0):,} induction cases and "
        f"{counts.get('not_round_trip', 0):,} non-round-tripping texts dropped."
    ]
    save_behaviours_page(
        run_dir / "index.html",
        merged,
        found,
        clustering.labels.tolist(),
        title=f"Behaviours of {shown['model']} (k = {settings.k})",
        settings=shown,
        circuit_pages=links,
        notes=notes,
    )
    return Behaviours(found, reps, clustering, merged, out, timings, settings)
