"""The Bias in Bios data for SHIFT: splits, balance, determinism, the generated biographies'
content (no occupation sentence; profession from content words, gender from names and
pronouns, no single template slot giving either away) and reading local files in the hub
schema."""

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
ABBREVIATIONS = re.compile(r"\b(Dr|Mr|Mrs|Ms|St)\.")


@pytest.fixture(scope="module", name="train")
def _train():
    return bias_in_bios("balanced", "train")


@pytest.fixture(scope="module", name="test")
def _test():
    return bias_in_bios("balanced", "test")


@pytest.fixture(scope="module", name="validation")
def _validation():
    return bias_in_bios("balanced", "validation")


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.) (?=[A-Z])", ABBREVIATIONS.sub(r"\1", text))


def test_columns_sizes_and_exact_balance(train, validation, test):
    assert sfc.datasets.bias_in_bios is bias_in_bios
    assert list(train.columns) == ["text", "profession", "gender", "group"]
    assert train["profession"].dtype == "int64" and train["gender"].dtype == "int64"
    assert list(train.index) == list(range(len(train)))
    for frame, size in [(train, 2000), (validation, 250), (test, 500)]:
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


def test_train_validation_and_test_texts_are_disjoint(train, validation, test):
    assert not set(train["text"]) & set(test["text"])
    assert not set(train["text"]) & set(validation["text"])
    assert not set(validation["text"]) & set(test["text"])


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
    with pytest.raises(ValueError, match="unknown part 'dev'.*train.*validation.*test"):
        bias_in_bios("balanced", "dev")
    with pytest.raises(ValueError, match="unknown source 'hbu'.*offline.*hub"):
        bias_in_bios("balanced", source="hbu")


# ---------------------------------------------------------------------------------------------
# Content of the generated biographies (scored on the validation part, never on test)

TITLE_WORDS = re.compile(r"\b(?:professors?|nurses?)\b", re.IGNORECASE)


def test_bios_are_one_paragraph_of_3_to_8_sentences_of_30_to_110_words(train, validation):
    words = []
    for text in pd.concat([train, validation])["text"]:
        words.append(len(text.split()))
        assert 30 <= words[-1] <= 110, text
        assert 3 <= len(sentences(text)) <= 8, text
        assert "\n" not in text and "  " not in text and "{" not in text and "<" not in text
        assert not re.search(r"\ba [aeio]", text), text  # article agreement
    assert 50 <= sum(words) / len(words) <= 65


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


def test_bag_of_words_recovers_profession_and_gender(train, validation):
    acc = _naive_bayes_accuracy(
        train["text"], train["profession"], validation["text"], validation["profession"]
    )
    assert acc > 0.9
    # ... also without the words professor/nurse/nursing: it is the content that tells
    acc = _naive_bayes_accuracy(
        _without(train["text"], PROFESSION_WORDS),
        train["profession"],
        _without(validation["text"], PROFESSION_WORDS),
        validation["profession"],
    )
    assert acc > 0.9
    acc = _naive_bayes_accuracy(
        train["text"], train["gender"], validation["text"], validation["gender"]
    )
    assert acc > 0.95


def test_first_three_words_do_not_separate_profession(train, validation):
    def head(texts):
        return [" ".join(t.split()[:3]) for t in texts]

    acc = _naive_bayes_accuracy(
        head(train["text"]), train["profession"], head(validation["text"]), validation["profession"]
    )
    assert acc < 0.85


def _position_accuracy(train, validation, label: str, pos: int) -> float:
    """Predict ``label`` by the majority label, in train, of the word at position ``pos``;
    accuracy on validation."""
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for text, y in zip(train["text"], train[label]):
        words = text.split()
        if pos < len(words):
            table[words[pos]][y] += 1
    hits = 0
    for text, y in zip(validation["text"], validation[label]):
        words = text.split()
        if pos < len(words) and words[pos] in table:
            hits += table[words[pos]].most_common(1)[0][0] == y
    return hits / len(validation)


def test_no_word_position_predicts_profession(train, validation):
    for pos in range(20):
        assert _position_accuracy(train, validation, "profession", pos) < 0.8, pos


def test_gender_is_not_in_one_slot_alone(train, validation):
    """The first word is usually the subject (He/She or a first name), as in real third-person
    bios, so it tells gender; no other position does, and without the first word gender is
    still fully recoverable (pronouns and names run through the text)."""
    assert _position_accuracy(train, validation, "gender", 0) > 0.8
    for pos in range(1, 20):
        assert _position_accuracy(train, validation, "gender", pos) < 0.7, pos

    def tail(texts):
        return [t.split(" ", 1)[1] for t in texts]

    acc = _naive_bayes_accuracy(
        tail(train["text"]), train["gender"], tail(validation["text"]), validation["gender"]
    )
    assert acc > 0.95


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


def _kinds():
    """Template kind -> regexes: shared, personal, title, and each persona's role sentences."""
    kinds = {
        "shared": bib.SHARED_BODY,
        "personal": bib.PERSONAL_BODY,
        "title": bib.PROFESSOR_TITLE + bib.NURSE_TITLE,
        **{name: spec["role"] for name, spec in bib.PERSONAS.items()},
    }
    return {kind: [_template_regex(t) for t in templates] for kind, templates in kinds.items()}


def test_no_occupation_sentence_and_most_sentences_are_shared(train):
    """As in Bias in Bios' hard_text: no sentence saying "X is a professor/nurse at ...";
    the title words are rare; most sentences come from templates both professions use."""
    assert 0.02 < train["text"].str.contains(TITLE_WORDS).mean() < 0.15
    kinds = _kinds()
    for profession in (0, 1):
        texts = train.loc[train["profession"] == profession, "text"]
        used = collections.Counter()
        shared_used = set()
        for text in texts:
            for s in sentences(text):
                s = s.replace("Dr ", "Dr. ").replace("Mr ", "Mr. ").replace("Ms ", "Ms. ")
                s = s.replace("Mrs ", "Mrs. ").replace("St ", "St. ")
                found = [k for k, pats in kinds.items() for p in pats if p.match(s)]
                assert found, s
                used[found[0]] += 1
                if found[0] == "shared":
                    shared_used.add(next(i for i, p in enumerate(kinds["shared"]) if p.match(s)))
        total = sum(used.values())
        assert (used["shared"] + used["personal"]) / total > 0.5, used
        assert used["title"] / total < 0.03, used
        assert shared_used == set(range(len(bib.SHARED_BODY)))  # every one, by both professions
        role = sum(used[p] for p in bib.PERSONAS)
        assert 0.2 < role / total < 0.5, used  # the sentences that lean to a profession


def test_names_and_pronouns_in_most_sentences(train):
    assert len(bib.MALE_NAMES) >= 40 and len(bib.FEMALE_NAMES) >= 40
    assert not set(bib.MALE_NAMES) & set(bib.FEMALE_NAMES)
    with_pronoun = [bool(PRONOUNS.search(t)) for t in train["text"]]
    assert sum(with_pronoun) / len(with_pronoun) > 0.95
    for gender, names in [(0, bib.MALE_NAMES), (1, bib.FEMALE_NAMES)]:
        texts = train.loc[train["gender"] == gender, "text"]
        words = [set(re.findall(r"[A-Za-z]+", t)) for t in texts]
        firsts = [w & set(names) for w in words]
        assert len(set().union(*firsts)) >= 40
        assert 0.4 < sum(bool(f) for f in firsts) / len(texts) < 0.9  # a name in most bios
        wrong = {"she", "her"} if gender == 0 else {"he", "his", "him"}
        assert not any(set(PRONOUNS.findall(t.lower())) & wrong for t in texts)
    # a pronoun or a name in nearly every sentence, as in third-person bios
    all_names = re.compile(
        r"\b(" + "|".join(bib.MALE_NAMES + bib.FEMALE_NAMES + bib.SURNAMES) + r")\b"
    )
    all_sentences = [s for t in train["text"] for s in sentences(t)]
    marked = sum(bool(PRONOUNS.search(s) or all_names.search(s)) for s in all_sentences)
    assert marked / len(all_sentences) > 0.95


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
    by_part = {"train": parquet, "validation": jsonl, "test": jsonl}
    for source in (jsonl, str(jsonl), parquet, by_part):
        for part in ("train", "validation", "test"):
            frame = bias_in_bios("balanced", part, source=source)
            assert set(frame.itertuples(index=False, name=None)) == expected
            assert frame["profession"].dtype == "int64"
    assert bib.HUB_SPLITS == {"train": "train", "validation": "dev", "test": "test"}
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
