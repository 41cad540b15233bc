"""Behaviour samples (sfc_plugin.behaviours.sampling) against a brute force computed here:
every target of every document enumerated from the documented window rule, its loss read off
its own unpadded forward on BOS (if any) + its context alone, and the filters (loss,
induction, round trip) written out from their definitions."""

from __future__ import annotations

import importlib
import json
import random
import statistics
import warnings
from collections import Counter

import datasets
import pandas as pd
import pytest
import torch
from conftest import make_tiny_model

from sfc_plugin.behaviours.sampling import is_induction, samples, samples_per_100k_tokens

# the package exports the function ``samples``, which shadows the module's name
samples_module = importlib.import_module("sfc_plugin.behaviours.sampling")

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "the cat sat on the mat and the cat sat on the mat again, then the cat sat on the mat.",
    "a b a b a b c d c d c d e f e f e f g h g h",
    "Café crème, naïve façade: über-résumé ☕️ déjà vu — 東京 is far; 北京 is farther.",
    "def f(x):\n    return x + 1\n\ndef g(x):\n    return x + 2\n",
    "One two three four five six seven eight nine ten eleven twelve thirteen fourteen.",
]
MIN, MAX = 3, 10


def run(model, texts=TEXTS, **kw):
    kw.setdefault("min_context", MIN)
    kw.setdefault("max_context", MAX)
    kw.setdefault("progress", False)
    return samples(model, texts, **kw)


def own_induction(context, answer, n):
    """The n-gram (last n-1 context tokens, answer) occurs as a contiguous run of the context."""
    if n == 0 or len(context) < n:
        return False
    gram = list(context[len(context) - (n - 1) :]) + [answer]
    return any(list(context[i : i + n]) == gram for i in range(len(context) - n + 1))


def own_round_trip(model, bos, context, answer):
    tok = model.tokenizer
    text = tok.decode(context)
    answer_text = tok.decode([answer])
    return model.to_tokens(text, truncate=False)[0].tolist() == bos + context and model.to_tokens(
        answer_text, prepend_bos=False
    )[0].tolist() == [answer]


def brute_force(model, texts, min_context, max_context):
    """One dict per target: window starts re-derived from the documented rule (window ``s``
    holds the targets ``s + min .. s + max``, windows tile the document from 0 so each token
    is a target once), the loss from a forward on BOS + the context alone."""
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    step = max_context - min_context + 1
    out = []
    for d, text in enumerate(texts):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == model.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()
        for t in range(min_context, len(ids)):
            s = (t - min_context) // step * step
            context, answer = ids[s:t], ids[t]
            assert min_context <= len(context) <= max_context
            with torch.no_grad():
                logits = model(torch.tensor([bos + context]))
            loss = -float(logits[0, -1].log_softmax(-1)[answer])
            out.append(
                dict(
                    document=d,
                    position=t,
                    context_tokens=context,
                    answer_token=answer,
                    loss=loss,
                    round_trip=own_round_trip(model, bos, context, answer),
                    bigram=own_induction(context, answer, 2),
                    trigram=own_induction(context, answer, 3),
                )
            )
    return out


@pytest.fixture(
    scope="module", params=[("sequential", False), ("llama", True)], ids=["nobos", "bos"]
)
def setup(request, tokenizer):
    family, bos = request.param
    model = make_tiny_model(family, tokenizer, seed=11)
    model.cfg.default_prepend_bos = bos
    assert tokenizer.bos_token_id is not None
    truth = brute_force(model, TEXTS, MIN, MAX)
    return model, truth


@pytest.mark.parametrize("induction", ["bigram", "trigram", "none"])
def test_kept_samples_equal_the_brute_force(setup, induction):
    model, truth = setup
    threshold = statistics.median(t["loss"] for t in truth)
    low = [t for t in truth if t["loss"] < threshold]
    drop = {"bigram": "bigram", "trigram": "trigram", "none": None}[induction]
    not_induction = [t for t in low if not (drop and t[drop])]
    want = [t for t in not_induction if t["round_trip"]]
    # every filter does something here, so a missing filter would be seen
    assert 0 < len(want) < len(low) < len(truth)
    if drop:
        assert len(not_induction) < len(low)
    assert len(want) < len(not_induction)

    frame = run(model, loss_threshold=threshold, induction=induction, batch_size=3)
    assert list(frame.columns) == samples_module.SAMPLE_COLUMNS
    assert list(frame["sample"]) == list(range(len(frame)))
    got = {(r.document, r.position): r for r in frame.itertuples()}
    assert len(got) == len(frame)
    assert set(got) == {(t["document"], t["position"]) for t in want}
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    for t in want:
        r = got[t["document"], t["position"]]
        assert list(r.context_tokens) == t["context_tokens"]
        assert r.answer_token == t["answer_token"]
        assert r.n_context == len(t["context_tokens"])
        assert r.context == model.tokenizer.decode(t["context_tokens"])
        assert r.answer == model.tokenizer.decode([t["answer_token"]])
        assert abs(r.loss - t["loss"]) < 1e-4
        # the kept row, as text, is the sample: its own forward gives its loss
        with torch.no_grad():
            logits = model(model.to_tokens(r.context))
        assert model.to_tokens(r.context)[0].tolist() == bos + t["context_tokens"]
        assert abs(-float(logits[0, -1].log_softmax(-1)[r.answer_token]) - r.loss) < 1e-4
    # documents in order, positions increasing within one
    assert list(zip(frame.document, frame.position)) == sorted(zip(frame.document, frame.position))
    counts = frame.attrs["counts"]
    assert counts == dict(
        documents=len(TEXTS),
        short_documents=0,
        targets=len(truth),
        low_loss=len(low),
        induction=len(low) - len(not_induction),
        not_round_trip=len(not_induction) - len(want),
    )
    n_tokens = [len(model.to_tokens(t, prepend_bos=False, truncate=False)[0]) for t in TEXTS]
    assert counts["targets"] == sum(n - MIN for n in n_tokens)  # each token a target once


def test_another_window_shape_and_batch_size(setup):
    """Windows of one context length (min == max) and one window per forward."""
    model, _ = setup
    truth = brute_force(model, TEXTS[:2], 5, 5)
    threshold = statistics.median(t["loss"] for t in truth)
    want = {
        (t["document"], t["position"])
        for t in truth
        if t["loss"] < threshold and not t["bigram"] and t["round_trip"]
    }
    frame = run(
        model, TEXTS[:2], min_context=5, max_context=5, loss_threshold=threshold, batch_size=1
    )
    assert want and set(zip(frame.document, frame.position)) == want
    assert (frame.n_context == 5).all()


def test_is_induction_definitions():
    # bigram: (last context token, answer) already in the context
    assert is_induction([5, 7, 9, 5], 7, "bigram")
    assert not is_induction([5, 7, 9, 5], 9, "bigram")
    assert is_induction([7, 7], 7, "bigram")
    assert not is_induction([5, 7], 7, "bigram")
    assert not is_induction([5], 5, "bigram")
    # trigram: (two last context tokens, answer)
    assert is_induction([1, 2, 3, 1, 2], 3, "trigram")
    assert not is_induction([4, 2, 3, 1, 2], 3, "trigram")
    assert is_induction([4, 2, 3, 1, 2], 3, "bigram")  # the bigram (2, 3) is there
    assert is_induction([3, 3, 3], 3, "trigram")
    assert not is_induction([3, 3], 3, "trigram")
    # none
    assert not is_induction([1, 2, 3, 1, 2], 3, "none")
    assert not is_induction([7, 7], 7, "none")
    # against the definition on random lists over a small vocabulary
    rng = random.Random(0)
    hits = Counter()
    for _ in range(2000):
        context = [rng.randrange(4) for _ in range(rng.randrange(1, 9))]
        answer = rng.randrange(4)
        for rule, n in (("bigram", 2), ("trigram", 3), ("none", 0)):
            want = own_induction(context, answer, n)
            assert is_induction(context, answer, rule) == want, (context, answer, rule)
            hits[rule, want] += 1
    assert hits["bigram", True] and hits["bigram", False] and hits["trigram", True]


def test_one_per_document_and_max_samples(setup):
    model, truth = setup
    threshold = statistics.median(t["loss"] for t in truth)
    full = run(model, loss_threshold=threshold)
    one = run(model, loss_threshold=threshold, one_per_document=True, seed=0)
    assert one.document.is_unique
    assert set(one.document) == set(full.document)  # one from every document that has any
    key = ["document", "position", "context", "answer", "answer_token", "loss"]
    rows = {tuple(r) for r in full[key].itertuples(index=False)}
    assert all(tuple(r) in rows for r in one[key].itertuples(index=False))
    again = run(model, loss_threshold=threshold, one_per_document=True, seed=0)
    pd.testing.assert_frame_equal(one, again)
    picks = {
        tuple(run(model, loss_threshold=threshold, one_per_document=True, seed=s).position)
        for s in range(4)
    }
    assert len(picks) > 1, "the seed does not change the draw"

    per_doc = full.groupby("document").size()
    n = int(per_doc.iloc[0]) + 1  # more than the first document gives
    assert n < len(full)
    capped = run(model, loss_threshold=threshold, max_samples=n, documents_per_shard=1)
    pd.testing.assert_frame_equal(capped, full.head(n), check_like=False)
    # stops after the shard (here: document) that reaches n samples
    reached = int((per_doc.cumsum() >= n).idxmax())
    assert capped.attrs["counts"]["documents"] == reached + 1 < len(TEXTS)
    # the rate counts every sample of the scanned documents, not the max_samples cut
    scanned = full[full.document <= reached]
    targets = capped.attrs["counts"]["targets"]
    assert len(scanned) > n
    assert samples_per_100k_tokens(capped) == pytest.approx(1e5 * len(scanned) / targets)
    assert samples_per_100k_tokens(full) == pytest.approx(
        1e5 * len(full) / full.attrs["counts"]["targets"]
    )


def test_shards_resume_and_refuse_other_settings(setup, tmp_path, monkeypatch):
    model, truth = setup
    threshold = statistics.median(t["loss"] for t in truth)
    kw = dict(loss_threshold=threshold, out=tmp_path, documents_per_shard=2)
    first = run(model, **kw)
    shards = sorted(p.name for p in tmp_path.glob("shard_*.json"))
    assert shards == ["shard_00000.json", "shard_00001.json", "shard_00002.json"]
    pd.testing.assert_frame_equal(first, run(model, loss_threshold=threshold))
    middle = tmp_path / "shard_00001.json"
    content = middle.read_bytes()
    middle.unlink()

    calls = []
    real = samples_module._shard_samples

    def counted(model, docs, first_doc, *a, **k):
        calls.append(first_doc)
        return real(model, docs, first_doc, *a, **k)

    monkeypatch.setattr(samples_module, "_shard_samples", counted)
    again = run(model, **kw)
    assert calls == [2]  # only the missing shard was recomputed
    pd.testing.assert_frame_equal(again, first)
    assert again.attrs["counts"] == first.attrs["counts"]
    assert middle.read_bytes() == content
    calls.clear()
    pd.testing.assert_frame_equal(run(model, **kw), first)
    assert calls == []

    with pytest.raises(ValueError, match="loss_threshold"):
        run(model, **{**kw, "loss_threshold": threshold / 2})
    with pytest.raises(ValueError, match="documents_per_shard"):
        run(model, **{**kw, "documents_per_shard": 3})
    with pytest.raises(ValueError, match="other texts"):
        run(model, TEXTS[::-1], **kw)

    (tmp_path / "shard_00000.json").write_text('{"schema": "sfc_plugin.behaviour_sam')
    with pytest.raises(ValueError, match=r"shard_00000\.json.*not a complete samples shard"):
        run(model, **kw)
    (tmp_path / "shard_00000.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(ValueError, match=r"shard_00000\.json.*not a sfc_plugin samples shard"):
        run(model, **kw)


def test_bad_input(setup, tmp_path):
    model, truth = setup
    threshold = statistics.median(t["loss"] for t in truth)
    short = ["hi", "a b"]
    assert all(len(model.to_tokens(t, prepend_bos=False)[0]) <= MIN for t in short)
    with pytest.raises(ValueError, match="min_context"):
        run(model, short, loss_threshold=threshold)
    with pytest.warns(UserWarning, match=rf"2 of {len(TEXTS) + 2} texts .*min_context={MIN}"):
        frame = run(model, short + TEXTS, loss_threshold=threshold)
    # the short texts count as documents 0 and 1
    base = run(model, loss_threshold=threshold)
    assert list(frame.document) == [d + 2 for d in base.document]
    assert frame.attrs["counts"]["short_documents"] == 2
    low = min(t["loss"] for t in truth)
    with pytest.raises(ValueError, match=f"loss_threshold={low / 2}"):
        run(model, loss_threshold=low / 2)
    with pytest.raises(ValueError, match="no texts"):
        run(model, [], loss_threshold=threshold)
    for bad in (dict(min_context=0), dict(min_context=5, max_context=4)):
        with pytest.raises(ValueError, match="min_context"):
            run(model, loss_threshold=threshold, **bad)
    with pytest.raises(ValueError, match="quadgram"):
        run(model, loss_threshold=threshold, induction="quadgram")
    for bad in (0, -1.0, "0.1"):
        with pytest.raises(ValueError, match="loss_threshold"):
            run(model, loss_threshold=bad)
    with pytest.raises(ValueError, match="text 1"):
        run(model, [TEXTS[0], {"body": TEXTS[1]}], loss_threshold=threshold)

    # texts as {"text": ...} rows and as a JSONL path give the same samples
    as_dicts = run(
        model, [{"text": t, "id": i} for i, t in enumerate(TEXTS)], loss_threshold=threshold
    )
    pd.testing.assert_frame_equal(as_dicts, base)
    hf = datasets.Dataset.from_list([{"text": t} for t in TEXTS])  # as from the hub
    pd.testing.assert_frame_equal(run(model, hf, loss_threshold=threshold), base)
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    for source in (path, str(path)):
        pd.testing.assert_frame_equal(run(model, source, loss_threshold=threshold), base)
    with pytest.raises(FileNotFoundError):
        run(model, tmp_path / "missing.jsonl", loss_threshold=threshold)
    with warnings.catch_warnings():
        # no short-text warning when there is none
        warnings.filterwarnings("error", message=".*min_context")
        run(model, loss_threshold=threshold)
