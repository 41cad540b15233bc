"""The Ray engine of behaviours.cluster_circuits on a local Ray cluster (``ray.init(num_cpus=2)``
in a fixture; Ray's ``local_mode`` no longer exists): each cluster's circuit and scores equal
the local engine's, and a rerun on Ray skips the clusters already written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_saes, make_tiny_model

from sfc_plugin.behaviours import CircuitSettings, cluster_circuits, load_cluster_circuit, samples

ray = pytest.importorskip("ray")

TEXTS = [
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14",
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "a b c d e f g h i j k l m n o p",
]
SETTINGS = CircuitSettings(node_threshold=0.05, n_examples=5)


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_equals_local(ray_cluster, tokenizer, tmp_path):
    model = make_tiny_model("parallel", tokenizer)
    saes = make_saes(model, ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"], d_sae=16)
    found = samples(model, TEXTS, loss_threshold=100, min_context=4, max_context=10, progress=False)
    labels = np.array(found.document)
    local = cluster_circuits(
        model, saes, found, labels, tmp_path / "local", settings=SETTINGS, progress=False
    )
    remote = cluster_circuits(
        model,
        saes,
        found,
        labels,
        tmp_path / "ray",
        settings=SETTINGS,
        engine="ray",
        max_in_flight=2,
        progress=False,
    )
    columns = ["cluster", "size", "n_train", "n_test", "n_nodes", "n_edges", "circuit_file"]
    pd.testing.assert_frame_equal(local[columns], remote[columns])
    np.testing.assert_allclose(remote.faithfulness, local.faithfulness, atol=1e-5)
    for c in local.cluster:
        a, b = (
            load_cluster_circuit(tmp_path / "local", c),
            load_cluster_circuit(tmp_path / "ray", c),
        )
        pd.testing.assert_frame_equal(a.nodes, b.nodes, atol=1e-5)
    (tmp_path / "ray" / "cluster_00001.scores.json").unlink()
    again = cluster_circuits(
        model, saes, found, labels, tmp_path / "ray", settings=SETTINGS, engine="ray"
    )
    pd.testing.assert_frame_equal(again[columns], remote[columns])
