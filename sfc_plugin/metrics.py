"""Metrics: scalar functions of the model's logits, one value per example.

A metric is called as ``metric(logits, batch)`` (or ``metric(logits)`` if it takes one argument)
and must return a ``[batch]`` tensor; effects are computed per example, so a metric that
averages over the batch would mix examples.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from sfc_plugin.data import Batch

Metric = Callable[[Float[Tensor, "batch pos d_vocab"], Batch], Float[Tensor, " batch"]]


def _last_logits(logits: Tensor, batch: Batch) -> Float[Tensor, "batch d_vocab"]:
    return logits[torch.arange(logits.shape[0], device=logits.device), batch.last]


def logit_diff(logits: Float[Tensor, "batch pos d_vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """logit(patch_answer) - logit(clean_answer) at the last clean token (default for pairs)."""
    if batch.patch_answer is None:
        raise ValueError("logit_diff needs contrastive pairs (a patch_answer per row)")
    last = _last_logits(logits, batch)
    return (
        last.gather(1, batch.patch_answer[:, None])[:, 0]
        - last.gather(1, batch.clean_answer[:, None])[:, 0]
    )


def answer_logprob(
    logits: Float[Tensor, "batch pos d_vocab"], batch: Batch
) -> Float[Tensor, " batch"]:
    """log p(clean_answer) at the last clean token (default for single inputs)."""
    logp = _last_logits(logits, batch).log_softmax(-1)
    return logp.gather(1, batch.clean_answer[:, None])[:, 0]


def resolve_metric(metric: Callable | None, is_pairs: bool) -> Metric:
    """The default metric for the data kind, or ``metric`` wrapped to check its output shape."""
    if metric is None:
        return logit_diff if is_pairs else answer_logprob
    if not callable(metric):
        raise TypeError(f"metric must be callable, got {type(metric).__name__}")
    try:
        n_params = len(inspect.signature(metric).parameters)
    except (TypeError, ValueError):
        n_params = 2
    base = (lambda logits, batch: metric(logits)) if n_params == 1 else metric

    def checked(logits: Tensor, batch: Batch) -> Tensor:
        out = base(logits, batch)
        if not isinstance(out, Tensor) or out.shape != (logits.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"metric must return one value per example, shape ({logits.shape[0]},); got "
                f"{shape}. Return per-example values, not a batch mean."
            )
        return out

    return checked
