"""Clustering behaviour samples (METHOD.md section 8, step 3).

Samples are compared by angular similarity ``1 - arccos(cos)/pi`` of their representations
(in [0, 1], 1 for the same direction). Up to ``SPECTRAL_LIMIT`` samples are clustered by
scikit-learn's spectral clustering on that precomputed affinity (the paper's choice,
k-means label assignment); beyond it, by k-means on the unit-normalised vectors (faiss when
installed, else scikit-learn's MiniBatchKMeans): spherical k-means, as the paper's
large runs used. Each cluster is then described by its size, its most common answers and its
coherence (mean pairwise angular similarity of its members).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse
from sklearn.preprocessing import normalize

from sfc_plugin.behaviours.representations import Matrix, Representations

ClusterMethod = Literal["auto", "spectral", "kmeans"]
SPECTRAL_LIMIT = 10_000
"""Largest sample count ``method="auto"`` clusters spectrally (its affinity is n x n)."""
CLUSTER_COLUMNS = ["cluster", "size", "coherence", "answer_share", "top_answers"]
COHERENCE_SAMPLE = 512
"""Members per cluster the coherence is computed on (drawn with the seed when more)."""


@dataclass
class Clustering:
    """``labels[i]``: the cluster of sample ``i`` (0..k-1)."""

    labels: np.ndarray
    method: str
    k: int
    seconds: float


def _unit(values: Matrix) -> Matrix:
    """Rows scaled to unit length (all-zero rows stay zero), float32."""
    if scipy.sparse.issparse(values):
        return normalize(values.astype(np.float32), copy=True)
    return normalize(np.asarray(values, dtype=np.float32), copy=True)


def angular_similarity(a: Matrix, b: Matrix | None = None, block: int = 1024) -> np.ndarray:
    """``1 - arccos(cos(a_i, b_j)) / pi`` for every pair of rows, ``[len(a), len(b)]``
    (``b`` defaults to ``a``). Sparse rows are made dense a block of ``block`` rows at a time
    (``b`` whole): SAE representations summed over positions are too dense (a third of the
    entries here) for a sparse product to pay."""
    ua = _unit(a)
    ub = _dense(_unit(b) if b is not None else ua)
    out = np.empty((ua.shape[0], ub.shape[0]), dtype=np.float32)
    for lo in range(0, ua.shape[0], block):
        cos = _dense(ua[lo : lo + block]) @ ub.T
        out[lo : lo + block] = 1 - np.arccos(np.clip(cos, -1, 1)) / np.pi
    return out


def _dense(values: Matrix) -> np.ndarray:
    return values.toarray() if scipy.sparse.issparse(values) else np.asarray(values)


def cluster(
    representations: Representations | Matrix,
    k: int,
    *,
    method: ClusterMethod = "auto",
    seed: int = 0,
    n_init: int = 30,
) -> Clustering:
    """Cluster the samples into ``k`` groups.

    Args:
        representations: ``represent``'s result, or a ``[n_samples, dim]`` matrix.
        k: the number of clusters (2 <= k <= n_samples).
        method: ``"spectral"`` (angular-similarity affinity, ``n_init`` k-means runs on the
            embedding), ``"kmeans"`` (spherical), or ``"auto"``: spectral up to
            ``SPECTRAL_LIMIT`` samples.
        seed: seeds every random choice.
    """
    values = (
        representations.values if isinstance(representations, Representations) else representations
    )
    n = values.shape[0]
    if not isinstance(k, (int, np.integer)) or not 2 <= k <= n:
        raise ValueError(f"k must be an integer in [2, {n}] for {n} samples, got {k!r}")
    if method not in ("auto", "spectral", "kmeans"):
        raise ValueError(f"method must be 'auto', 'spectral' or 'kmeans', got {method!r}")
    zero = np.flatnonzero(_row_norms(values) == 0)
    if len(zero):
        raise ValueError(
            f"{len(zero)} samples have an all-zero representation (first: sample {zero[0]}); "
            "they have no direction to compare"
        )
    if method == "auto":
        method = "spectral" if n <= SPECTRAL_LIMIT else "kmeans"
    start = time.perf_counter()
    if method == "spectral":
        from sklearn.cluster import SpectralClustering

        affinity = angular_similarity(values).astype(np.float64)
        model = SpectralClustering(
            n_clusters=int(k),
            affinity="precomputed",
            assign_labels="kmeans",
            n_init=n_init,
            random_state=seed,
        )
        labels = model.fit_predict(affinity)
    else:
        labels = _kmeans(_unit(values), int(k), seed)
    return Clustering(
        np.asarray(labels, dtype=np.int64), method, int(k), time.perf_counter() - start
    )


def _row_norms(values: Matrix) -> np.ndarray:
    if scipy.sparse.issparse(values):
        return np.sqrt(np.asarray(values.multiply(values).sum(1)).ravel())
    return np.linalg.norm(np.asarray(values), axis=1)


def _kmeans(unit: Matrix, k: int, seed: int) -> np.ndarray:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        faiss = None
    if faiss is not None:
        dense = np.ascontiguousarray(_dense(unit), dtype=np.float32)
        km = faiss.Kmeans(dense.shape[1], k, niter=25, seed=seed, spherical=True)
        km.train(dense)
        return km.index.search(dense, 1)[1].ravel()
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)  # type: ignore[arg-type]
    return km.fit_predict(unit)


def coherence(values: Matrix, members: np.ndarray, seed: int = 0) -> float:
    """Mean angular similarity over pairs of distinct members (NaN for one member); on at
    most ``COHERENCE_SAMPLE`` members drawn with ``seed``."""
    if len(members) < 2:
        return float("nan")
    if len(members) > COHERENCE_SAMPLE:
        members = np.random.default_rng(seed).choice(members, COHERENCE_SAMPLE, replace=False)
    sim = angular_similarity(values[members])
    m = len(members)
    return float((sim.sum() - np.trace(sim)) / (m * (m - 1)))


def cluster_table(
    samples: pd.DataFrame,
    clustering: Clustering | Sequence[int] | np.ndarray,
    representations: Representations | Matrix | None = None,
    *,
    n_answers: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per cluster, largest first: ``cluster``, ``size``, ``coherence`` (NaN without
    ``representations`` or for one member), ``answer_share`` (share of the most common
    answer), ``top_answers`` (``[answer, count]`` pairs, most common first)."""
    labels = np.asarray(clustering.labels if isinstance(clustering, Clustering) else clustering)
    if len(labels) != len(samples):
        raise ValueError(f"{len(labels)} labels for {len(samples)} samples")
    values = (
        representations.values if isinstance(representations, Representations) else representations
    )
    if values is not None and values.shape[0] != len(samples):
        raise ValueError(f"{values.shape[0]} representations for {len(samples)} samples")
    answers = samples.answer.to_numpy()
    rows = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        counts = Counter(answers[members]).most_common()
        rows.append(
            {
                "cluster": int(c),
                "size": len(members),
                "coherence": float("nan") if values is None else coherence(values, members, seed),
                "answer_share": counts[0][1] / len(members),
                "top_answers": [[a, int(n)] for a, n in counts[:n_answers]],
            }
        )
    frame = pd.DataFrame(
        rows, columns=["cluster", "size", "coherence", "answer_share", "top_answers"]
    )
    return frame.sort_values(["size", "cluster"], ascending=[False, True]).reset_index(drop=True)


def purity(labels: Sequence[int] | np.ndarray, groups: Sequence[Any] | np.ndarray) -> float:
    """The share of samples whose cluster's most common group is their own (1: every cluster
    holds one group)."""
    by_label, by_group = np.asarray(labels), np.asarray(groups)
    if len(by_label) != len(by_group):
        raise ValueError(f"{len(by_label)} labels for {len(by_group)} groups")
    hits = [
        Counter(by_group[by_label == c].tolist()).most_common(1)[0][1] for c in np.unique(by_label)
    ]
    return sum(hits) / len(by_label)
