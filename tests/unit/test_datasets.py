"""The agreement datasets for the embedded model's tokenizer."""

from __future__ import annotations

import pytest

from sfc_plugin.data import read_dataset
from sfc_plugin.datasets import TASKS, agreement


@pytest.mark.parametrize("task", TASKS)
def test_pairs_are_single_token_equal_length_and_split_disjoint(task, tokenizer, tmp_path):
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    train = agreement(task, tokenizer, split="train")
    test = agreement(task, tokenizer, split="test")
    rows = train + test
    assert len(test) >= 10 and len(train) >= 3 * len(test) - 2
    length = len(ids(rows[0]["clean_prefix"]))
    for r in rows:
        assert len(ids(r["clean_answer"])) == 1 and len(ids(r["patch_answer"])) == 1
        assert len(ids(r["clean_prefix"])) == len(ids(r["patch_prefix"])) == length
        assert r["clean_answer"] != r["patch_answer"]
    # disjoint: no sentence (in either role) is in both splits
    sentences = lambda rs: {r["clean_prefix"] for r in rs} | {r["patch_prefix"] for r in rs}  # noqa: E731
    assert not sentences(train) & sentences(test)
    # both directions: half the clean inputs take each answer
    answers = [r["clean_answer"] for r in rows]
    assert answers.count(answers[0]) == len(rows) // 2
    # deterministic, seed-dependent, n is a prefix
    assert agreement(task, tokenizer, split="train") == train
    assert agreement(task, tokenizer, n=5) == train[:5]
    assert agreement(task, tokenizer, seed=1) != train
    # written and read back as JSONL pairs
    agreement(task, tokenizer, split="test", path=tmp_path / "t.jsonl")
    back = read_dataset(tmp_path / "t.jsonl")
    assert [ex.to_record() for ex in back.examples] == test


def test_bad_arguments_are_named(tokenizer):
    with pytest.raises(ValueError, match="task must be one of"):
        agreement("nested_rc", tokenizer)
    with pytest.raises(ValueError, match="split must be"):
        agreement("simple", tokenizer, split="dev")


def test_ioi_pairs_are_templatic_flip_the_answer_and_split_by_name_pair(tokenizer):
    from sfc_plugin.datasets import ioi

    rows = ioi(tokenizer, split="all")
    assert len(rows) > 100
    lengths = {
        len(tokenizer(r[k])["input_ids"]) for r in rows for k in ("clean_prefix", "patch_prefix")
    }
    assert len(lengths) == 1
    for r in rows[:50]:
        for k in ("clean_answer", "patch_answer"):
            assert len(tokenizer(r[k], add_special_tokens=False)["input_ids"]) == 1
        io, s = r["clean_answer"].strip(), r["patch_answer"].strip()
        assert r["clean_prefix"].endswith(f", {s} gave a " + r["clean_prefix"].split()[-2] + " to")
        assert r["patch_prefix"] == r["clean_prefix"].replace(f", {s} gave", f", {io} gave")
    pair = lambda r: frozenset((r["clean_answer"], r["patch_answer"]))  # noqa: E731
    train, test = ioi(tokenizer, split="train"), ioi(tokenizer, split="test")
    assert not {pair(r) for r in train} & {pair(r) for r in test}
    assert ioi(tokenizer, n=5, seed=1) == ioi(tokenizer, n=5, seed=1) != ioi(tokenizer, n=5)
    with pytest.raises(ValueError, match="split"):
        ioi(tokenizer, split="dev")


def test_contrast_words_are_the_answers_and_the_words_that_differ():
    from sfc_plugin.experiments.tracing import contrast_words

    row = {
        "clean_prefix": "The boy that the girls like",
        "patch_prefix": "The boys that the girls like",
        "clean_answer": " does",
        "patch_answer": " do",
    }
    rows = [row]
    assert contrast_words(rows) == {"boy", "boys", "does", "do"}
