"""How good is a dictionary? Reconstruction and sparsity of SAEs and transcoders on held-out
text.

For each dictionary, over the real tokens of held-out texts (BOS positions excluded: the BOS
activation is an attention-sink outlier that SAEs are not trained on, and it is kept as is
when a dictionary is spliced in). ``x`` is the written activation (for a transcoder, the MLP
output) and ``x_hat`` the dictionary's prediction of it (``sites.prediction``: for a
transcoder, from the MLP's input, skip term included):

* ``variance_explained``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``;
* ``ce_recovered``: ``(L_zero - L_sae) / (L_zero - L_clean)``, where ``L`` is the model's
  next-token loss with the site's activation left alone (clean), replaced by ``x_hat`` (this
  dictionary alone; for a transcoder, the MLP replaced by it), or zeroed;
* ``l0``: mean number of active features per token;
* ``dead_fraction``: share of features that never fire on the sample.

    sfc quality --saes smollm2-135m-sfc --out docs/sae_quality.md
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.datasets.text import token_batches
from sfc_plugin.sites import encode, make_sites, prediction

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@torch.no_grad()
def sae_quality(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    texts: Iterable[str],
    *,
    context: int = 128,
    batch_size: int = 16,
    max_tokens: int = 100_000,
    ce_tokens: int = 16_384,
) -> pd.DataFrame:
    """One row per SAE: hook_name, d_sae, variance_explained, ce_recovered (and the three
    losses), l0, dead_fraction, tokens, ce_tokens.

    Reconstruction and sparsity use up to ``max_tokens`` tokens (one forward per batch); the
    CE losses, which need two more forwards per SAE, use the first ``ce_tokens`` (0: none,
    the CE columns are NaN).

    Not ``sae_lens.run_evals``: it drops special tokens by id, not the BOS position; its
    zero-ablation also zeroes the BOS position, so ``ce_recovered`` differs on models that
    prepend BOS; its explained variance and L0 formulas changed inside the SAELens range we
    allow (by 6.50 and 6.54); it runs the model once per SAE, not once per batch for all SAEs;
    and it needs an ``ActivationsStore`` (full batches only: it wraps around the data) and two
    classes ``sae_lens`` does not export (``EvalConfig``, ``ActivationScaler``).
    """
    sites = make_sites(model, saes)
    first = 1 if model.cfg.default_prepend_bos else 0
    stats = {s.hook_name: _SiteStats() for s in sites}
    loss_clean = 0.0
    loss_zero = {s.hook_name: 0.0 for s in sites}
    n_tokens = n_pred = 0
    for tokens in tqdm(token_batches(model, texts, context, batch_size), desc="SAE quality"):
        tokens = tokens.to(model.cfg.device)
        starts = [f"blocks.{s.layer}.hook_resid_pre" for s in sites if s.layer is not None]
        reads = [s.read_hook for s in sites]
        logits, cache = model.run_with_cache(tokens, names_filter=list(stats) + reads + starts)
        assert isinstance(logits, Tensor)  # return_type "logits", the default
        with_ce = n_pred < ce_tokens
        if with_ce:
            loss_clean += float(_loss_sum(logits, tokens, first))
            n_pred += tokens.shape[0] * (tokens.shape[1] - 1 - first)
        for site in sites:
            st = stats[site.hook_name]
            x_in, x = cache[site.read_hook], cache[site.hook_name]
            f, _ = encode(site, x_in, x)
            x_hat = prediction(site, f, x_in)
            x_flat = x.reshape(*x.shape[:2], -1)[:, first:]
            st.sse += float((x_flat - x_hat[:, first:]).pow(2).sum())
            st.sum_x = st.sum_x + x_flat.sum((0, 1))
            st.sum_x2 += float(x_flat.pow(2).sum())
            active = f[:, first:] > 0
            st.l0 += float(active.sum())
            fired = active.any(0).any(0)
            st.fired = fired if st.fired is None else st.fired | fired
            if with_ce:
                recon = x_hat.reshape(x.shape)
                for value, zero in ((recon, False), (torch.zeros_like(x), True)):
                    loss = float(
                        _loss_sum(
                            _run_replaced(model, cache, tokens, site, value, first), tokens, first
                        )
                    )
                    if zero:
                        loss_zero[site.hook_name] += loss
                    else:
                        st.loss_sae += loss
        n_tokens += tokens.shape[0] * (tokens.shape[1] - first)
        if n_tokens >= max_tokens:
            break
    rows = []
    for site in sites:
        st = stats[site.hook_name]
        assert st.fired is not None  # every site saw at least one batch
        total_var = st.sum_x2 - float(torch.as_tensor(st.sum_x).pow(2).sum()) / n_tokens
        per = 1 / n_pred if n_pred else float("nan")  # ce_tokens=0: no CE losses
        l_clean, l_sae, l_zero = (
            loss_clean * per,
            st.loss_sae * per,
            loss_zero[site.hook_name] * per,
        )
        rows.append(
            dict(
                hook_name=site.hook_name,
                d_sae=site.d_sae,
                variance_explained=1 - st.sse / total_var,
                ce_recovered=(l_zero - l_sae) / (l_zero - l_clean),
                ce_clean=l_clean,
                ce_sae=l_sae,
                ce_zero=l_zero,
                l0=st.l0 / n_tokens,
                dead_fraction=1 - float(st.fired.float().mean()),
                tokens=n_tokens,
                ce_tokens=n_pred,
            )
        )
    return pd.DataFrame(rows)


@dataclass
class _SiteStats:
    """Running sums of one site over the sample (non-BOS tokens)."""

    sse: float = 0.0
    sum_x: Tensor | float = 0.0
    sum_x2: float = 0.0
    l0: float = 0.0
    fired: Tensor | None = None
    loss_sae: float = 0.0


def _run_replaced(model, cache, tokens: Tensor, site, value: Tensor, first: int) -> Tensor:
    """Logits with the site's activation replaced by ``value`` (BOS position kept), run from
    the site's block on the cached residual stream when the site is in a block."""

    def hook(x: Tensor, hook) -> Tensor:
        x = x.clone()
        x[:, first:] = value[:, first:]
        return x

    with model.hooks(fwd_hooks=[(site.hook_name, hook)]):
        if site.layer is None:
            return model(tokens)
        resid = cache[f"blocks.{site.layer}.hook_resid_pre"]
        return model(resid, start_at_layer=site.layer)


def _loss_sum(logits: Tensor, tokens: Tensor, first: int) -> Tensor:
    """Summed next-token loss over predictions made from non-BOS positions."""
    logp = logits[:, first:-1].log_softmax(-1)
    return -logp.gather(-1, tokens[:, first + 1 :, None]).sum()


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table (floats to 3 decimals) without the optional ``tabulate`` dependency."""

    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def write_quality_table(table: pd.DataFrame, out: str | Path) -> None:
    """Write ``table`` as a Markdown pipe table to ``out`` and as CSV beside it (same name,
    ``.csv``), as ``docs/sae_quality.md`` and ``docs/sae_quality.csv`` are made."""
    out = Path(out)
    table.to_csv(out.with_suffix(".csv"), index=False)
    out.write_text(markdown_table(table) + "\n")
