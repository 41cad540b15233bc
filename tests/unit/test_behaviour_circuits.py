"""Per-cluster circuits (behaviours.circuits) and the pipeline (behaviours.pipeline) on tiny
random models: each cluster's circuit is exactly ``discover_circuit`` + ``faithfulness`` on
its split, finished clusters are not rerun, and bad input is named."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_saes, make_tiny_model

from sfc_plugin.behaviours import (
    BehaviourSettings,
    CircuitSettings,
    cluster_circuits,
    cluster_jobs,
    find_behaviours,
    load_cluster_circuit,
    purity,
    samples,
)
from sfc_plugin.circuit import discover_circuit
from sfc_plugin.datasets.planted import GROUPS, planted_texts
from sfc_plugin.evaluation import faithfulness

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13",
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "a b c d e f g h i j k l m n o p",
    "January February March April May June July August",
]


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = make_tiny_model("sequential", tokenizer)
    saes = make_saes(model, ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"], d_sae=16)
    found = samples(model, TEXTS, loss_threshold=100, min_context=4, max_context=10, progress=False)
    labels = np.array(found.document)  # one cluster per text
    return model, saes, found, labels


SETTINGS = CircuitSettings(node_threshold=0.05, n_examples=6, held_out=0.5)


def test_each_cluster_is_discover_circuit_on_its_split(setup, tmp_path):
    model, saes, found, labels = setup
    table = cluster_circuits(
        model, saes, found, labels, tmp_path, settings=SETTINGS, progress=False
    )
    jobs = {j.cluster: j for j in cluster_jobs(found, labels, SETTINGS)}
    assert list(table.cluster) == list(jobs) and len(table) == len(TEXTS)
    for row in table.itertuples():
        job = jobs[row.cluster]
        members = set(np.flatnonzero(labels == row.cluster))
        rows = [{"prefix": found.context[i], "answer": found.answer[i]} for i in members]
        assert all(r in rows for r in job.train + job.test)
        assert not [r for r in job.train if r in job.test]
        assert len(job.train) == min(6, len(members) - len(members) // 2)
        expected = discover_circuit(
            model,
            saes,
            job.train,
            method="atp",
            node_threshold=0.05,
            ablation="zero",
            aggregation="sum",
            progress=False,
        )
        got = load_cluster_circuit(tmp_path, row.cluster)
        pd.testing.assert_frame_equal(got.nodes, expected.nodes)
        assert row.n_nodes == len(expected.nodes)
        f = faithfulness(model, saes, expected, job.test, ablation="zero", progress=False)
        assert row.faithfulness == pytest.approx(f, abs=1e-6)


def test_finished_clusters_are_not_rerun(setup, tmp_path, monkeypatch):
    model, saes, found, labels = setup
    first = cluster_circuits(
        model, saes, found, labels, tmp_path, settings=SETTINGS, progress=False
    )
    (tmp_path / "cluster_00002.scores.json").unlink()
    import sfc_plugin.behaviours.circuits as circuits

    ran = []
    real = circuits.cluster_circuit

    def counting(model, saes, job, settings, progress=False):
        ran.append(job.cluster)
        return real(model, saes, job, settings, progress)

    monkeypatch.setattr(circuits, "cluster_circuit", counting)
    again = cluster_circuits(
        model, saes, found, labels, tmp_path, settings=SETTINGS, progress=False
    )
    assert ran == [2]
    pd.testing.assert_frame_equal(
        first.drop(columns="circuit_seconds"), again.drop(columns="circuit_seconds")
    )
    other = CircuitSettings(node_threshold=0.2, n_examples=6)
    with pytest.raises(ValueError, match="node_threshold"):
        cluster_circuits(model, saes, found, labels, tmp_path, settings=other, progress=False)


def test_bad_input_is_named(setup, tmp_path, monkeypatch):
    model, saes, found, labels = setup
    one = labels.copy()
    one[0] = 99  # a cluster of one sample
    with pytest.warns(UserWarning, match=r"clusters \[99\] have one sample"):
        jobs = cluster_jobs(found, one, SETTINGS)
    assert 99 not in [j.cluster for j in jobs]
    with pytest.raises(ValueError, match="cluster 7 has no samples"):
        cluster_jobs(found, labels, SETTINGS, clusters=[7])
    with pytest.raises(ValueError, match="3 labels for"):
        cluster_jobs(found, labels[:3], SETTINGS)
    with pytest.raises(ValueError, match="engine must be"):
        cluster_circuits(model, saes, found, labels, tmp_path, engine="dask")  # type: ignore[arg-type]
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(
        ImportError, match=r"engine='ray' needs Ray: pip install 'sfc_plugin\[ray\]'"
    ):
        cluster_circuits(
            model, saes, found, labels, tmp_path / "r", engine="ray", settings=SETTINGS
        )


def test_pipeline_recovers_planted_groups_and_resumes(tokenizer, tmp_path):
    """Planted behaviours on a tiny random model: the clusters of dense activations follow
    the texts' groups; the page links every circuit; a rerun reads every stage back."""
    model = make_tiny_model("llama", tokenizer)
    saes = make_saes(model, ["blocks.1.hook_resid_post"], d_sae=16)
    rows = planted_texts(4)
    settings = BehaviourSettings(
        loss_threshold=100,
        min_context=8,
        max_context=24,
        n_samples=400,
        representation="activations",
        positions="sum",
        k=len(GROUPS),
        n_circuits=2,
        circuit=CircuitSettings(node_threshold=0.05, n_examples=4),
    )
    result = find_behaviours(model, saes, rows, out=tmp_path, settings=settings, progress=False)
    truth = [rows[d]["group"] for d in result.samples.document]
    # A random model has no behaviours, only token statistics: its clusters follow the groups
    # far better than chance, not perfectly (the embedded model's check is in integration).
    rng = np.random.default_rng(0)
    chance = np.mean([purity(rng.permutation(result.clustering.labels), truth) for _ in range(20)])
    assert purity(result.clustering.labels, truth) > chance + 0.25
    assert result.clusters["size"].sum() == len(result.samples)
    assert result.clusters.n_nodes.notna().sum() == 2
    page = result.page.read_text()
    for name in result.clusters.circuit_file.dropna():
        html = name.replace(".json", ".html")
        assert (tmp_path / f"k{len(GROUPS)}" / "circuits" / html).exists()
        assert f"circuits/{html}" in page
    stored = json.loads((tmp_path / f"k{len(GROUPS)}" / "clusters.json").read_text())
    assert stored["clustering"]["labels"] == result.clustering.labels.tolist()
    again = find_behaviours(model, saes, rows, out=tmp_path, settings=settings, progress=False)
    assert again.clustering.labels.tolist() == result.clustering.labels.tolist()
    assert again.timings["circuits"] < result.timings["circuits"]
    top = int(result.clusters.cluster[result.clusters.n_nodes.notna()].iloc[0])
    assert len(result.circuit(top).nodes) == result.clusters.n_nodes[0]
