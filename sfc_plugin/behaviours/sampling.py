"""Behaviour samples (METHOD.md section 8, step 1): (context, next token) pairs the model
predicts well, from any text.

Each document is tokenized without BOS and cut into windows; a window is run once with the
model's BOS (if it prepends one) and every target in it whose context has ``min_context`` to
``max_context`` tokens is a candidate, its loss ``-log p(answer | context)`` read off that
one forward (causal attention: the logits at a position see only its context). Windows
overlap by ``min_context`` tokens so each token is a target once. A candidate is kept when

* its loss is below ``loss_threshold`` (paper: 0.1 or 0.3 nats),
* it is not an induction case: ``induction="bigram"`` (the paper) drops it when the pair
  (last context token, answer) already occurs in the context; ``"trigram"`` (the reference
  code) when (two last context tokens, answer) does; ``"none"`` keeps all,
* its text round-trips: ``model.to_tokens(context)`` gives back exactly its tokens and the
  answer is one token (circuits take text rows; a window that starts inside a word can
  decode to text that tokenizes differently, and such a row would not be the sample).

``one_per_document`` then keeps one kept candidate per document, drawn with the seed.
Documents are processed in order and written in shards of ``documents_per_shard`` to
``out/`` (atomically, with the settings), so an interrupted run resumes at the first missing
shard and gives the same samples.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from sfc_plugin.data import prepended_bos, right_pad
from sfc_plugin.datasets.text import SAMPLE, read_texts
from sfc_plugin.files import check_run_settings, read_document, write_document

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Induction = Literal["bigram", "trigram", "none"]
SAMPLE_COLUMNS = [
    "sample",
    "document",
    "position",
    "n_context",
    "context",
    "answer",
    "answer_token",
    "loss",
    "context_tokens",
]
SHARD_SCHEMA = "sfc_plugin.behaviour_samples"
SHARD_VERSION = 1
COUNTS = ("documents", "short_documents", "targets", "low_loss", "induction", "not_round_trip")


@dataclass(frozen=True)
class SampleSettings:
    """The filters of ``samples`` (recorded with every shard)."""

    loss_threshold: float = 0.1
    min_context: int = 16
    max_context: int = 64
    induction: Induction = "bigram"
    one_per_document: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.loss_threshold, (int, float)) and self.loss_threshold > 0):
            raise ValueError(
                f"loss_threshold must be a positive number, got {self.loss_threshold!r}"
            )
        if not (1 <= self.min_context <= self.max_context):
            raise ValueError(
                "need 1 <= min_context <= max_context, got "
                f"min_context={self.min_context}, max_context={self.max_context}"
            )
        if self.induction not in ("bigram", "trigram", "none"):
            raise ValueError(
                f"induction must be 'bigram', 'trigram' or 'none', got {self.induction!r}"
            )


def is_induction(context: Sequence[int], answer: int, rule: Induction) -> bool:
    """Whether ``answer`` after ``context`` repeats an n-gram already in the context: the
    bigram (last token, answer) or the trigram (two last tokens, answer)."""
    n = {"bigram": 2, "trigram": 3, "none": 0}[rule]
    if n == 0 or len(context) < n:
        return False
    gram = (*context[len(context) - n + 1 :], answer)
    return any(tuple(context[i : i + n]) == gram for i in range(len(context) - n + 1))


def _documents(texts: Any) -> Iterator[str]:
    """The texts of a source: strings, a JSONL path (``{"text": ...}`` lines), or rows with a
    ``"text"`` field (a Hugging Face ``datasets`` dataset)."""
    if texts is None:
        texts = SAMPLE
    if isinstance(texts, (str, Path)):
        if not Path(texts).exists():
            raise FileNotFoundError(f"no text file at {texts}")
        yield from read_texts(texts)
        return
    for i, item in enumerate(texts):
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            yield item["text"]
        else:
            raise ValueError(f"text {i} is a {type(item).__name__} without a 'text' string")


def _shards(texts: Any, per_shard: int) -> Iterator[list[str]]:
    shard: list[str] = []
    for text in _documents(texts):
        shard.append(text)
        if len(shard) == per_shard:
            yield shard
            shard = []
    if shard:
        yield shard


def _windows(n_tokens: int, settings: SampleSettings) -> list[int]:
    """Window starts: window ``s`` holds targets ``s + min_context .. s + max_context``."""
    step = settings.max_context - settings.min_context + 1
    return list(range(0, max(n_tokens - settings.min_context, 0), step))


def _shard_samples(
    model: HookedTransformer,
    docs: list[str],
    first_doc: int,
    settings: SampleSettings,
    batch_size: int,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Kept samples of one shard of documents, and its counts (``COUNTS``)."""
    bos = prepended_bos(model)
    counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
    windows: list[tuple[int, int, list[int]]] = []  # (document, start, doc tokens)
    for d, text in enumerate(docs):
        ids = model.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()
        counts["documents"] += 1
        if len(ids) <= settings.min_context:
            counts["short_documents"] += 1
        windows += [(first_doc + d, s, ids) for s in _windows(len(ids), settings)]
    by_doc: dict[int, list[dict[str, Any]]] = {}
    device = model.cfg.device
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        tokens = right_pad([bos + ids[s : s + settings.max_context] for _, s, ids in chunk])
        with torch.no_grad():
            logp = model(tokens.to(device), padding_side="right").log_softmax(-1)
        for i, (doc, s, ids) in enumerate(chunk):
            last = min(settings.max_context, len(ids) - 1 - s)
            for p in range(settings.min_context, last + 1):
                answer = ids[s + p]
                loss = -float(logp[i, len(bos) + p - 1, answer])
                counts["targets"] += 1
                if loss >= settings.loss_threshold:
                    continue
                counts["low_loss"] += 1
                context = ids[s : s + p]
                if is_induction(context, answer, settings.induction):
                    counts["induction"] += 1
                    continue
                row = _text_row(model, bos, context, answer)
                if row is None:
                    counts["not_round_trip"] += 1
                    continue
                row.update(document=doc, position=s + p, loss=loss)
                by_doc.setdefault(doc, []).append(row)
    rows = []
    for doc, found in sorted(by_doc.items()):
        if settings.one_per_document:
            g = torch.Generator().manual_seed(settings.seed * 1_000_003 + doc)
            found = [found[int(torch.randint(len(found), (1,), generator=g))]]
        rows += found
    return rows, counts


def _text_row(
    model: HookedTransformer, bos: list[int], context: list[int], answer: int
) -> dict[str, Any] | None:
    """The sample as text, or None if the text does not tokenize back to these tokens."""
    tokenizer = model.tokenizer
    assert tokenizer is not None
    text = tokenizer.decode(context)
    answer_text = tokenizer.decode([answer])
    if model.to_tokens(text, truncate=False)[0].tolist() != bos + context:
        return None
    if model.to_tokens(answer_text, prepend_bos=False)[0].tolist() != [answer]:
        return None
    return dict(
        n_context=len(context),
        context=text,
        answer=answer_text,
        answer_token=answer,
        context_tokens=context,
    )


def _settings_key(model: HookedTransformer, settings: SampleSettings, per_shard: int) -> dict:
    return {
        "model": getattr(model.cfg, "model_name", None),
        "documents_per_shard": per_shard,
        **asdict(settings),
    }


def samples(
    model: HookedTransformer,
    texts: Iterable[str] | Iterable[dict[str, Any]] | str | Path | None = None,
    *,
    loss_threshold: float = 0.1,
    min_context: int = 16,
    max_context: int = 64,
    induction: Induction = "bigram",
    one_per_document: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    documents_per_shard: int = 64,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """(context, next token) samples the model predicts with loss below ``loss_threshold``.

    Args:
        model: a TransformerLens model with its tokenizer.
        texts: a list of strings, a ``{"text": ...}`` JSONL path (e.g. the corpus builder's
            ``heldout.jsonl``), or rows with a ``"text"`` field (a ``datasets`` dataset);
            default: the held-out sample shipped with the package.
        loss_threshold: keep targets with ``-log p(answer) < loss_threshold`` (nats).
        min_context, max_context: context length bounds in tokens (BOS not counted).
        induction: drop induction cases by the ``"bigram"`` rule (paper), the ``"trigram"``
            rule (reference code), or ``"none"``.
        one_per_document: keep one sample per document (drawn with ``seed``).
        max_samples: stop after the shard that reaches this many, and keep the first ones.
        out: directory for the shards (``shard_00000.json`` ...); a rerun reuses them. A run
            with other settings in the same directory is refused.
        documents_per_shard, batch_size: documents per shard file, windows per forward.

    Returns:
        One row per sample, columns ``SAMPLE_COLUMNS``: ``sample`` (0..n-1), ``document``
        (index in ``texts``), ``position`` (the answer's token index in the document),
        ``n_context``, ``context`` and ``answer`` (text), ``answer_token``, ``loss``,
        ``context_tokens``. ``frame.attrs["counts"]`` holds the counts of every filter over
        the documents scanned, ``frame.attrs["found"]`` the samples they gave (before the
        cut to ``max_samples``).
    """
    settings = SampleSettings(
        loss_threshold, min_context, max_context, induction, one_per_document, seed
    )
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; load it with one to read text")
    out_dir = Path(out) if out is not None else None
    key = _settings_key(model, settings, documents_per_shard)
    if out_dir is not None:
        check_run_settings(out_dir, key, "samples")
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
    bar = tqdm(desc="samples", unit="doc", disable=not progress)
    for k, docs in enumerate(_shards(texts, documents_per_shard)):
        path = out_dir / f"shard_{k:05d}.json" if out_dir is not None else None
        digest = _digest(docs)
        if path is not None and path.exists():
            doc = read_document(path, SHARD_SCHEMA, SHARD_VERSION, "samples shard")
            if doc["documents_digest"] != digest:
                raise ValueError(
                    f"{path} was made from other texts; use a new out directory for new texts"
                )
            found, shard_counts = doc["rows"], doc["counts"]
        else:
            found, shard_counts = _shard_samples(
                model, docs, k * documents_per_shard, settings, batch_size
            )
            if path is not None:
                body = {"settings": key, "documents_digest": digest}
                write_document(
                    path,
                    SHARD_SCHEMA,
                    SHARD_VERSION,
                    {**body, "counts": shard_counts, "rows": found},
                )
        rows += found
        for name in COUNTS:
            counts[name] += shard_counts[name]
        bar.update(len(docs))
        bar.set_postfix(samples=len(rows))
        if max_samples is not None and len(rows) >= max_samples:
            break
    bar.close()
    _check_found(rows, counts, settings)
    found_in_scan = len(rows)
    if max_samples is not None:
        rows = rows[:max_samples]
    frame = pd.DataFrame(rows, columns=[c for c in SAMPLE_COLUMNS if c != "sample"])
    frame.insert(0, "sample", range(len(frame)))
    frame.attrs["counts"] = counts
    frame.attrs["found"] = found_in_scan
    frame.attrs["settings"] = key
    return frame


def _digest(docs: list[str]) -> str:
    return hashlib.sha256(json.dumps(docs).encode()).hexdigest()[:16]


def _check_found(rows: list, counts: dict[str, int], settings: SampleSettings) -> None:
    if counts["documents"] == 0:
        raise ValueError("no texts were given")
    if counts["short_documents"]:
        share = counts["short_documents"] / counts["documents"]
        message = (
            f"{counts['short_documents']} of {counts['documents']} texts have at most "
            f"min_context={settings.min_context} tokens and give no sample"
        )
        if share == 1:
            raise ValueError(message + "; lower min_context or give longer texts")
        warnings.warn(message, stacklevel=3)
    if not rows:
        why = (
            f"no target had loss below loss_threshold={settings.loss_threshold}"
            if counts["low_loss"] == 0
            else f"all {counts['low_loss']} targets below loss_threshold="
            f"{settings.loss_threshold} were dropped (induction: {counts['induction']}, "
            f"text not round-tripping: {counts['not_round_trip']})"
        )
        raise ValueError(f"no samples: {why} among {counts['targets']} targets")


def samples_per_100k_tokens(frame: pd.DataFrame) -> float:
    """Samples per 100,000 target tokens scanned: the samples all scanned documents gave
    (``frame.attrs["found"]``, not the ``max_samples`` cut) over their targets."""
    found = frame.attrs.get("found", len(frame))
    return 1e5 * found / max(frame.attrs["counts"]["targets"], 1)


def sample_rows(frame: pd.DataFrame) -> list[dict[str, str]]:
    """Samples as single-input rows (``{"prefix", "answer"}``) for circuits."""
    return [{"prefix": c, "answer": a} for c, a in zip(frame.context, frame.answer)]
