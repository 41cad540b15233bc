"""The Bias in Bios data for SHIFT: splits, balance, determinism, the generated biographies'
content (profession from content words, gender from names and pronouns, no single template
slot giving either away) and reading local files in the hub schema."""

from __future__ import annotations

import collections
import importlib
import json
import math
import re

import pandas as pd
import pytest

import sfc_plugin as sfc
from sfc_plugin.datasets import bias_in_bios

bib = importlib.import_module("sfc_plugin.datasets.bias_in_bios")  # the module, not the function

PRONOUNS = re.compile(r"\b(he|she|his|her|him)\b", re.IGNORECASE)
ABBREVIATIONS = re.compile(r"\b(Dr|Mr|Ms|St)\.")


@pytest.fixture(scope="module", name="train")
def _train():
    return bias_in_bios("balanced", "train")


@pytest.fixture(scope="module", name="test")
def _test():
    return bias_in_bios("balanced", "test")


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.) (?=[A-Z])", ABBREVIATIONS.sub(r"\1", text))


def test_columns_sizes_and_exact_balance(train, test):
    assert sfc.datasets.bias_in_bios is bias_in_bios
    assert list(train.columns) == ["text", "profession", "gender", "group"]
    assert train["profession"].dtype == "int64" and train["gender"].dtype == "int64"
    assert list(train.index) == list(range(len(train)))
    for frame, size in [(train, 2000), (test, 500)]:
        counts = frame["group"].value_counts().to_dict()
        assert counts == dict.fromkeys(bib.GROUPS, size)
        expected = [
            f"{'female' if g else 'male'} {'nurse' if p else 'professor'}"
            for g, p in zip(frame["gender"], frame["profession"])
        ]
        assert list(frame["group"]) == expected
        assert frame["text"].is_unique
    # shuffled: not sorted by group
    assert train["group"].iloc[:100].nunique() == 4


def test_train_and_test_texts_are_disjoint(train, test):
    assert not set(train["text"]) & set(test["text"])


def test_deterministic_and_seed_only_reorders(train):
    again = bias_in_bios("balanced", "train")
    pd.testing.assert_frame_equal(train, again)
    # regenerated from scratch (not the cache): byte-identical texts
    fresh = bib._offline_group.__wrapped__("female nurse")
    assert fresh == bib._offline_group("female nurse")
    other = bias_in_bios("balanced", "train", seed=7)
    assert list(other["text"]) != list(train["text"])
    assert sorted(other["text"]) == sorted(train["text"])


def test_ambiguous_split_has_profession_equal_gender():
    frame = bias_in_bios("ambiguous", "train")
    assert set(frame["group"]) == {"male professor", "female nurse"}
    assert (frame["profession"] == frame["gender"]).all()
    assert frame["group"].value_counts().to_list() == [2000, 2000]


@pytest.mark.parametrize("group", bib.GROUPS)
def test_group_split(group, test):
    frame = bias_in_bios(group, "test")
    assert set(frame["group"]) == {group} and len(frame) == 500
    assert set(frame["text"]) == set(test.loc[test["group"] == group, "text"])


def test_n_rounds_down_keeping_balance():
    frame = bias_in_bios("balanced", n=10)
    assert len(frame) == 8 and frame["group"].value_counts().to_list() == [2, 2, 2, 2]
    assert len(bias_in_bios("ambiguous", n=5)) == 4
    assert len(bias_in_bios("male nurse", n=3)) == 3
    assert len(bias_in_bios("balanced", "test", n=10**6)) == 2000
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n must be"):
            bias_in_bios("balanced", n=bad)
    with pytest.raises(ValueError, match="fewer than the 4 groups"):
        bias_in_bios("balanced", n=3)


def test_bad_names_list_the_choices():
    with pytest.raises(ValueError, match="unknown split 'nurses'.*ambiguous.*balanced"):
        bias_in_bios("nurses")
    with pytest.raises(ValueError, match="unknown part 'dev'.*train.*test"):
        bias_in_bios("balanced", "dev")
    with pytest.raises(ValueError, match="unknown source 'hbu'.*offline.*hub"):
        bias_in_bios("balanced", source="hbu")


# ---------------------------------------------------------------------------------------------
# Content of the generated biographies


def test_bios_are_one_paragraph_of_2_to_5_sentences_of_40_to_120_words(train, test):
    for text in pd.concat([train, test])["text"]:
        assert 40 <= len(text.split()) <= 120, text
        assert 2 <= len(sentences(text)) <= 5, text
        assert "\n" not in text and "  " not in text and "{" not in text and "<" not in text
        assert not re.search(r"\ba [aeio]", text), text  # article agreement


def _naive_bayes_accuracy(train_texts, train_y, test_texts, test_y) -> float:
    """Bernoulli naive Bayes on word presence (plain counting, add-one smoothing), scoring the
    words present; accuracy on test."""

    def words(text):
        return set(re.findall(r"[a-z']+", text.lower()))

    docs = collections.Counter(train_y)
    counts = {y: collections.Counter() for y in docs}
    for text, y in zip(train_texts, train_y):
        counts[y].update(words(text))
    vocab = set(counts[0]) | set(counts[1])
    log_odds = {
        w: math.log((counts[1][w] + 1) / (docs[1] + 2))
        - math.log((counts[0][w] + 1) / (docs[0] + 2))
        for w in vocab
    }
    prior = math.log(docs[1] / docs[0])
    hits = 0
    for text, y in zip(test_texts, test_y):
        score = prior + sum(log_odds.get(w, 0.0) for w in words(text))
        hits += int(score > 0) == y
    return hits / len(test_y)


PROFESSION_WORDS = {"professor", "professors", "nurse", "nurses", "nursing"}


def _without(texts, words):
    return [" ".join(w for w in t.split() if w.lower().strip(",.'s") not in words) for t in texts]


def test_bag_of_words_recovers_profession_and_gender(train, test):
    acc = _naive_bayes_accuracy(
        train["text"], train["profession"], test["text"], test["profession"]
    )
    assert acc > 0.95
    # ... also without the words "professor" and "nurse": content is spread over the text
    acc = _naive_bayes_accuracy(
        _without(train["text"], PROFESSION_WORDS),
        train["profession"],
        _without(test["text"], PROFESSION_WORDS),
        test["profession"],
    )
    assert acc > 0.95
    assert (
        _naive_bayes_accuracy(train["text"], train["gender"], test["text"], test["gender"]) > 0.95
    )


def test_first_three_words_do_not_separate_profession(train, test):
    def head(texts):
        return [" ".join(t.split()[:3]) for t in texts]

    acc = _naive_bayes_accuracy(
        head(train["text"]), train["profession"], head(test["text"]), test["profession"]
    )
    assert acc < 0.85


@pytest.mark.parametrize("label", ["profession", "gender"])
def test_no_word_position_is_a_perfect_predictor(train, test, label):
    """For each of the first 20 word positions: predict the label by the majority label of the
    word seen there in train; never (near) perfect on test."""
    train_words = [t.split() for t in train["text"]]
    test_words = [t.split() for t in test["text"]]
    for pos in range(20):
        table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for words, y in zip(train_words, train[label]):
            table[words[pos]][y] += 1
        hits = 0
        for words, y in zip(test_words, test[label]):
            hits += words[pos] in table and table[words[pos]].most_common(1)[0][0] == y
        assert hits / len(test) < 0.9, (label, pos)


def _template_regex(template: str) -> re.Pattern:
    """A template of the module as a regex: slots match anything, [..] optional, <a|b> either."""
    out = []
    for token in re.split(r"(\{\w+\}|\[|\]|<|>|\|)", template):
        if token.startswith("{"):
            out.append(".+?")
        elif token in ("[", "<"):
            out.append("(?:")
        elif token == "]":
            out.append(")?")
        elif token == ">":
            out.append(")")
        elif token == "|":
            out.append("|")
        else:
            out.append(re.sub(r"\ba(?=\\ |$)", "an?", re.escape(token)))
    return re.compile("".join(out) + "$")


def test_many_opening_templates_in_use_and_many_sentences_name_no_profession(train):
    for profession, openings in [(0, bib.PROFESSOR_OPENINGS), (1, bib.NURSE_OPENINGS)]:
        patterns = [_template_regex(t) for t in openings]
        used = collections.Counter()
        texts = train.loc[train["profession"] == profession, "text"]
        for text in texts:
            protected = ABBREVIATIONS.sub(r"\1_", text)
            first = re.split(r"(?<=\.) (?=[A-Z])", protected)[0].replace("_", ".")
            matches = [i for i, p in enumerate(patterns) if p.match(first)]
            assert matches, first
            used[matches[0]] += 1
        assert len(used) >= 20
        assert max(used.values()) < 0.1 * len(texts)  # no template dominates
    all_sentences = [s for t in train["text"] for s in sentences(t)]
    keyword = re.compile(r"professor|nurs", re.IGNORECASE)
    assert sum(not keyword.search(s) for s in all_sentences) > 0.5 * len(all_sentences)
    first = [sentences(t)[0] for t in train["text"]]
    assert sum(not keyword.search(s) for s in first) > 0.3 * len(first)


def test_names_and_pronouns_vary(train):
    assert len(bib.MALE_NAMES) >= 40 and len(bib.FEMALE_NAMES) >= 40
    assert not set(bib.MALE_NAMES) & set(bib.FEMALE_NAMES)
    with_pronoun = [bool(PRONOUNS.search(t)) for t in train["text"]]
    assert 0.5 < sum(with_pronoun) / len(with_pronoun) < 1.0
    for gender, names in [(0, bib.MALE_NAMES), (1, bib.FEMALE_NAMES)]:
        texts = train.loc[train["gender"] == gender, "text"]
        firsts = {t.removeprefix("Dr. ").split()[0] for t in texts}
        assert len(firsts & set(names)) >= 40
        wrong = {"she", "her"} if gender == 0 else {"he", "his", "him"}
        assert not any(set(PRONOUNS.findall(t.lower())) & wrong for t in texts)


def test_offline_generation_is_fast():
    import time

    start = time.perf_counter()
    for group in bib.GROUPS:
        bib._offline_group.__wrapped__(group)
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------------------------------------
# Local files in the hub schema

HUB_ROWS = [
    {"hard_text": "She teaches chemistry.", "profession": 21, "gender": 1},
    {"hard_text": "He cares for patients.", "profession": 13, "gender": 0},
    {"hard_text": "He flies planes.", "profession": 25, "gender": 0},  # pilot: dropped
    {"hard_text": "She is a nurse.", "profession": 13, "gender": 1},
    {"hard_text": "He is a professor.", "profession": 21, "gender": 0},
    {"hard_text": "She writes code.", "profession": 24, "gender": 1},  # dropped
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_jsonl_and_parquet_map_to_our_columns(tmp_path):
    jsonl = _write_jsonl(tmp_path / "bios.jsonl", HUB_ROWS)
    parquet = tmp_path / "bios.parquet"
    pd.DataFrame(HUB_ROWS).to_parquet(parquet)
    expected = {
        ("She teaches chemistry.", 0, 1, "female professor"),
        ("He cares for patients.", 1, 0, "male nurse"),
        ("She is a nurse.", 1, 1, "female nurse"),
        ("He is a professor.", 0, 0, "male professor"),
    }
    for source in (jsonl, str(jsonl), parquet, {"train": parquet, "test": jsonl}):
        for part in ("train", "test"):
            frame = bias_in_bios("balanced", part, source=source)
            assert set(frame.itertuples(index=False, name=None)) == expected
            assert frame["profession"].dtype == "int64"
    ambiguous = bias_in_bios("ambiguous", source=jsonl)
    assert set(ambiguous["text"]) == {"He is a professor.", "She is a nurse."}


def test_local_file_truncates_groups_to_equal_counts(tmp_path):
    rows = [*HUB_ROWS, {"hard_text": "He lectures.", "profession": 21, "gender": 0}]
    path = _write_jsonl(tmp_path / "bios.jsonl", rows)
    assert len(bias_in_bios("balanced", source=path)) == 4
    assert len(bias_in_bios("male professor", source=path)) == 2
    with pytest.raises(ValueError, match="no rows of group"):
        bias_in_bios("balanced", source=_write_jsonl(tmp_path / "few.jsonl", HUB_ROWS[:2]))


def test_local_file_errors_name_the_file_field_and_row(tmp_path):
    no_gender = [{k: v for k, v in r.items() if k != "gender"} for r in HUB_ROWS]
    parquet = tmp_path / "no_gender.parquet"
    pd.DataFrame(no_gender).to_parquet(parquet)
    with pytest.raises(ValueError, match=r"no_gender\.parquet.*'gender'"):
        bias_in_bios("balanced", source=parquet)
    path = _write_jsonl(tmp_path / "missing.jsonl", [HUB_ROWS[0], no_gender[1]])
    with pytest.raises(ValueError, match=r"missing\.jsonl: row 2 has no field 'gender'"):
        bias_in_bios("balanced", source=path)
    bad = [*HUB_ROWS[:2], {"hard_text": "x", "profession": 13, "gender": 2}]
    path = _write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 3: gender 2 is not 0 or 1"):
        bias_in_bios("balanced", source=path)
    parquet = tmp_path / "bad.parquet"
    pd.DataFrame(bad).to_parquet(parquet)
    with pytest.raises(ValueError, match=r"bad\.parquet: row 3: gender"):
        bias_in_bios("balanced", source=parquet)
    path = _write_jsonl(tmp_path / "text.jsonl", [{**HUB_ROWS[0], "hard_text": 5}])
    with pytest.raises(ValueError, match=r"text\.jsonl: row 1: hard_text"):
        bias_in_bios("balanced", source=path)
    (tmp_path / "broken.jsonl").write_text('{"hard_text": "x"\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 1 is not JSON"):
        bias_in_bios("balanced", source=tmp_path / "broken.jsonl")
    with pytest.raises(ValueError, match="unknown source"):
        bias_in_bios("balanced", source=tmp_path / "bios.csv")
    with pytest.raises(ValueError, match="no file for part 'test'"):
        bias_in_bios("balanced", "test", source={"train": path})
    with pytest.raises(FileNotFoundError):
        bias_in_bios("balanced", source=tmp_path / "absent.jsonl")
