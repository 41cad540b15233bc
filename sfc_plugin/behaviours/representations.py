"""Representations of behaviour samples (METHOD.md section 8, step 2), chosen by name.

With ``m = log p(answer | context)`` at the last context position:

* ``"activations"``: the dense activation at each hook;
* ``"sae_activations"``: the SAE features at each site;
* ``"effects"``: the dense linear effect ``x * dm/dx`` (elementwise) at each hook;
* ``"sae_effects"``: the SAE linear effect ``f * dm/df`` (AtP of zero-ablating each feature,
  up to sign) at each site;

each at the ``"last"`` context position, summed over the ``"last_5"``, or summed over every
context position (``"sum"``; BOS left out: attention-sink activations would swamp every
cosine). Hooks are concatenated in forward order (``Representations.blocks``).

* ``"gradients"``: the gradient of ``-m`` with respect to the model's parameters (norms and
  embeddings excluded, as in the paper's runs), projected to ``n_projections`` dimensions by a
  sparse random operator (``SparseProjection``): ``D`` parameters, density ``1/sqrt(D)``.

SAE kinds are returned as a SciPy CSR matrix, the others dense. Samples are processed in
shards of ``samples_per_shard`` written to ``out/`` (atomically), so a rerun skips finished
shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse
import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.data import Batch, prepended_bos, right_pad
from sfc_plugin.files import check_run_settings, write_atomic
from sfc_plugin.metrics import answer_logprob
from sfc_plugin.sites import attach_saes, hook_sort_key, hook_widths, make_sites, stop_layer_for

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Kind = Literal["activations", "sae_activations", "effects", "sae_effects", "gradients"]
Positions = Literal["last", "last_5", "sum"]
KINDS: tuple[str, ...] = ("activations", "sae_activations", "effects", "sae_effects", "gradients")
POSITIONS: tuple[str, ...] = ("last", "last_5", "sum")
EXCLUDED_PARAMETERS = r"(^|\.)(embed|unembed|pos_embed|ln\w*|norm\w*)\."
"""Parameters left out of ``"gradients"``: embeddings, unembedding and every norm."""

Matrix = Any
"""A ``[n_samples, dim]`` matrix: a NumPy array, or a SciPy CSR matrix for SAE kinds."""


@dataclass
class Representations:
    """``values[i]`` represents sample ``i``; ``blocks`` names the column blocks in order
    (hook name and width, or ``("projection", n)``)."""

    values: Matrix
    kind: str
    positions: str | None
    blocks: list[tuple[str, int]]
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.values.shape[0]


def _check(kind: str, positions: str, saes: Mapping[str, SAE] | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown representation {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "gradients" and positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; choose one of {', '.join(POSITIONS)}")
    if kind.startswith("sae_") and not saes:
        raise ValueError(f"representation {kind!r} needs saes (hook name -> SAE)")


def _batch(
    model: HookedTransformer, contexts: Sequence[Sequence[int]], answers: Sequence[int]
) -> tuple[Batch, Tensor]:
    """The samples as a right-padded ``Batch`` (BOS + context; ``clean_answer`` the answer),
    and the ``[batch, pos]`` mask of the context positions that are pooled (BOS left out)."""
    bos = prepended_bos(model)
    rows = [bos + list(c) for c in contexts]
    lengths = torch.tensor([len(r) for r in rows])
    pos = torch.arange(int(lengths.max()))[None, :]
    mask = pos < lengths[:, None]
    device = model.cfg.device
    batch = Batch(
        clean_tokens=right_pad(rows).to(device),
        clean_answer=torch.tensor(list(answers)).to(device),
        last=(lengths - 1).to(device),
        mask=mask.to(device),
    )
    return batch, (mask & (pos >= len(bos))).to(device)


def _pool(
    x: Float[Tensor, "batch pos d"], last: Tensor, mask: Tensor, positions: str
) -> Float[Tensor, "batch d"]:
    """Per-sample vectors: the last context position, the sum of the last 5, or of all."""
    x = x.reshape(x.shape[0], x.shape[1], -1)
    if positions == "last":
        return x[torch.arange(x.shape[0], device=x.device), last]
    keep = mask.clone()
    if positions == "last_5":
        pos = torch.arange(x.shape[1], device=x.device)[None, :]
        keep &= pos > (last[:, None] - 5)
    return (x * keep[..., None].to(x.dtype)).sum(1)


def _dense_batch(
    model: HookedTransformer,
    hooks: list[str],
    kind: str,
    positions: str,
    batch: Batch,
    mask: Tensor,
) -> list[Tensor]:
    tokens, last = batch.clean_tokens, batch.last
    seen: dict[str, Tensor] = {}

    def capture(x: Tensor, hook) -> Tensor:
        if kind == "activations":
            seen[hook.name] = x.detach()
            return x
        leaf = x.detach().requires_grad_()
        seen[hook.name] = leaf
        return leaf + (x - x.detach())  # value x; the gradient reaches leaf and flows on

    fwd: list[tuple[Any, Callable]] = [(h, capture) for h in hooks]
    if kind == "activations":
        with torch.no_grad(), model.hooks(fwd_hooks=fwd):
            model(
                tokens,
                stop_at_layer=stop_layer_for(hooks, model.cfg.n_layers),
                padding_side="right",
            )
        return [_pool(seen[h], last, mask, positions) for h in hooks]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd):
        m = answer_logprob(model(tokens, padding_side="right"), batch).sum()
        grads = torch.autograd.grad(m, [seen[h] for h in hooks])
    return [_pool(seen[h].detach() * g, last, mask, positions) for h, g in zip(hooks, grads)]


def _sae_batch(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    kind: str,
    positions: str,
    batch: Batch,
    mask: Tensor,
) -> list[Tensor]:
    tokens, last = batch.clean_tokens, batch.last
    names = [s.hook_name for s in make_sites(model, saes)]
    if kind == "sae_activations":
        with torch.no_grad(), attach_saes(model, saes, grad=False) as acts:
            model(
                tokens,
                stop_at_layer=stop_layer_for(names, model.cfg.n_layers),
                padding_side="right",
            )
        return [_pool(acts.features[h], last, mask, positions) for h in names]
    with torch.enable_grad(), attach_saes(model, saes) as acts:
        m = answer_logprob(model(tokens, padding_side="right"), batch).sum()
        grads = torch.autograd.grad(m, [acts.features[h] for h in names])
    return [
        _pool(acts.features[h].detach() * g, last, mask, positions) for h, g in zip(names, grads)
    ]


def _distinct_rows(rows: int, s: int, n: int, g: torch.Generator) -> Tensor:
    """``[rows, s]`` int32 indices in ``[0, n)``, distinct within each row: uniform draws,
    rows with a repeat drawn again (rare when ``s * s << n``)."""
    index = torch.randint(n, (rows, s), generator=g, dtype=torch.int32)
    while s > 1:
        ordered = index.sort(dim=1).values
        again = (ordered[:, 1:] == ordered[:, :-1]).any(1).nonzero()[:, 0]
        if len(again) == 0:
            break
        index[again] = torch.randint(n, (len(again), s), generator=g, dtype=torch.int32)
    return index


class SparseProjection:
    """A sparse random operator from ``D`` parameters to ``n`` dimensions: each parameter
    entry is added, with a random sign, to ``s = max(1, round(n * density))`` random outputs
    (density ``1/sqrt(D)`` by default), scaled by ``1/sqrt(density)``; outputs sum a small
    random set of inputs, as in Li et al.'s very sparse random projections with the nonzeros
    per column fixed. Only the ``D * s`` output indices are stored (int32, their sign in a
    second array), never a ``D x n`` matrix. Deterministic under ``seed``."""

    def __init__(
        self, sizes: Sequence[int], n: int, density: float | None = None, seed: int = 0
    ) -> None:
        total = sum(sizes)
        self.n = n
        self.density = density if density is not None else 1 / math.sqrt(total)
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        self.per_entry = max(1, round(n * self.density))
        self.scale = 1 / math.sqrt(self.density)
        g = torch.Generator().manual_seed(seed)
        self.index: list[Tensor] = []
        self.sign: list[Tensor] = []
        if self.per_entry > n:
            raise ValueError(f"density {self.density} puts more than n={n} nonzeros per entry")
        for size in sizes:
            self.index.append(_distinct_rows(size, self.per_entry, n, g).reshape(-1))
            m = size * self.per_entry
            self.sign.append(torch.randint(2, (m,), generator=g, dtype=torch.int8) * 2 - 1)

    @property
    def nbytes(self) -> int:
        return sum(i.numel() * 4 + s.numel() for i, s in zip(self.index, self.sign))

    def __call__(self, parts: Sequence[Tensor]) -> Float[Tensor, " n"]:
        """The projection of one vector given as its per-parameter parts (any shapes)."""
        out = torch.zeros(self.n, dtype=torch.float32)
        for part, index, sign in zip(parts, self.index, self.sign):
            flat = part.detach().reshape(-1).float().cpu()
            values = flat.repeat_interleave(self.per_entry) * sign
            out.index_add_(0, index.long(), values)
        return out * self.scale


def gradient_parameters(
    model: HookedTransformer, exclude: str = EXCLUDED_PARAMETERS
) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs whose gradients ``"gradients"`` projects."""
    pattern = re.compile(exclude)
    return [(n, p) for n, p in model.named_parameters() if not pattern.search(n)]


def _gradient_batch(
    model: HookedTransformer,
    params: list[torch.nn.Parameter],
    projection: SparseProjection,
    batch: Batch,
) -> list[Tensor]:
    rows = []
    for i in range(len(batch)):
        one = batch.select(slice(i, i + 1))
        with torch.enable_grad():
            logits = model(one.clean_tokens[:, : int(one.last[0]) + 1])
            grads = torch.autograd.grad(-answer_logprob(logits, one).sum(), params)
        rows.append(projection(grads))
    return [torch.stack(rows)]


def represent(
    model: HookedTransformer,
    samples: pd.DataFrame,
    kind: Kind = "sae_effects",
    *,
    saes: Mapping[str, SAE] | None = None,
    hooks: Sequence[str] | None = None,
    positions: Positions = "sum",
    n_projections: int = 30_000,
    density: float | None = None,
    exclude: str = EXCLUDED_PARAMETERS,
    seed: int = 0,
    batch_size: int = 16,
    samples_per_shard: int = 1024,
    out: str | Path | None = None,
    progress: bool = True,
) -> Representations:
    """Represent each sample of ``samples`` (``behaviours.samples``) by ``kind``.

    Args:
        model: the model the samples came from.
        samples: needs columns ``context_tokens`` and ``answer_token``.
        kind: a name of ``KINDS`` (module docstring).
        saes: hook name -> SAE, for the ``sae_`` kinds; for dense kinds their hooks are the
            default ``hooks``.
        hooks: hooks of the dense kinds; default the SAEs' hooks, else every
            ``blocks.L.hook_resid_post``.
        positions: ``"last"``, ``"last_5"`` or ``"sum"`` (not used by ``"gradients"``).
        n_projections, density, exclude, seed: the ``"gradients"`` projection: output
            dimensions, nonzero density (default ``1/sqrt(D)``), a regex of parameter names
            left out, the projection's seed.
        batch_size: samples per forward (``"gradients"``: one backward per sample).
        samples_per_shard, out: results are written per shard to ``out/`` and reused.

    Returns:
        ``Representations`` with ``values`` ``[n_samples, dim]``.
    """
    _check(kind, positions, saes)
    for col in ("context_tokens", "answer_token"):
        if col not in samples.columns:
            raise ValueError(f"samples lack the column {col!r} (make them with behaviours.samples)")
    if len(samples) == 0:
        raise ValueError("no samples to represent")
    start = time.perf_counter()
    trained: list[torch.nn.Parameter] = []  # parameters whose gradients are taken
    if kind.startswith("sae_"):
        assert saes is not None
        blocks = [(s.hook_name, s.d_sae) for s in make_sites(model, saes)]
        chosen = saes

        def work(b: Batch, mask: Tensor) -> list[Tensor]:
            return _sae_batch(model, chosen, kind, positions, b, mask)

    elif kind == "gradients":
        trained = [p for _, p in gradient_parameters(model, exclude)]
        if not trained:
            raise ValueError(f"every parameter matches exclude={exclude!r}")
        projection = SparseProjection([p.numel() for p in trained], n_projections, density, seed)
        blocks = [("projection", n_projections)]

        def work(b: Batch, mask: Tensor) -> list[Tensor]:
            return _gradient_batch(model, trained, projection, b)

    else:
        names = list(hooks) if hooks else _default_hooks(model, saes)
        missing = [h for h in names if h not in model.hook_dict]
        if missing:
            raise ValueError(f"hooks {missing} are not hooks of this model")
        names.sort(key=hook_sort_key)
        blocks = list(hook_widths(model, names).items())

        def work(b: Batch, mask: Tensor) -> list[Tensor]:
            return _dense_batch(model, names, kind, positions, b, mask)

    settings = {
        "model": getattr(model.cfg, "model_name", None),
        "kind": kind,
        "positions": None if kind == "gradients" else positions,
        "blocks": blocks,
        "n_samples": len(samples),
        "samples_digest": _digest(samples),
    }
    if kind == "gradients":
        settings.update(n_projections=n_projections, density=density, exclude=exclude, seed=seed)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        check_run_settings(out_dir, settings, "representations")
    sparse = kind.startswith("sae_")
    parts: list[Matrix] = []
    contexts = list(samples.context_tokens)
    answers = list(samples.answer_token)
    bar = tqdm(total=len(samples), desc=f"{kind} ({positions})", disable=not progress)
    old_flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    try:
        for k, lo in enumerate(range(0, len(samples), samples_per_shard)):
            hi = min(lo + samples_per_shard, len(samples))
            path = out_dir / f"shard_{k:05d}.npz" if out_dir is not None else None
            if path is not None and path.exists():
                parts.append(_load(path, sparse))
                bar.update(hi - lo)
                continue
            rows = []
            for b in range(lo, hi, batch_size):
                e = min(b + batch_size, hi)
                vectors = work(*_batch(model, contexts[b:e], answers[b:e]))
                vectors = torch.cat([v.float().cpu() for v in vectors], dim=-1)
                rows.append(scipy.sparse.csr_matrix(vectors.numpy()) if sparse else vectors.numpy())
                bar.update(e - b)
            shard = scipy.sparse.vstack(rows, format="csr") if sparse else np.concatenate(rows)
            if path is not None:
                _save(path, shard)
            parts.append(shard)
    finally:
        for p, flag in zip(model.parameters(), old_flags):
            p.requires_grad_(flag)
        bar.close()
    values = scipy.sparse.vstack(parts, format="csr") if sparse else np.concatenate(parts)
    return Representations(
        values=values,
        kind=kind,
        positions=None if kind == "gradients" else positions,
        blocks=blocks,
        seconds=time.perf_counter() - start,
        settings=settings,
    )


def _default_hooks(model: HookedTransformer, saes: Mapping[str, SAE] | None) -> list[str]:
    if saes:
        return [s.hook_name for s in make_sites(model, saes)]
    return [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]


def _digest(samples: pd.DataFrame) -> str:
    payload = json.dumps([list(map(int, c)) for c in samples.context_tokens])
    payload += json.dumps([int(a) for a in samples.answer_token])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _save(path: Path, shard: Matrix) -> None:
    buffer = io.BytesIO()
    if scipy.sparse.issparse(shard):
        scipy.sparse.save_npz(buffer, shard)
    else:
        np.savez(buffer, values=shard)
    write_atomic(path, buffer.getvalue())


def _load(path: Path, sparse: bool) -> Matrix:
    if sparse:
        return scipy.sparse.load_npz(path).tocsr()
    with np.load(path) as f:
        return f["values"]
