"""Plain text for the model: the bundled held-out sample, JSONL reading, and batches of
fixed-length token rows (SAE quality, dashboards, training)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

SAMPLE = Path(__file__).parents[1] / "resources" / "corpus_sample.jsonl"
"""The held-out text sample shipped with the package (see docs/corpus.md)."""


def read_texts(path: str | Path = SAMPLE, limit: int | None = None) -> list[str]:
    """Texts of a ``{"text": ...}`` JSONL file (default: the bundled held-out sample)."""
    texts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if limit is not None and len(texts) >= limit:
                break
    return texts


def token_batches(
    model, texts: Iterable[str], context: int = 128, batch_size: int = 16
) -> Iterable[Tensor]:
    """Texts tokenized with the model's defaults, cut into ``context``-token rows (each row
    starts with the model's BOS if it prepends one), batched."""
    rows = []
    for text in texts:
        tokens = model.to_tokens(text, truncate=False)[0]
        bos = tokens[:1] if model.cfg.default_prepend_bos else tokens[:0]
        body = tokens[len(bos) :]
        step = context - len(bos)
        for start in range(0, len(body) - step + 1, step):
            rows.append(torch.cat([bos, body[start : start + step]]))
            if len(rows) == batch_size:
                yield torch.stack(rows)
                rows = []
    if rows:
        yield torch.stack(rows)
