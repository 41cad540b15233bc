"""Datasets for circuit discovery: contrastive pairs and single inputs.

Two row formats, as JSONL files or lists of dicts:

* contrastive pairs ``{"clean_prefix", "patch_prefix", "clean_answer", "patch_answer"}`` (the
  format of saprmarks/feature-circuits, so its data files load unchanged; extra keys are kept
  out of the way);
* single inputs ``{"prefix", "answer"}`` (zero or mean ablation); ``answer`` may be left out
  when the metric does not use it (a probe's logit, for SHIFT).

Answers are strings that must be exactly one token (usually with a leading space, ``" is"``).
Tokenization follows the model's own ``to_tokens`` defaults (its ``default_prepend_bos``); rows
are right-padded to a common length, so real tokens never see padding under causal attention
and no attention mask is needed.  Every error names the offending row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

PAIR_KEYS = ("clean_prefix", "patch_prefix", "clean_answer", "patch_answer")
SINGLE_KEYS = ("prefix",)
NO_ANSWER = -1
"""``Batch.clean_answer`` of a row without an answer."""


@dataclass(frozen=True)
class Example:
    """One row: a clean prefix and its answer, and for pairs the patch prefix and its answer."""

    clean_prefix: str
    clean_answer: str | None
    patch_prefix: str | None = None
    patch_answer: str | None = None

    def to_record(self) -> dict[str, str]:
        if self.patch_prefix is None:
            if self.clean_answer is None:
                return {"prefix": self.clean_prefix}
            return {"prefix": self.clean_prefix, "answer": self.clean_answer}
        return {
            "clean_prefix": self.clean_prefix,
            "patch_prefix": self.patch_prefix,
            "clean_answer": str(self.clean_answer),
            "patch_answer": str(self.patch_answer),
        }


@dataclass
class Dataset:
    """Validated rows, all pairs or all single inputs. ``where(i)`` names row ``i`` in errors."""

    examples: list[Example]
    source: str | None = None

    @property
    def is_pairs(self) -> bool:
        return self.examples[0].patch_prefix is not None

    def __len__(self) -> int:
        return len(self.examples)

    def where(self, i: int) -> str:
        return f"row {i}" + (f" (line {i + 1} of {self.source})" if self.source else "")

    def to_jsonl(self, path: str | Path) -> None:
        with open(path, "w") as f:
            for ex in self.examples:
                f.write(json.dumps(ex.to_record()) + "\n")


def read_dataset(data: Dataset | str | Path | Sequence[dict[str, Any]]) -> Dataset:
    """Read and validate rows from a JSONL path, a list of dicts, or a ``Dataset``.

    Raises ``ValueError`` naming the row for: empty data, a row that is not an object, missing
    keys, non-string values, and a mix of pairs and single inputs.
    """
    if isinstance(data, Dataset):
        return data
    source = None
    if isinstance(data, (str, Path)):
        source = str(data)
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"data file not found: {path}")
        records: list[Any] = []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"line {line_no} of {path} is not valid JSON: {e}") from None
    elif isinstance(data, Sequence):
        records = list(data)
    else:
        raise TypeError(
            f"data must be a JSONL path, a list of dicts or a Dataset, not {type(data).__name__}"
        )
    if not records:
        raise ValueError(f"data is empty{f' ({source})' if source else ''}: no rows to use")

    def where(i: int) -> str:
        return f"row {i}" + (f" (line {i + 1} of {source})" if source else "")

    examples = []
    kind = None
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{where(i)} is a {type(rec).__name__}, expected a JSON object")
        row_kind = "pairs" if "clean_prefix" in rec else "single"
        keys = PAIR_KEYS if row_kind == "pairs" else SINGLE_KEYS
        missing = [k for k in keys if k not in rec]
        if missing:
            raise ValueError(
                f"{where(i)} is missing key(s) {missing}; contrastive pairs need {list(PAIR_KEYS)}"
                f" and single inputs need {list(SINGLE_KEYS)}"
            )
        if row_kind == "single" and "answer" in rec:
            keys = (*keys, "answer")
        bad = [k for k in keys if not isinstance(rec[k], str) or not rec[k]]
        if bad:
            raise ValueError(f"{where(i)}: {bad} must be non-empty strings")
        if kind is None:
            kind = row_kind
        elif kind != row_kind:
            raise ValueError(
                f"{where(i)} is a {row_kind} row but earlier rows are {kind}; do not mix them"
            )
        if row_kind == "pairs":
            examples.append(
                Example(
                    rec["clean_prefix"],
                    rec["clean_answer"],
                    rec["patch_prefix"],
                    rec["patch_answer"],
                )
            )
        else:
            examples.append(Example(rec["prefix"], rec.get("answer")))
    return Dataset(examples, source)


def right_pad(
    seqs: Sequence[Sequence[int] | Tensor], pad_id: int = 0, width: int | None = None
) -> Int[Tensor, "batch pos"]:
    """Token sequences right-padded with ``pad_id`` to ``width`` (default: the longest), on
    the CPU. Under causal attention real tokens never see the padding."""
    width = max(len(x) for x in seqs) if width is None else width
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for j, x in enumerate(seqs):
        out[j, : len(x)] = torch.as_tensor(x, dtype=torch.long)
    return out


def prepended_bos(model: HookedTransformer) -> list[int]:
    """The BOS id ``model.to_tokens`` prepends, as a list (empty when it prepends none)."""
    tokenizer = model.tokenizer
    if not model.cfg.default_prepend_bos or tokenizer is None:
        return []
    return [int(tokenizer.bos_token_id)]  # type: ignore[arg-type]


@dataclass
class Batch:
    """Token tensors for a batch of rows (right-padded), as the metric sees them.

    ``last[b]`` is the index of the last real token of row b's clean prefix and ``mask`` marks
    real clean tokens. Under patch ablation ``patch_tokens`` has the same width as
    ``clean_tokens``; positions are aligned from the first token.
    """

    clean_tokens: Int[Tensor, "batch pos"]
    clean_answer: Int[Tensor, " batch"]
    last: Int[Tensor, " batch"]
    mask: Bool[Tensor, "batch pos"]
    patch_tokens: Int[Tensor, "batch pos"] | None = None
    patch_answer: Int[Tensor, " batch"] | None = None
    rows: Int[Tensor, " batch"] | None = None

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    def repeat(self, n: int) -> Batch:
        """``n`` copies stacked on the batch axis (copy j holds rows j*B .. j*B+B-1)."""

        def rep(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.repeat(n, *([1] * (t.dim() - 1)))

        fields: dict[str, Any] = {k: rep(v) for k, v in vars(self).items()}
        return Batch(**fields)

    def select(self, index: slice | Tensor) -> Batch:
        """The rows ``index`` (a slice, or a tensor of row indices, repeats allowed)."""
        fields: dict[str, Any] = {k: None if v is None else v[index] for k, v in vars(self).items()}
        return Batch(**fields)


@dataclass
class TokenizedDataset:
    """The whole dataset as one right-padded ``Batch``; ``batches`` slices it."""

    dataset: Dataset
    tokens: Batch

    @property
    def n_pos(self) -> int:
        return self.tokens.clean_tokens.shape[1]

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self.dataset), batch_size):
            yield self.tokens.select(slice(start, start + batch_size))

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self.dataset) // batch_size)


def tokenize(
    model: HookedTransformer, dataset: Dataset, *, same_length: bool, need_patch: bool
) -> TokenizedDataset:
    """Tokenize every row with ``model.to_tokens`` and check it.

    Args:
        model: a TransformerLens model with a tokenizer.
        dataset: validated rows.
        same_length: require every prefix (clean and patch, all rows) to have one token length,
            as templatic aggregation does (it averages per position).
        need_patch: tokenize the patch prefixes too (patch ablation).

    Raises ``ValueError`` naming the row for answers that are not one token and for length
    mismatches.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; load it with one to use text data")
    clean, patch, clean_ans, patch_ans = [], [], [], []

    def answer_id(text: str, i: int, which: str) -> int:
        ids = model.to_tokens(text, prepend_bos=False)[0]
        if len(ids) != 1:
            pieces = [tokenizer.decode([t]) for t in ids.tolist()]
            raise ValueError(
                f"{dataset.where(i)}: {which} {text!r} is {len(ids)} tokens {pieces} for this "
                "tokenizer; answers must be exactly one token"
            )
        return int(ids[0])

    for i, ex in enumerate(dataset.examples):
        c = model.to_tokens(ex.clean_prefix)[0]
        clean.append(c)
        clean_ans.append(
            NO_ANSWER
            if ex.clean_answer is None
            else answer_id(ex.clean_answer, i, "clean_answer" if dataset.is_pairs else "answer")
        )
        if dataset.is_pairs:
            patch_ans.append(answer_id(str(ex.patch_answer), i, "patch_answer"))
        if need_patch:
            if ex.patch_prefix is None:
                raise ValueError(f"{dataset.where(i)}: patch ablation needs a patch_prefix")
            p = model.to_tokens(ex.patch_prefix)[0]
            if same_length and len(p) != len(c):
                raise ValueError(
                    f"{dataset.where(i)}: clean_prefix is {len(c)} tokens but patch_prefix is "
                    f"{len(p)}; templatic aggregation patches position by position, so both "
                    "must have the same token length (or use aggregation='sum')"
                )
            patch.append(p)
        if same_length and len(c) != len(clean[0]):
            raise ValueError(
                f"{dataset.where(i)}: clean_prefix is {len(c)} tokens but row 0's is "
                f"{len(clean[0])}; templatic aggregation averages per position, so every row "
                "must have the same token length (or use aggregation='sum')"
            )
    width = max(len(t) for t in clean + patch)
    pad_id = tokenizer.pad_token_id or 0
    if not isinstance(pad_id, int):
        raise ValueError(f"the tokenizer's pad_token_id is {pad_id!r}, not a token id")
    device = model.cfg.device

    def pad(seqs: list[Tensor]) -> Tensor:
        return right_pad(seqs, pad_id, width).to(device)

    lengths = torch.tensor([len(t) for t in clean])
    mask = torch.arange(width)[None, :] < lengths[:, None]
    batch = Batch(
        clean_tokens=pad(clean),
        clean_answer=torch.tensor(clean_ans, device=device),
        last=(lengths - 1).to(device),
        mask=mask.to(device),
        patch_tokens=pad(patch) if need_patch else None,
        patch_answer=torch.tensor(patch_ans, device=device) if dataset.is_pairs else None,
        rows=torch.arange(len(clean), device=device),
    )
    return TokenizedDataset(dataset, batch)
