"""Subject-verb agreement contrastive pairs (METHOD.md section 6), after Finlayson et al. (2021).

Each pair differs only in the grammatical number of one noun; the answer is the verb form
that agrees with it.  Clean inputs have the singular noun, patch inputs the plural:

| task        | clean prefix                            | answers        |
|-------------|-----------------------------------------|----------------|
| simple      | The parent                              | is / are       |
| within_rc   | The athlete that the manager            | likes / like   |
| across_rc   | The athlete that the managers like      | does / do      |
| across_pp   | The secretary near the cars             | has / have     |

Pairs are kept only where, for the given tokenizer, both answers are one token and clean and
patch prefixes have the same token length (templatic data).
"""

from __future__ import annotations

import itertools
import random
from typing import Literal

Task = Literal["simple", "within_rc", "across_rc", "across_pp"]
TASKS: tuple[str, ...] = ("simple", "within_rc", "across_rc", "across_pp")

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


def _candidates(task: Task) -> list[dict[str, str]]:
    rows = []
    if task == "simple":
        for s, p in NOUNS:
            rows.append((f"The {s}", f"The {p}", *ANSWERS[task]))
    elif task == "within_rc":
        for (s1, _), (s2, p2), (vs, vp) in itertools.product(NOUNS, NOUNS, VERBS[:1]):
            if s1 != s2:
                rows.append((f"The {s1} that the {s2}", f"The {s1} that the {p2}", vs, vp))
    elif task == "across_rc":
        for (s1, p1), (s2, p2), (_, vp) in itertools.product(NOUNS, NOUNS, VERBS[:2]):
            if s1 != s2:
                # the RC verb agrees with the (fixed, plural) RC subject
                rows.append(
                    (f"The {s1} that the {p2} {vp}", f"The {p1} that the {p2} {vp}", *ANSWERS[task])
                )
    elif task == "across_pp":
        for (s1, p1), (_, p2), prep in itertools.product(NOUNS, NOUNS, PREPOSITIONS):
            if s1 != p2 and p1 != p2:
                rows.append(
                    (f"The {s1} {prep} the {p2}", f"The {p1} {prep} the {p2}", *ANSWERS[task])
                )
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return [
        {"clean_prefix": c, "patch_prefix": p, "clean_answer": f" {a}", "patch_answer": f" {b}"}
        for c, p, a, b in rows
    ]


def agreement(
    task: Task,
    model_or_tokenizer,
    n: int | None = None,
    split: Literal["train", "test", "all"] = "train",
    seed: int = 0,
    test_fraction: float = 0.25,
) -> list[dict[str, str]]:
    """Contrastive agreement pairs for ``task``, filtered for the tokenizer, as JSONL-style dicts.

    The filtered pairs are shuffled with ``seed`` and split deterministically (the last
    ``test_fraction`` is the test split, disjoint from train); ``n`` caps the number returned.
    """
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    kept = [
        r
        for r in _candidates(task)
        if n_tokens(r["clean_answer"]) == 1
        and n_tokens(r["patch_answer"]) == 1
        and n_tokens(r["clean_prefix"]) == n_tokens(r["patch_prefix"])
    ]
    # templatic: keep the most common length so every row shares token roles by position
    lengths = [n_tokens(r["clean_prefix"]) for r in kept]
    if not kept:
        raise ValueError(f"no {task} pair survives tokenization with this tokenizer")
    mode = max(set(lengths), key=lengths.count)
    kept = [r for r, length in zip(kept, lengths) if length == mode]
    random.Random(seed).shuffle(kept)
    n_test = round(len(kept) * test_fraction)
    chosen = {"train": kept[n_test:], "test": kept[:n_test], "all": kept}[split]
    return chosen if n is None else chosen[:n]
