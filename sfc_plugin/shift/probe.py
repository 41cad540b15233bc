"""Linear probes on a frozen language model (METHOD.md section 7, step 1; paper section 4).

A probe reads one hook (default: the residual stream at the end of the penultimate layer),
averages it over each text's real tokens, and applies ``nn.Linear(d, 1)``: its logit is the
evidence for label 1. Training follows the reference's ``bib_shift`` notebook: AdamW, lr 1e-2,
one epoch, binary cross-entropy on the logit, seeded; the language model is never updated.

Pooling: the mean over non-padding tokens, without the BOS position when the model prepends
one. (The embedded model's BOS is an attention sink with a large, input-independent
activation; averaged in, it would add a length-dependent offset to every text.)

``pooled_activations`` is separate from training so activations can be computed once and
reused (``train_probe(..., activations=...)``), e.g. to retrain after an ablation is fixed;
``fwd_hooks`` run during the pass (an ablation, for SHIFT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from sfc_plugin.files import read_document, write_document
from sfc_plugin.sites import stop_layer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

SCHEMA = "sfc_plugin.probe"
SCHEMA_VERSION = 1

Hooks = Sequence[tuple[str, Callable]]


def default_probe_hook(model: HookedTransformer) -> str:
    """The residual stream at the end of the penultimate layer (the paper's probe input)."""
    return f"blocks.{max(model.cfg.n_layers - 2, 0)}.hook_resid_post"


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    out = list(texts)
    if not out:
        raise ValueError("texts is empty")
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a string")
    return out


def check_labels(labels: Sequence[int] | Tensor, n: int) -> Tensor:
    values = torch.as_tensor(labels).flatten()
    if len(values) != n:
        raise ValueError(f"{len(values)} labels for {n} texts")
    bad = ((values != 0) & (values != 1)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"labels[{i}] is {values[i].item()!r}; labels must be 0 or 1")
    return values.float()


def text_batches(model: HookedTransformer, texts: list[str], batch_size: int, max_tokens: int):
    """``(rows, tokens, mask)`` per batch: the texts' indices, right-padded tokens ``[b, pos]``
    (``max_tokens`` at most per text) and the positions to average (non-padding, BOS excluded
    when the model prepends one). Texts are batched in order of length, so little of each
    batch is padding; ``rows`` says where each row belongs."""
    first = 1 if model.cfg.default_prepend_bos else 0
    seqs = []
    for i, text in enumerate(texts):
        tokens = model.to_tokens(text, truncate=False)[0][:max_tokens]
        if len(tokens) <= first:
            raise ValueError(f"texts[{i}] ({text[:40]!r}) tokenizes to no tokens")
        seqs.append(tokens)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        length = max(len(seqs[i]) for i in rows)
        batch = torch.zeros(len(rows), length, dtype=torch.long, device=model.cfg.device)
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=model.cfg.device)
        for j, i in enumerate(rows):
            batch[j, : len(seqs[i])] = seqs[i]
            mask[j, first : len(seqs[i])] = True
        yield torch.tensor(rows), batch, mask


def pool(x: Float[Tensor, "b pos d"], mask: Tensor) -> Float[Tensor, "b d"]:
    """The probe's pooling: the mean of ``x`` over the positions ``mask`` marks."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1)


@torch.no_grad()
def pooled_activations(
    model: HookedTransformer,
    texts: Sequence[str],
    hook: str | None = None,
    *,
    fwd_hooks: Hooks = (),
    batch_size: int = 16,
    max_tokens: int = 256,
    progress: bool = True,
) -> Float[Tensor, "n d"]:
    """Mean over each text's real tokens (BOS excluded) of the activation at ``hook``
    (default ``default_probe_hook``), with ``fwd_hooks`` attached: ``[len(texts), d]``.
    The forward stops after the hook's block."""
    texts = check_texts(texts)
    hook = hook or default_probe_hook(model)
    if hook not in model.hook_dict:
        raise ValueError(f"hook {hook!r} is not a hook point of this model")
    stop = stop_layer(hook, model.cfg.n_layers)
    seen: dict[str, Tensor] = {}

    def grab(x: Tensor, hook) -> None:
        seen["x"] = x

    out: Tensor | None = None
    n_batches = -(-len(texts) // batch_size)
    for rows, tokens, mask in tqdm(
        text_batches(model, texts, batch_size, max_tokens),
        total=n_batches,
        disable=not progress or n_batches <= 1,
        desc=f"activations at {hook}",
    ):
        with model.hooks(fwd_hooks=[*fwd_hooks, (hook, grab)]):
            model(tokens, stop_at_layer=stop, padding_side="right")
        x = seen.pop("x").reshape(*tokens.shape, -1).float()
        if out is None:
            out = x.new_zeros(len(texts), x.shape[-1])
        out[rows.to(out.device)] = pool(x, mask)
    assert out is not None  # texts is not empty
    return out


@dataclass
class Probe:
    """A trained linear probe: ``logit = linear(mean activation at hook)``; label 1 when the
    logit is positive. ``settings`` records how it was trained."""

    linear: nn.Linear
    hook: str
    settings: dict[str, Any] = field(default_factory=dict)

    def logits_of(self, activations: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
        """Logits of pooled activations (``pooled_activations``)."""
        w = self.linear.weight
        return self.linear(activations.to(device=w.device, dtype=w.dtype))[:, 0]

    def logits(
        self, model: HookedTransformer, texts: Sequence[str], **options: Any
    ) -> Float[Tensor, " n"]:
        """Logits of ``texts``; ``options`` as in ``pooled_activations`` (e.g. ``fwd_hooks``)."""
        with torch.no_grad():
            return self.logits_of(pooled_activations(model, texts, self.hook, **options))

    def predict(self, model: HookedTransformer, texts: Sequence[str], **options: Any) -> Tensor:
        """Predicted labels (0/1, ``long``) of ``texts``."""
        return (self.logits(model, texts, **options) > 0).long()

    def accuracy(
        self,
        model: HookedTransformer,
        texts: Sequence[str],
        labels: Sequence[int] | Tensor,
        **options: Any,
    ) -> float:
        """Share of ``texts`` whose predicted label is ``labels``'."""
        texts = check_texts(texts)
        want = check_labels(labels, len(texts)).long()
        return float((self.predict(model, texts, **options).cpu() == want.cpu()).float().mean())

    def save(self, path: str | Path) -> None:
        """Write the probe as JSON (schema ``sfc_plugin.probe``, version 1), atomically."""
        body = {
            "hook": self.hook,
            "weight": self.linear.weight.detach().cpu()[0].tolist(),
            "bias": float(self.linear.bias.detach().cpu()[0]),
            "settings": self.settings,
        }
        write_document(path, SCHEMA, SCHEMA_VERSION, body)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Probe:
        """Read a probe written by ``save``; clear errors for other files and versions."""
        doc = read_document(path, SCHEMA, SCHEMA_VERSION, "probe", ("hook", "weight", "bias"))
        weight = torch.tensor(doc["weight"], dtype=torch.float32)
        linear = nn.Linear(len(weight), 1).to(device)
        with torch.no_grad():
            linear.weight.copy_(weight[None])
            linear.bias.fill_(doc["bias"])
        return cls(linear, doc["hook"], doc.get("settings", {}))


def train_probe(
    model: HookedTransformer | None,
    texts: Sequence[str] | None,
    labels: Sequence[int] | Tensor,
    *,
    hook: str | None = None,
    activations: Float[Tensor, "n d"] | None = None,
    fwd_hooks: Hooks = (),
    lr: float = 1e-2,
    epochs: int = 1,
    batch_size: int = 16,
    seed: int = 42,
    max_tokens: int = 256,
    progress: bool = True,
) -> Probe:
    """Train ``nn.Linear(d, 1)`` on pooled activations with AdamW (``lr``), ``epochs`` passes
    in a seeded random order of ``batch_size`` examples, BCE-with-logits; the model frozen
    (its activations are read in batches of ``pooled_activations``' default size).

    Args:
        model, texts: the language model and the texts (``activations`` replaces both).
        labels: 0/1 per text.
        hook: where the probe reads (default: the end of the penultimate layer).
        activations: ``pooled_activations`` computed already (``[n, d]``), e.g. shared by
            several probes; then ``hook`` must say where they were read.
        fwd_hooks: hooks attached while reading the activations (an ablation).
        seed: the probe's initialisation and the example order (``torch.manual_seed``).
    """
    if activations is None:
        if model is None or texts is None:
            raise ValueError("pass model and texts, or activations")
        texts = check_texts(texts)
        check_labels(labels, len(texts))  # before the model pass
        hook = hook or default_probe_hook(model)
        activations = pooled_activations(
            model,
            texts,
            hook,
            fwd_hooks=fwd_hooks,
            max_tokens=max_tokens,
            progress=progress,
        )
    elif hook is None:
        raise ValueError("with activations=, say which hook they were read at (hook=)")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    x = activations.detach().float()
    y = check_labels(labels, len(x)).to(x.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(x.shape[1], 1).to(x.device)
        optimizer = torch.optim.AdamW(linear.parameters(), lr=lr)
        loss_fn = nn.BCEWithLogitsLoss()
        for _ in range(epochs):
            order = torch.randperm(len(x)).to(x.device)
            for start in range(0, len(x), batch_size):
                rows = order[start : start + batch_size]
                optimizer.zero_grad()
                loss_fn(linear(x[rows])[:, 0], y[rows]).backward()
                optimizer.step()
    settings = dict(
        lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, n_examples=len(x), hook=hook
    )
    return Probe(linear, hook, settings)
