"""The SAEs and transcoders bundled for the embedded model: loadable by name offline,
transparent when attached, and as good as the recorded quality table says (a corrupted or
swapped file fails)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from sfc_plugin.datasets.text import read_texts
from sfc_plugin.dictionaries import COMPANION_RELEASES, load_saes, registered_releases
from sfc_plugin.dictionaries.quality import sae_quality
from sfc_plugin.sites import attach_saes

pytestmark = pytest.mark.real_model

DOCS = Path(__file__).parents[2] / "docs"
# release -> (quality table, the hook each dictionary reads, given the one it writes)
RELEASES = {
    "smollm2-135m-sfc": (DOCS / "sae_quality.csv", lambda hook: hook),
    "smollm2-135m-sfc-attn": (DOCS / "attn_sae_quality.csv", lambda hook: hook),
    "smollm2-135m-sfc-transcoders": (
        DOCS / "transcoder_quality.csv",
        lambda hook: hook.replace("hook_mlp_out", "ln2.hook_normalized"),
    ),
}


@pytest.fixture(scope="module", params=list(RELEASES))
def release(request):
    return request.param


@pytest.fixture(scope="module")
def saes(real_model, release):
    return load_saes(release, device=real_model.cfg.device)


def test_every_companion_release_is_tested():
    assert set(RELEASES) == set(COMPANION_RELEASES)


def test_every_bundled_sae_loads_by_name_offline(saes, real_model, release):
    ids = sorted(p.name for p in registered_releases()[release].iterdir())
    assert sorted(saes) == ids and len(ids) >= 30
    reads = RELEASES[release][1]
    for hook, sae in saes.items():
        assert hook in real_model.hook_dict
        assert sae.cfg.metadata.hook_name == reads(hook)
        assert sae.W_dec.dtype == torch.float32  # stored in bf16, loaded in float32
        assert sae.cfg.metadata.release == release and sae.cfg.metadata.sae_id == hook
    some = load_saes(release, sae_ids=ids[:2])
    assert list(some) == ids[:2]


def test_attaching_all_bundled_saes_leaves_logits_unchanged(saes, real_model):
    tokens = real_model.to_tokens(["The keys to the cabinet are on the table."])
    with torch.no_grad():
        plain = real_model(tokens)
        with attach_saes(real_model, saes, grad=False):
            spliced = real_model(tokens)
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=0)


def test_variance_explained_matches_the_recorded_table(saes, real_model, release):
    """On a fixed slice of the bundled held-out sample, each SAE's variance explained is at
    least the recorded value (measured on 100k tokens) minus 0.1."""
    recorded = pd.read_csv(RELEASES[release][0]).set_index("hook_name").variance_explained
    got = (
        sae_quality(real_model, saes, read_texts(limit=12), max_tokens=2048, ce_tokens=0)
        .set_index("hook_name")
        .variance_explained
    )
    assert set(got.index) == set(recorded.index)
    low = {
        h: (round(got[h], 3), round(recorded[h], 3))
        for h in got.index
        if got[h] < recorded[h] - 0.1
    }
    assert not low, f"variance explained below the recorded table: {low}"
