"""Metrics: scalar functions of the model's logits, one value per example.

A metric is called as ``metric(logits, batch)`` (or ``metric(logits)`` if it takes one argument)
and must return a ``[batch]`` tensor; effects are computed per example, so a metric that
averages over the batch would mix examples.

An ``ActivationMetric`` reads the activation at one hook instead of the logits (a probe's
logit, for SHIFT): ``forward_metric`` captures that hook and stops the forward after its
block, so every pass of node and edge attribution and of evaluation serves both kinds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from sfc_plugin.data import NO_ANSWER, Batch
from sfc_plugin.sites import stop_layer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Metric = Callable[[Float[Tensor, "batch pos d_vocab"], Batch], Float[Tensor, " batch"]]


@dataclass(frozen=True)
class ActivationMetric:
    """A metric of the activation at ``hook`` rather than of the logits:
    ``fn(activation, batch) -> [batch]`` (activation ``[batch, pos, ...]`` as the hook sees
    it, after any site written there)."""

    hook: str
    fn: Callable[[Tensor, Batch], Tensor]
    name: str = "activation metric"

    def __call__(self, activation: Tensor, batch: Batch) -> Tensor:
        return self.fn(activation, batch)


def read_hook(metric: Callable) -> str | None:
    """The hook an ``ActivationMetric`` reads; None for a metric of the logits."""
    return metric.hook if isinstance(metric, ActivationMetric) else None


def forward_metric(
    model: HookedTransformer,
    metric: Callable,
    batch: Batch,
    *,
    hooks: Sequence[tuple[Any, Callable]] = (),
    start: tuple[int, Tensor] | None = None,
) -> Float[Tensor, " batch"]:
    """``metric`` of one forward of ``batch.clean_tokens`` with ``hooks`` attached, or of the
    cached block input ``start = (layer, resid_pre)`` run from that block on. Right padding
    needs no mask. An ``ActivationMetric``'s hook is read after ``hooks`` have run there."""
    hook = read_hook(metric)
    seen: dict[str, Tensor] = {}
    stop = None
    fwd_hooks: list[Any] = list(hooks)
    if hook is not None:
        if hook not in model.hook_dict:
            raise ValueError(f"the metric reads {hook!r}, which is not a hook of this model")

        def capture(x: Tensor, hook) -> None:
            seen["x"] = x

        fwd_hooks.append((hook, capture))
        stop = stop_layer(hook, model.cfg.n_layers)
    with model.hooks(fwd_hooks=fwd_hooks):
        if start is None:
            out = model(batch.clean_tokens, stop_at_layer=stop, padding_side="right")
        else:
            layer, resid = start
            out = model(resid, start_at_layer=layer, stop_at_layer=stop, padding_side="right")
    return metric(seen["x"] if hook is not None else out, batch)


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
    if bool((batch.clean_answer == NO_ANSWER).any()):
        raise ValueError("some rows have no answer: give them one, or pass a metric of your own")
    logp = _last_logits(logits, batch).log_softmax(-1)
    return logp.gather(1, batch.clean_answer[:, None])[:, 0]


def resolve_metric(metric: Callable | None, is_pairs: bool) -> Metric:
    """The default metric for the data kind, or ``metric`` wrapped to check its output shape
    (an ``ActivationMetric`` stays one)."""
    if metric is None:
        return logit_diff if is_pairs else answer_logprob
    if not callable(metric):
        raise TypeError(f"metric must be callable, got {type(metric).__name__}")
    if isinstance(metric, ActivationMetric):
        return ActivationMetric(metric.hook, _checked(metric.fn), metric.name)
    return _checked(metric)


def _checked(metric: Callable) -> Metric:
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
