"""Feature dashboards against brute-force scans of the same tokens on a tiny random model."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import make_random_sae, make_saes, make_tiny_model

from sfc_plugin.datasets.text import token_batches
from sfc_plugin.frontend import dashboards
from sfc_plugin.frontend.dashboards import (
    EDGES,
    ContextView,
    Dashboard,
    TokenEffect,
    build_feature_index,
    feature_dashboard,
    feature_index,
    index_key,
)
from sfc_plugin.models import cache_dir

TEXTS = [
    "The quick brown fox jumps over the lazy dog while farmers watch from the hill. "
    "Later the dog sleeps in the barn and the fox runs back into the dark forest. " * 2,
    "Rivers run to the sea, yet the sea is never full; the wind returns to its circuits "
    "and the sun rises over the mountains where shepherds count their sheep. " * 2,
    "In 1969 astronauts landed on the Moon; millions watched on television as Armstrong "
    "stepped onto the dusty surface and planted a flag near the lunar module. " * 2,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5 <script>\n" * 3,
]
HOOKS = [
    "blocks.0.attn.hook_v",  # not a residual-stream direction: no output tokens
    "blocks.0.hook_resid_post",
    "blocks.1.attn.hook_z",
    "blocks.1.hook_mlp_out",
]
OPTIONS = dict(context=16, max_tokens=150, k=5, window=(4, 2))  # 150 tokens: 10 rows of 15
BATCH = 3  # the last batch is cut short by max_tokens


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "sample.jsonl"
    path.write_text("".join(json.dumps({"text": t, "source": "test"}) + "\n" for t in TEXTS))
    return path


@pytest.fixture(scope="module")
def model(tokenizer):
    model = make_tiny_model("llama", tokenizer, seed=2)
    model.cfg.default_prepend_bos = True  # rows start with BOS, which the index must skip
    return model


@pytest.fixture(scope="module")
def saes(model):
    v = make_random_sae(HOOKS[0], 16, 24, seed=9)  # 2 key-value heads x d_head 8
    return {HOOKS[0]: v, **make_saes(model, HOOKS[1:], d_sae=24, seed=0)}


@pytest.fixture(scope="module")
def index(model, saes, sample):
    return build_feature_index(model, saes, sample, batch_size=BATCH, **OPTIONS)


@pytest.fixture(scope="module")
def brute(model, saes, index):
    """Feature activations ``[row, pos, d_sae]`` per hook over the same rows, computed plainly."""
    _, cache = model.run_with_cache(index.tokens, names_filter=HOOKS)
    with torch.no_grad():
        return {h: saes[h].encode(cache[h].reshape(*index.tokens.shape, -1)) for h in HOOKS}


def _directions(model, saes, hook):
    w_dec = saes[hook].W_dec.detach()
    if hook.endswith("hook_z"):
        w_o = model.blocks[1].attn.W_O.detach()
        return torch.einsum("fhd,hdm->fm", w_dec.reshape(-1, *w_o.shape[:2]), w_o)
    return w_dec


def test_rows_are_the_first_max_tokens_of_the_sample_with_bos(model, index):
    want = torch.cat(list(token_batches(model, TEXTS, 16, BATCH)))[:10]
    assert torch.equal(index.tokens, want)
    assert (index.tokens[:, 0] == model.tokenizer.bos_token_id).all()
    assert index.first == 1 and index.n_tokens == 150


def test_top_contexts_are_the_sorted_maxima_over_non_bos_positions(index, brute):
    checked = 0
    for hook, f in brute.items():
        for feature in range(f.shape[-1]):
            body = f[:, 1:, feature].flatten()
            want = body[body > 0].sort(descending=True).values[:5]
            got = index.top_contexts(hook, feature)
            assert [c.activation for c in got] == pytest.approx(want.tolist(), rel=1e-5)
            assert len({(c.row, c.pos) for c in got}) == len(got)
            for c in got:
                assert c.pos >= 1
                assert float(f[c.row, c.pos, feature]) == pytest.approx(c.activation, rel=1e-5)
            assert index.top_contexts(hook, feature, k=2) == got[:2]
            checked += len(got)
    assert checked > 100


def test_context_tokens_and_values_match_the_rows(model, index, brute):
    hook = "blocks.1.hook_mlp_out"
    f = brute[hook]
    for feature in range(6):
        for rank, (_, row, pos) in enumerate(index.top_contexts(hook, feature)):
            lo, hi = max(1, pos - 4), min(15, pos + 2)
            want = model.to_str_tokens(index.tokens[row, lo : hi + 1])
            assert index.context_tokens(row, pos) == want
            values = index.context_values(hook, feature, rank)
            assert values == pytest.approx(f[row, lo : hi + 1, feature].tolist(), abs=2e-3)
            assert index.context_values(hook, feature, rank, window=(1, 0)) == pytest.approx(
                f[row, max(1, pos - 1) : pos + 1, feature].tolist(), abs=2e-3
            )


def test_histograms_count_the_firing_positions_per_log_bin(index, brute):
    for hook, f in brute.items():
        body = f[:, 1:].reshape(-1, f.shape[-1])
        assert torch.equal(index.firing_counts(hook), (body > 0).sum(0).int())
        for feature in range(body.shape[1]):
            counts, edges = index.histogram(hook, feature)
            values = body[:, feature][body[:, feature] > 0].numpy()
            bins = np.searchsorted(edges.numpy(), values, side="right")
            assert counts.tolist() == np.bincount(bins, minlength=len(EDGES) + 1).tolist()
            assert int(counts.sum()) == int((body[:, feature] > 0).sum())


def test_output_tokens_are_the_extremes_of_w_dec_times_w_u(model, saes, index):
    assert index.output_tokens(HOOKS[0], 0) == ([], [])
    for hook in HOOKS[1:]:
        logits = _directions(model, saes, hook) @ model.W_U.detach()
        for feature in range(logits.shape[0]):
            promoted, suppressed = index.output_tokens(hook, feature)
            top, bottom = logits[feature].topk(5), logits[feature].topk(5, largest=False)
            assert [e.id for e in promoted] == top.indices.tolist()
            assert [e.id for e in suppressed] == bottom.indices.tolist()
            assert [e.value for e in promoted] == pytest.approx(top.values.tolist(), rel=1e-4)
            assert [e.token for e in suppressed] == model.to_str_tokens(bottom.indices)
        assert len(index.output_tokens(hook, 0, k=2)[0]) == 2


def _same(a, b) -> None:
    assert torch.equal(a.tokens, b.tokens) and a.vocab == b.vocab and a.sites == b.sites
    for site in a.sites:
        for name, value in vars(a.stats[site]).items():
            torch.testing.assert_close(
                value, getattr(b.stats[site], name), rtol=0, atol=0, equal_nan=True
            )


def test_index_is_cached_on_disk_and_keyed_on_the_sae_set(model, saes, sample, monkeypatch):
    first = feature_index(saes, model, sample=sample, batch_size=BATCH, **OPTIONS)
    assert first.path.parent == cache_dir() / "dashboards"

    def fail(*args, **kwargs):
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(dashboards, "build_feature_index", fail)
    again = feature_index(saes, model, sample=sample, **OPTIONS)
    _same(first, again)
    _same(first, feature_index(saes, sample=sample, **OPTIONS))  # no model needed now
    assert again.path == first.path

    other = {**saes, HOOKS[1]: make_random_sae(HOOKS[1], 32, 24, seed=7)}  # one SAE differs
    assert index_key(other, "tiny", sample, **OPTIONS) != first.path.name
    assert index_key(saes, "tiny", sample, **{**OPTIONS, "k": 4}) != first.path.name
    with pytest.raises(AssertionError, match="rebuilt"):  # not in the cache: it is built
        feature_index(other, model, sample=sample, **OPTIONS)
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name]


def test_an_interrupted_build_leaves_no_entry_and_a_later_call_builds_it(
    model, sample, monkeypatch
):
    saes = make_saes(model, HOOKS[1:2], d_sae=8, seed=5)
    real = dashboards.build_feature_index

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(dashboards, "build_feature_index", interrupted)
    with pytest.raises(KeyboardInterrupt):
        feature_index(saes, model, sample=sample, **OPTIONS)
    key = index_key(saes, "tiny", sample, **OPTIONS)
    assert not list((cache_dir() / "dashboards").glob(f"*{key}*"))
    monkeypatch.setattr(dashboards, "build_feature_index", real)
    assert feature_index(saes, model, sample=sample, **OPTIONS).path.name == key


def test_an_unknown_model_must_be_passed(model, sample):
    saes = make_saes(model, HOOKS[1:2], d_sae=8, seed=6)  # metadata model_name "tiny"
    with pytest.raises(ValueError, match="pass model="):
        feature_dashboard(saes, HOOKS[1], 0, sample=sample, **OPTIONS)


def test_dashboard_html_is_offline_and_shows_the_contexts(model, saes, sample, index):
    hook = HOOKS[1]
    feature = int(index.firing_counts(hook).argmax())
    dash = feature_dashboard(saes, hook, feature, model, sample=sample, n_contexts=3, **OPTIONS)
    assert [c.activation for c in dash.contexts] == pytest.approx(
        [c.activation for c in index.top_contexts(hook, feature, 3)]
    )
    page = dash.to_html()
    for c in dash.contexts:
        assert c.tokens[c.focus] == index.context_tokens(c.row, c.pos, (0, 0))[0]
        for token in c.tokens:
            if token.strip().isalpha():
                assert json.dumps(token) in page
    assert page.count("var CircuitsVis=") == 1  # the bundle, inlined once
    assert page.count("CircuitsVis.render(") == 3
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert not re.search(r"""(import|from)\s*["']https?:""", page)
    assert "unpkg" not in page and "sourceMappingURL" not in page
    assert len(dash.to_html(bundle=False)) < 100_000
    assert dash.to_html(page=True).startswith("<!DOCTYPE html>")
    uuid = re.compile(r"circuits-vis-[0-9a-f-]+")
    assert uuid.sub("", dash._repr_html_()) == uuid.sub("", page)

    data = json.loads(json.dumps(dash.to_dict()))
    assert data["node"] == f"{hook}/f{feature}"
    assert data["fired"] == int(index.firing_counts(hook)[feature])
    assert data["firing_rate"] == pytest.approx(data["fired"] / 150)
    assert data["contexts"][0]["activation"] == data["max_activation"]
    assert len(data["promoted"]) == 5 and set(data["promoted"][0]) == {"token", "id", "value"}
    assert math.isclose(sum(data["histogram"]), data["fired"])


def test_tokens_are_escaped_in_the_html():
    view = ContextView(2.0, 0, 1, ["<script>", "</script>", "a\nb"], [0.5, 2.0, 1.0], 1)
    dash = Dashboard("blocks.0.hook_resid_post", 3, 10, 2, [view], [0] * 62, EDGES.tolist(), [], [])
    body = dash.to_html(bundle=False)
    assert "<script>" not in body and body.count("</script>") == 1  # CircuitsVis' own
    assert "&lt;/script&gt;" in body and json.dumps("a\u21b5b") in body  # newline shown as ↵


def test_the_label_is_the_most_shared_top_token_else_the_promoted_one():
    def view(tokens, focus, activation=1.0):
        return ContextView(activation, 0, focus, tokens, [0.0] * len(tokens), focus)

    views = [view([" the", " boys"], 1, 3.0), view([" a", " does"], 1), view([" boys", "x"], 0)]
    promoted = [TokenEffect(" are", 7, 0.9)]
    dash = Dashboard(
        "blocks.0.hook_resid_post", 3, 10, 3, views, [0] * 62, EDGES.tolist(), promoted, []
    )
    assert dash.label == "boys" and dash.to_dict()["label"] == "boys"
    tie = Dashboard("h", 0, 10, 2, views[1:2] + views[:1], [0] * 62, EDGES.tolist(), [], [])
    assert tie.label == "does"  # the stronger context first
    newline = Dashboard("h", 0, 10, 1, [view(["a", "\n"], 1)], [0] * 62, EDGES.tolist(), [], [])
    assert newline.label == "\u21b5"
    silent = Dashboard("h", 0, 10, 0, [], [0] * 62, EDGES.tolist(), promoted, [])
    assert silent.label == "\u2192are"
    assert Dashboard("h", 0, 10, 0, [], [0] * 62, EDGES.tolist(), [], []).label == ""


def test_without_bos_every_position_counts(tokenizer, sample):
    model = make_tiny_model("sequential", tokenizer, seed=3)  # prepends no BOS
    saes = make_saes(model, HOOKS[1:2], d_sae=16, seed=4)
    index = build_feature_index(model, saes, sample, **OPTIONS)
    assert index.first == 0 and index.n_tokens == 160
    _, cache = model.run_with_cache(index.tokens, names_filter=HOOKS[1])
    with torch.no_grad():
        f = saes[HOOKS[1]].encode(cache[HOOKS[1]]).reshape(-1, 16)
    for feature in range(16):
        want = f[:, feature][f[:, feature] > 0].sort(descending=True).values[:5]
        got = [c.activation for c in index.top_contexts(HOOKS[1], feature)]
        assert got == pytest.approx(want.tolist(), rel=1e-5)
