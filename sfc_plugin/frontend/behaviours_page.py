"""The behaviours browser: one offline HTML index of the clusters that ``sfc_plugin.behaviours``
finds by clustering (context, next token) samples (Marks et al., "Sparse Feature Circuits",
section 5, whose public cluster browser this follows).

One card per cluster, largest first: its id, size, coherence, the share of its most common
answer, its top answer tokens (newlines shown as ``↵``, whitespace-only tokens as ``␣`` /
``⇥``), a few example contexts with the answer highlighted after them, the circuit metrics when
circuits were found and the link to the cluster's circuit page. A small script
(``assets/behaviours.js``) re-sorts the cards (size, coherence, answer share, id, circuit
metrics) and filters them by answer-token text; the URL fragment ``#sort=<key>&filter=<text>``
sets both on load. The document is put together by ``templates/behaviours.html`` with
``assets/behaviours.css``; nothing in it is fetched from a network. Every text from the data
goes through jinja's autoescaping.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sfc_plugin.files import write_atomic
from sfc_plugin.frontend.templating import render_template, visible

__all__ = [
    "CLUSTER_COLUMNS",
    "CONTEXT_CHARS",
    "SAMPLE_COLUMNS",
    "behaviours_page_html",
    "save_behaviours_page",
]

SAMPLE_COLUMNS = (
    "sample",
    "document",
    "position",
    "n_context",
    "context",
    "answer",
    "answer_token",
    "loss",
)
"""The columns ``samples`` must have."""

CLUSTER_COLUMNS = ("cluster", "size", "coherence", "answer_share", "top_answers")
"""The columns ``clusters`` must have."""

CONTEXT_CHARS = 200
"""Example contexts longer than this show only their last ``CONTEXT_CHARS`` characters."""

TOP_ANSWERS = 10
"""How many of a cluster's top answers a card lists."""

UNASSIGNED = -1
"""The label of a sample in no cluster."""

# Optional circuit columns of ``clusters``: column -> (label, sort key, how a value shows).
_CIRCUIT_COLUMNS: dict[str, tuple[str, str, str]] = {
    "n_nodes": ("nodes", "nodes", "{:.0f}"),
    "faithfulness": ("faithfulness", "faithfulness", "{:.3f}"),
    "circuit_seconds": ("circuit time", "seconds", "{:.1f} s"),
}


def _number(value: Any) -> float | None:
    """``value`` as a float, None when missing (None, NaN)."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _token(text: str) -> str:
    """A token as shown: newlines as ``↵`` (``templating.visible``); a token of only spaces and
    tabs as ``␣`` / ``⇥``, and the empty token as ``∅``, so that none of them shows as
    nothing."""
    shown = visible(text)
    if not shown:
        return "\u2205"
    if not shown.strip(" \t"):
        return shown.replace(" ", "\u2423").replace("\t", "\u21e5")
    return shown


def _context(text: str) -> tuple[bool, str]:
    """(cut, the text shown) of an example context: its last ``CONTEXT_CHARS`` characters
    (``cut`` when it was longer), each newline marked with ``↵`` before the line break."""
    cut = len(text) > CONTEXT_CHARS
    tail = text[-CONTEXT_CHARS:] if cut else text
    return cut, tail.replace("\n", "\u21b5\n")


def _top_answers(value: Any) -> list[tuple[str, int]]:
    """The ``top_answers`` cell: ``[answer_text, count]`` pairs (lists, tuples or arrays); a
    missing cell (None, NaN) is no pairs."""
    if value is None or isinstance(value, float):
        return []
    return [(str(pair[0]), int(pair[1])) for pair in value]


def _check(
    clusters: pd.DataFrame, samples: pd.DataFrame, labels: Sequence[int]
) -> tuple[np.ndarray, dict[int, dict[Hashable, Any]]]:
    """The labels as an int array and the cluster rows by id; ``ValueError`` for missing
    columns, lengths that differ, repeated or unknown cluster ids."""
    for name, frame, required in (
        ("samples", samples, SAMPLE_COLUMNS),
        ("clusters", clusters, CLUSTER_COLUMNS),
    ):
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{name} lacks column(s) {', '.join(map(repr, missing))} "
                f"(it has {', '.join(map(repr, map(str, frame.columns)))})"
            )
    ids = np.asarray(labels)
    if ids.size == 0:
        ids = ids.astype(np.int64)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"labels must be a sequence of ints (got an array of {ids.dtype})")
    if len(ids) != len(samples):
        raise ValueError(f"labels has {len(ids)} entries but samples has {len(samples)} rows")
    rows: dict[int, dict[Hashable, Any]] = {}
    for row in clusters.to_dict(orient="records"):
        cid = int(row["cluster"])
        if cid in rows:
            raise ValueError(f"cluster {cid} has more than one row in clusters")
        rows[cid] = row
    unknown = sorted(set(np.unique(ids).tolist()) - set(rows) - {UNASSIGNED})
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(f"cluster {unknown[0]} is in labels but not in clusters{more}")
    return ids, rows


def behaviours_page_html(
    clusters: pd.DataFrame,
    samples: pd.DataFrame,
    labels: Sequence[int],
    *,
    title: str = "Behaviours",
    settings: Mapping[str, Any] | None = None,
    n_examples: int = 8,
    circuit_pages: Mapping[int, str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The whole HTML document.

    ``clusters``: one row per cluster (``cluster, size, coherence, answer_share,
    top_answers`` and optionally ``n_nodes, faithfulness, circuit_seconds``); ``samples``: one
    row per sample in sample order (``SAMPLE_COLUMNS``); ``labels``: each sample's cluster id
    (-1: none); ``settings``: shown as a key / value table; ``n_examples``: example contexts
    per cluster (the first ones in sample order); ``circuit_pages``: cluster id -> relative
    link to its circuit page; ``notes``: paragraphs shown under the header."""
    ids, rows = _check(clusters, samples, labels)
    examples: dict[int, list[int]] = {cid: [] for cid in rows}
    for i, cid in enumerate(ids.tolist()):
        if cid != UNASSIGNED and len(examples[cid]) < n_examples:
            examples[cid].append(i)
    column = {name: samples[name].tolist() for name in SAMPLE_COLUMNS}
    metrics = [c for c in _CIRCUIT_COLUMNS if c in clusters.columns]
    links = circuit_pages or {}

    cards = []
    for cid, row in sorted(rows.items(), key=lambda item: (-int(item[1]["size"]), item[0])):
        shown_examples = []
        for i in examples[cid]:
            cut, context = _context(str(column["context"][i]))
            shown_examples.append(
                dict(
                    cut=cut,
                    context=context,
                    answer=_token(str(column["answer"][i])),
                    loss=_number(column["loss"][i]),
                    where=(
                        f"sample {column['sample'][i]}, document {column['document'][i]}, "
                        f"position {column['position'][i]}, {column['n_context'][i]} context "
                        f"tokens, answer token {column['answer_token'][i]}"
                    ),
                )
            )
        answers = [(_token(text), count) for text, count in _top_answers(row["top_answers"])]
        values = {c: _number(row[c]) for c in metrics}
        cards.append(
            dict(
                id=cid,
                size=int(row["size"]),
                coherence=_number(row["coherence"]),
                share=_number(row["answer_share"]),
                answers=answers[:TOP_ANSWERS],
                n_answers=len(answers),
                filter_text="\n".join(text for text, _ in answers),
                examples=shown_examples,
                metrics=[
                    (
                        _CIRCUIT_COLUMNS[c][0],
                        None if v is None else _CIRCUIT_COLUMNS[c][2].format(v),
                    )
                    for c, v in values.items()
                ],
                sort_values=[(_CIRCUIT_COLUMNS[c][1], values[c]) for c in metrics],
                link=links.get(cid),
            )
        )
    sort_keys = [("size", "size"), ("coherence", "coherence"), ("share", "answer share")]
    sort_keys += [(_CIRCUIT_COLUMNS[c][1], _CIRCUIT_COLUMNS[c][0]) for c in metrics]
    sort_keys.append(("cluster", "cluster id"))
    return render_template(
        "behaviours.html",
        title=title,
        n_samples=len(samples),
        n_assigned=int((ids != UNASSIGNED).sum()),
        n_clusters=len(rows),
        settings=[(str(k), str(v)) for k, v in (settings or {}).items()],
        notes=list(notes),
        clusters=cards,
        sort_keys=sort_keys,
        n_examples=n_examples,
        context_chars=CONTEXT_CHARS,
    )


def save_behaviours_page(
    path: str | Path,
    clusters: pd.DataFrame,
    samples: pd.DataFrame,
    labels: Sequence[int],
    **options: Any,
) -> None:
    """``behaviours_page_html(clusters, samples, labels, **options)`` written atomically to
    ``path`` (``sfc_plugin.files.write_atomic``; missing directories are made)."""
    write_atomic(path, behaviours_page_html(clusters, samples, labels, **options))
