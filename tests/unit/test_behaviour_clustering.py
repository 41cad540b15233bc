"""Clustering behaviour samples (sfc_plugin.behaviours.clustering) against the formulas written
out here with numpy, and against synthetic data with a known grouping."""

from __future__ import annotations

import importlib
import itertools
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from sfc_plugin.behaviours.clustering import (
    Clustering,
    angular_similarity,
    cluster,
    cluster_table,
    coherence,
    purity,
)
from sfc_plugin.behaviours.representations import Representations

pytestmark = pytest.mark.usefixtures("one_thread")


def own_angular(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - arccos(cos)/pi pair by pair, in float64."""
    out = np.empty((len(a), len(b)))
    for i, j in itertools.product(range(len(a)), range(len(b))):
        cos = a[i] @ b[j] / (np.linalg.norm(a[i]) * np.linalg.norm(b[j]))
        out[i, j] = 1 - np.arccos(np.clip(cos, -1, 1)) / np.pi
    return out


def dense(x):
    return x.toarray() if scipy.sparse.issparse(x) else np.asarray(x)


def check_angular(got, want, same):
    assert got.shape == want.shape
    off = ~np.eye(*want.shape, dtype=bool) if same else np.ones(want.shape, dtype=bool)
    # arccos is steep near cos = 1: float32 rounding moves the self-similarity by ~1e-4
    np.testing.assert_allclose(got[off], want[off], atol=2e-5)
    if same:
        np.testing.assert_allclose(np.diag(got), 1, atol=1e-3)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_angular_similarity_is_the_formula(sparse):
    rng = np.random.default_rng(0)
    make = (
        (
            lambda n, d: scipy.sparse.random(
                n, d, density=0.4, format="csr", random_state=rng, data_rvs=rng.standard_normal
            )
        )
        if sparse
        else (lambda n, d: rng.standard_normal((n, d)))
    )
    a, b = make(13, 9), make(7, 9)
    assert (np.linalg.norm(dense(a), axis=1) > 0).all() and (
        np.linalg.norm(dense(b), axis=1) > 0
    ).all()
    for block in (1, 4, 13, 1024):  # smaller than n (with a partial last block) and not
        check_angular(angular_similarity(a, b, block=block), own_angular(dense(a), dense(b)), False)
        check_angular(angular_similarity(a, block=block), own_angular(dense(a), dense(a)), True)
    # antiparallel rows: cos = -1 gives 0; orthogonal rows give 1/2
    x = np.array([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]])
    got = angular_similarity(scipy.sparse.csr_matrix(x) if sparse else x)
    np.testing.assert_allclose(got, own_angular(x, x), atol=1e-3)
    assert abs(got[0, 1]) < 1e-6 and abs(got[0, 2] - 0.5) < 1e-6


def test_angular_similarity_mixed_inputs():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 5))
    b = scipy.sparse.csr_matrix(rng.standard_normal((4, 5)) * (rng.random((4, 5)) < 0.6))
    check_angular(angular_similarity(a, b, block=4), own_angular(a, dense(b)), False)
    check_angular(
        angular_similarity(scipy.sparse.csr_matrix(a), b, block=4), own_angular(a, dense(b)), False
    )


def synthetic(groups: int, per_group: int, dim: int, sparse: bool, seed: int):
    """``groups`` random directions (sparse: nonnegative, on disjoint random supports, as
    SAE features) and members = direction * random scale + small noise, shuffled."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    if sparse:
        supports = rng.permutation(dim)[: groups * 6].reshape(groups, 6)
    for g in range(groups):
        if sparse:
            direction = np.zeros(dim)
            direction[supports[g]] = rng.random(6) + 0.5
        else:
            direction = rng.standard_normal(dim)
        for _ in range(per_group):
            noise = 0.05 * np.linalg.norm(direction) / np.sqrt(dim) * rng.standard_normal(dim)
            if sparse:
                noise = np.where(direction > 0, np.abs(noise), 0)  # stays on the support
            rows.append(direction * rng.uniform(0.5, 2) + noise)
            labels.append(g)
    order = rng.permutation(len(rows))
    values = np.array(rows)[order]
    return (scipy.sparse.csr_matrix(values) if sparse else values), np.array(labels)[order]


@pytest.mark.parametrize("method", ["spectral", "kmeans", "auto"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_cluster_recovers_separated_groups(method, sparse):
    values, groups = synthetic(groups=4, per_group=15, dim=40, sparse=sparse, seed=3)
    result = cluster(values, 4, method=method, seed=0)
    assert isinstance(result, Clustering)
    assert result.method == ("spectral" if method == "auto" else method) and result.k == 4
    assert result.labels.shape == (60,) and set(result.labels) == {0, 1, 2, 3}
    assert purity(result.labels, groups) == 1
    assert purity(groups, result.labels) == 1  # and no group is split
    again = cluster(values, 4, method=method, seed=0)
    np.testing.assert_array_equal(again.labels, result.labels)
    # a Representations object is read like its matrix
    rep = Representations(values=values, kind="activations", positions="sum", blocks=[("x", 40)])
    np.testing.assert_array_equal(cluster(rep, 4, method=method, seed=0).labels, result.labels)


def test_purity_on_hand_cases():
    assert purity([0, 0, 1, 1], ["a", "a", "b", "b"]) == 1
    assert purity([5, 5, 2, 2], ["a", "a", "b", "b"]) == 1  # label names do not matter
    assert purity([0, 0, 0, 0], ["a", "a", "b", "b"]) == 0.5
    assert purity([0, 0, 0, 1, 1, 1], ["a", "a", "b", "b", "b", "b"]) == 5 / 6
    assert purity([0, 1, 2, 3], ["a", "a", "b", "b"]) == 1  # singletons are pure
    assert purity([0, 1, 0, 1], [1, 1, 2, 2]) == 0.5
    # against the definition: the share of samples whose cluster's most common group is theirs
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.integers(0, 4, 20)
        groups = rng.integers(0, 3, 20)
        hits = 0
        for c in set(labels):
            counts = Counter(groups[labels == c])
            best = max(counts.values())
            hits += best  # ties: one of the most common groups is "theirs"
        assert purity(labels, groups) == pytest.approx(hits / 20)
    with pytest.raises(ValueError, match="3 labels for 2 groups"):
        purity([0, 1, 1], ["a", "b"])


def test_cluster_refuses_bad_input():
    values, _ = synthetic(groups=2, per_group=4, dim=10, sparse=False, seed=0)
    for k in (1, 0, 9, 2.0, "2"):
        with pytest.raises(ValueError, match="k must be an integer in"):
            cluster(values, k)
    assert cluster(values, np.int64(8), method="kmeans").k == 8  # k == n is allowed
    with pytest.raises(ValueError, match="'agglomerative'"):
        cluster(values, 2, method="agglomerative")
    zeroed = values.copy()
    zeroed[[3, 5]] = 0
    for bad in (zeroed, scipy.sparse.csr_matrix(zeroed)):
        with pytest.raises(ValueError, match="2 samples have an all-zero representation.*sample 3"):
            cluster(bad, 2)


def own_coherence(values: np.ndarray, members) -> float:
    sims = [own_angular(values[[i]], values[[j]])[0, 0] for i in members for j in members if i != j]
    return float(np.mean(sims))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_cluster_table(sparse):
    rng = np.random.default_rng(4)
    n = 23
    values = rng.standard_normal((n, 6)) * (rng.random((n, 6)) < 0.7)
    values[:, 0] += 0.1  # no all-zero row
    matrix = scipy.sparse.csr_matrix(values) if sparse else values
    labels = rng.integers(0, 4, n)
    labels[labels == 3] = 0
    labels[7] = 3  # a singleton
    labels[[2, 9]] = 5  # a pair; label 4 unused
    answers = [str(a) for a in rng.choice([" the", " a", ".", " of", ",", " and", " is"], n)]
    frame = pd.DataFrame({"answer": answers, "context": ["x"] * n})

    for table in (
        cluster_table(frame, labels, matrix, n_answers=3),
        cluster_table(frame, Clustering(labels, "spectral", 5, 0.0), matrix, n_answers=3),
    ):
        assert list(table.columns) == [
            "cluster",
            "size",
            "coherence",
            "answer_share",
            "top_answers",
        ]
        assert table["size"].sum() == n
        assert sorted(table.cluster) == sorted(set(labels))
        keys = list(zip(-table["size"], table.cluster))
        assert keys == sorted(keys)  # largest first, ties by cluster
        for row in table.itertuples():
            members = np.flatnonzero(labels == row.cluster)
            assert row.size == len(members)
            if len(members) == 1:
                assert np.isnan(row.coherence)
            else:
                assert row.coherence == pytest.approx(own_coherence(values, members), abs=1e-5)
            counts = Counter(answers[i] for i in members)
            top = row.top_answers
            assert len(top) == min(3, len(counts))
            assert all(counts[a] == c for a, c in top)
            listed = [c for _, c in top]
            assert listed == sorted(listed, reverse=True)
            assert all(c <= listed[-1] for a, c in counts.items() if a not in dict(top))
            assert row.answer_share == pytest.approx(max(counts.values()) / len(members))
    assert table.coherence.isna().sum() == 1

    no_values = cluster_table(frame, labels)
    assert no_values.coherence.isna().all()
    rep = Representations(values=matrix, kind="activations", positions="sum", blocks=[("x", 6)])
    pd.testing.assert_frame_equal(cluster_table(frame, labels, rep, n_answers=3), table)
    with pytest.raises(ValueError, match=f"{n - 1} labels for {n} samples"):
        cluster_table(frame, labels[:-1], matrix)
    with pytest.raises(ValueError, match=f"{n - 1} representations for {n} samples"):
        cluster_table(frame, labels, matrix[:-1])


def test_coherence_samples_members_beyond_the_limit(monkeypatch):
    """Past COHERENCE_SAMPLE members, the mean is over a subset of that many members, drawn
    with the seed."""
    module = importlib.import_module("sfc_plugin.behaviours.clustering")
    rng = np.random.default_rng(5)
    values = rng.standard_normal((12, 4))
    members = np.arange(12)
    assert coherence(values, members) == pytest.approx(own_coherence(values, members), abs=1e-5)
    monkeypatch.setattr(module, "COHERENCE_SAMPLE", 3)
    sim = own_angular(values, values)
    subsets = {s: (sim[np.ix_(s, s)].sum() - 3) / 6 for s in itertools.combinations(range(12), 3)}
    for seed in range(3):
        got = coherence(values, members, seed=seed)
        assert got == coherence(values, members, seed=seed)
        assert min(abs(got - v) for v in subsets.values()) < 1e-5
