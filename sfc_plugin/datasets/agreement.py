"""Subject-verb agreement contrastive pairs (METHOD.md section 6), after Finlayson et al. (2021).

Each pair differs only in the grammatical number of one noun; the answer is the verb form
that agrees with it. Every pair comes in both directions (shown: singular clean, plural patch):

| task        | clean prefix                            | answers        |
|-------------|-----------------------------------------|----------------|
| simple      | The parent                              | is / are       |
| within_rc   | The athlete(s) that the manager         | likes / like   |
| across_rc   | The athlete that the manager(s) like(s) | does / do      |
| across_pp   | The secretary near the car(s)           | has / have     |

Pairs are kept only where, for the given tokenizer, both answers are one token and clean and
patch prefixes have the same token length (templatic data).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Literal, get_args

from sfc_plugin.data import read_dataset

Task = Literal["simple", "within_rc", "across_rc", "across_pp"]
TASKS: tuple[Task, ...] = get_args(Task)

# (singular, plural) animate nouns
NOUNS = [
    ("author", "authors"),
    ("pilot", "pilots"),
    ("surgeon", "surgeons"),
    ("farmer", "farmers"),
    ("manager", "managers"),
    ("customer", "customers"),
    ("officer", "officers"),
    ("teacher", "teachers"),
    ("doctor", "doctors"),
    ("senator", "senators"),
    ("lawyer", "lawyers"),
    ("student", "students"),
    ("dancer", "dancers"),
    ("banker", "bankers"),
    ("athlete", "athletes"),
    ("singer", "singers"),
    ("driver", "drivers"),
    ("parent", "parents"),
    ("guard", "guards"),
    ("secretary", "secretaries"),
    ("child", "children"),
    ("woman", "women"),
    ("man", "men"),
    ("friend", "friends"),
    ("nurse", "nurses"),
    ("writer", "writers"),
    ("king", "kings"),
    ("player", "players"),
    ("actor", "actors"),
    ("boy", "boys"),
    ("girl", "girls"),
    ("professor", "professors"),
    ("painter", "painters"),
    ("soldier", "soldiers"),
    ("judge", "judges"),
    ("mother", "mothers"),
    ("father", "fathers"),
    ("neighbor", "neighbors"),
    ("engineer", "engineers"),
    ("scientist", "scientists"),
    ("artist", "artists"),
    ("visitor", "visitors"),
    ("reporter", "reporters"),
]
# (singular, plural) transitive verbs for relative clauses
VERBS = [
    ("likes", "like"),
    ("hates", "hate"),
    ("knows", "know"),
    ("loves", "love"),
    ("admires", "admire"),
    ("trusts", "trust"),
    ("helps", "help"),
    ("thanks", "thank"),
]
PREPOSITIONS = ["near", "behind", "beside", "with", "from"]
ANSWERS = {"simple": ("is", "are"), "across_rc": ("does", "do"), "across_pp": ("has", "have")}


def _rows(task: Task) -> list[tuple[str, str, str, str]]:
    """``(clean_prefix, patch_prefix, clean_answer, patch_answer)`` with the focus noun singular
    in the clean prefix; distractor nouns take both numbers (the verb of an RC agrees with its
    own subject)."""
    rows = []
    if task == "simple":
        for s, p in NOUNS:
            rows.append((f"The {s}", f"The {p}", *ANSWERS[task]))
    elif task == "within_rc":
        for (s1, p1), (s2, p2), (vs, vp) in itertools.product(NOUNS, NOUNS, VERBS[:1]):
            if s1 != s2:
                for head in (s1, p1):
                    rows.append((f"The {head} that the {s2}", f"The {head} that the {p2}", vs, vp))
    elif task == "across_rc":
        for (s1, p1), (s2, p2), (vs, vp) in itertools.product(NOUNS, NOUNS, VERBS[:2]):
            if s1 != s2:
                for rc in (f"the {s2} {vs}", f"the {p2} {vp}"):
                    rows.append((f"The {s1} that {rc}", f"The {p1} that {rc}", *ANSWERS[task]))
    elif task == "across_pp":
        for (s1, p1), (s2, p2), prep in itertools.product(NOUNS, NOUNS, PREPOSITIONS):
            if s1 != s2:
                for other in (s2, p2):
                    rows.append(
                        (
                            f"The {s1} {prep} the {other}",
                            f"The {p1} {prep} the {other}",
                            *ANSWERS[task],
                        )
                    )
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return rows


def _record(clean: str, patch: str, clean_answer: str, patch_answer: str) -> dict[str, str]:
    return {
        "clean_prefix": clean,
        "patch_prefix": patch,
        "clean_answer": f" {clean_answer}",
        "patch_answer": f" {patch_answer}",
    }


def agreement(
    task: Task,
    model_or_tokenizer,
    n: int | None = None,
    split: Literal["train", "test", "all"] = "train",
    seed: int = 0,
    test_fraction: float = 0.25,
    path: str | Path | None = None,
) -> list[dict[str, str]]:
    """Contrastive agreement pairs for ``task``, filtered for the tokenizer, as JSONL-style dicts
    (``clean_prefix, patch_prefix, clean_answer, patch_answer``).

    Every sentence pair appears in both directions (singular clean and plural patch, and the
    reverse), so the clean inputs are half singular, half plural (dataset means used for mean
    ablation then carry no number). Pairs are kept where both answers are one token and all
    prefixes have one token length (the most common one: templatic data). The kept sentence
    pairs are shuffled with ``seed`` and split deterministically: the first ``test_fraction``
    is the test split, disjoint from train (both directions of a pair stay on one side).
    Rows are then shuffled within the split; ``n`` caps the number returned; ``path`` also
    writes them as JSONL (``read_dataset`` reads that back).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer

    candidates = _rows(task)
    texts = sorted({t for r in candidates for t in (r[0], r[1], f" {r[2]}", f" {r[3]}")})
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]  # one batched call
    length = {t: len(i) for t, i in zip(texts, ids)}
    kept = [
        r
        for r in candidates
        if length[f" {r[2]}"] == 1 and length[f" {r[3]}"] == 1 and length[r[0]] == length[r[1]]
    ]
    if not kept:
        raise ValueError(f"no {task} pair survives tokenization with this tokenizer")
    lengths = [length[r[0]] for r in kept]
    mode = max(sorted(set(lengths)), key=lengths.count)
    kept = [r for r, length in zip(kept, lengths) if length == mode]
    rng = random.Random(seed)
    rng.shuffle(kept)
    n_test = round(len(kept) * test_fraction)
    chosen = {"train": kept[n_test:], "test": kept[:n_test], "all": kept}[split]
    rows = [_record(*r) for r in chosen] + [_record(r[1], r[0], r[3], r[2]) for r in chosen]
    rng.shuffle(rows)
    rows = rows if n is None else rows[:n]
    if path is not None:
        read_dataset(rows).to_jsonl(path)
    return rows
