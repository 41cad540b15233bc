"""Planted behaviours on the embedded model: samples of texts that each exercise one
behaviour (counting, the alphabet, closing brackets, ...) cluster by behaviour."""

from __future__ import annotations

import pytest

from sfc_plugin.dictionaries import load_saes
from sfc_plugin.experiments.behaviours import planted_purity

pytestmark = pytest.mark.real_model


def test_planted_behaviours_are_recovered(real_model):
    saes = load_saes("smollm2-135m-sfc")
    table = planted_purity(real_model, saes, n_per_group=3, kinds=[("sae_activations", "sum")])
    sizes = table.attrs["group_sizes"]
    assert len(sizes) >= 3 and min(sizes.values()) >= 5, sizes
    assert table.purity[0] >= 0.9, table
