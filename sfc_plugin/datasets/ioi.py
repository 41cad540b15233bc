"""Indirect-object identification pairs (Wang et al., 2022; the seed's second case study),
generated for a tokenizer.

    clean:  When Mary and John went to the store, John gave a book to   -> " Mary"
    patch:  When Mary and John went to the store, Mary gave a book to   -> " John"

The patch prefix repeats the other name as the subject, which flips the indirect object:
the default metric ``logit(patch answer) - logit(clean answer)`` measures the preference for
the name that is *not* the repeated subject. Names, places and objects are kept only where
they are one token with a leading space, so every prefix has one token length (templatic).
Half the rows put the indirect object first (``A and B ... B``), half second
(``B and A ... B``), so position alone does not give the answer.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Literal

from sfc_plugin.data import read_dataset

NAMES = (
    "Mary John Anna James Sarah David Emma Michael Laura Paul Kate Mark Lisa Tom Alice Peter "
    "Susan Robert Linda George Helen Frank Nancy Jack Karen Steve Julie Brian Rachel Kevin"
).split()
PLACES = "store park school office beach station market garden library hospital".split()
OBJECTS = "book drink ball key letter gift bag ring phone cake".split()
TEMPLATE = "When {first} and {second} went to the {place}, {subject} gave a {thing} to"


def _single(tokenizer, words: list[str]) -> list[str]:
    ids = tokenizer([f" {w}" for w in words], add_special_tokens=False)["input_ids"]
    return [w for w, i in zip(words, ids) if len(i) == 1]


def ioi(
    model_or_tokenizer,
    n: int | None = None,
    split: Literal["train", "test", "all"] = "train",
    seed: int = 0,
    test_fraction: float = 0.25,
    path: str | Path | None = None,
) -> list[dict[str, str]]:
    """IOI contrastive pairs (module docstring) as JSONL-style dicts, shuffled with ``seed``.

    The split is by name pair: a pair of names in the test split never appears in train.
    ``n`` caps the rows returned; ``path`` also writes them as JSONL."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer
    names = _single(tokenizer, list(NAMES))
    places, things = _single(tokenizer, list(PLACES)), _single(tokenizer, list(OBJECTS))
    if len(names) < 4 or not places or not things:
        raise ValueError("too few one-token names, places or objects for this tokenizer")
    rng = random.Random(seed)
    pairs = list(itertools.combinations(names, 2))
    rng.shuffle(pairs)
    n_test = round(len(pairs) * test_fraction)
    chosen = {"train": pairs[n_test:], "test": pairs[:n_test], "all": pairs}[split]
    rows = []
    for k, (io, s) in enumerate(chosen):
        first, second = (io, s) if k % 2 == 0 else (s, io)
        fill = dict(first=first, second=second, place=rng.choice(places), thing=rng.choice(things))
        rows.append(
            {
                "clean_prefix": TEMPLATE.format(subject=s, **fill),
                "patch_prefix": TEMPLATE.format(subject=io, **fill),
                "clean_answer": f" {io}",
                "patch_answer": f" {s}",
            }
        )
    rng.shuffle(rows)
    rows = rows if n is None else rows[:n]
    if path is not None:
        read_dataset(rows).to_jsonl(path)
    return rows
