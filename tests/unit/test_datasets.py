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
