"""Unsupervised behaviours (paper section 5, METHOD.md section 8): samples the model predicts
well (``samples``), their representations (``representations``), clusters (``clustering``), a
circuit per cluster, locally or on Ray (``circuits``), and the whole run with its browser
(``pipeline.find_behaviours``)."""

from sfc_plugin.behaviours.circuits import (
    CircuitSettings,
    ClusterJob,
    cluster_circuit,
    cluster_circuits,
    cluster_jobs,
    load_cluster_circuit,
)
from sfc_plugin.behaviours.clustering import (
    Clustering,
    angular_similarity,
    cluster,
    cluster_table,
    coherence,
    purity,
)
from sfc_plugin.behaviours.pipeline import Behaviours, BehaviourSettings, find_behaviours
from sfc_plugin.behaviours.representations import (
    KINDS,
    POSITIONS,
    Representations,
    SparseProjection,
    gradient_parameters,
    represent,
)
from sfc_plugin.behaviours.sampling import (
    SampleSettings,
    is_induction,
    sample_rows,
    samples,
    samples_per_100k_tokens,
)

__all__ = [
    "KINDS",
    "POSITIONS",
    "BehaviourSettings",
    "Behaviours",
    "CircuitSettings",
    "ClusterJob",
    "Clustering",
    "Representations",
    "SampleSettings",
    "SparseProjection",
    "angular_similarity",
    "cluster",
    "cluster_circuit",
    "cluster_circuits",
    "cluster_jobs",
    "cluster_table",
    "coherence",
    "find_behaviours",
    "gradient_parameters",
    "is_induction",
    "load_cluster_circuit",
    "purity",
    "represent",
    "sample_rows",
    "samples",
    "samples_per_100k_tokens",
]
