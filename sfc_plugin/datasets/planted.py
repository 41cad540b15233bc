"""Texts with planted behaviours, to check that clustering recovers known groups.

Each text exercises one behaviour whose next tokens a language model predicts from the
pattern, not from an earlier copy (so the induction filter of ``behaviours.samples`` keeps
them): counting up in digits, counting in words, the alphabet, months and closing brackets
of nested calls. Items are separated by spaces only, so the groups share no token but the
space. (Repeated names, another behaviour of the paper's browser, are induction cases by
definition and would be filtered out.) Every sample taken from a text belongs to that
text's group; the purity of the clusters against those groups says how well the clustering
recovers them. A group gives samples only where the model predicts it: the embedded
SmolLM2-135M-Instruct predicts space-separated digits, letters and closing brackets (median
losses 0.06, 0.15 and 1.5 nats, the last over all bracket-text tokens) but not number words
or months (3.0 and 1.6 nats), which give no sample at 0.3 nats.
"""

from __future__ import annotations

import random

GROUPS = ("digits", "number_words", "alphabet", "months", "brackets")

_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_FUNCTIONS = ("max", "min", "abs", "len", "sum", "int", "str", "sorted", "round", "list")
_NAMES = ("x", "y", "z", "a", "b", "n", "k", "value", "items", "data")


def _digits(rng: random.Random) -> str:
    start = rng.randint(1, 60)
    return " ".join(str(i) for i in range(start, start + 24))


def _number_words(rng: random.Random) -> str:
    start = rng.randint(0, 4)
    return " ".join(_WORDS[start : start + 16])


def _alphabet(rng: random.Random) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    start = rng.randint(0, 4)
    letters = letters if rng.random() < 0.5 else letters.lower()
    return " ".join(letters[start:])


def _months(rng: random.Random) -> str:
    start = rng.randint(0, 3)
    return " ".join(_MONTHS[start:])


def _brackets(rng: random.Random) -> str:
    lines = []
    for _ in range(6):
        depth = rng.randint(2, 4)
        calls = [rng.choice(_FUNCTIONS) for _ in range(depth)]
        expr = "".join(f"{c}(" for c in calls) + rng.choice(_NAMES) + ")" * depth
        lines.append(expr)
    return "\n".join(lines)


_MAKERS = {
    "digits": _digits,
    "number_words": _number_words,
    "alphabet": _alphabet,
    "months": _months,
    "brackets": _brackets,
}


def planted_texts(
    n_per_group: int = 20, groups: tuple[str, ...] = GROUPS, seed: int = 0
) -> list[dict[str, str]]:
    """``n_per_group`` texts of each group as ``{"text", "group"}`` rows, shuffled with the
    seed (``behaviours.samples`` reads the ``"text"`` field)."""
    unknown = [g for g in groups if g not in _MAKERS]
    if unknown:
        raise ValueError(f"unknown groups {unknown}; choose from {', '.join(GROUPS)}")
    rng = random.Random(seed)
    rows = [{"text": _MAKERS[g](rng), "group": g} for g in groups for _ in range(n_per_group)]
    rng.shuffle(rows)
    return rows
