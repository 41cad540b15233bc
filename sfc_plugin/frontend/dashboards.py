"""Feature dashboards: what a feature fires on and what it writes to the logits.

For every feature of a set of SAEs, one pass over a held-out text sample (by default the
bundled ``resources/corpus_sample.jsonl``) collects

* the **top-k activating contexts**: a running top-k per feature over all (row, position)
  pairs, merged with each batch's top-k, together with the feature's activations in a window
  of tokens around each one (for colouring);
* an **activation histogram** over fixed log-spaced bins (``EDGES``: 1e-3 .. 1e3, ten per
  decade, plus an underflow and an overflow bin) of the positions where the feature fires
  (activation > 0), accumulated with ``scatter_add``; its sum is the feature's firing count;

and, from the weights alone, the **output tokens** the decoder direction promotes and
suppresses: the top and bottom entries of ``W_dec[i] @ W_U`` (``attn.hook_z`` directions go
through ``W_O``, ``mlp.hook_post`` directions through ``W_out``). This is the feature's direct
effect on the logits, ignoring the final normalisation: the embedded model is loaded with
``fold_ln=True``, so its final RMSNorm weight is folded into ``W_U`` and the numbers are the
direct logit effect up to the norm's per-token scale ``1 / rms(x)``.

BOS positions are excluded everywhere (position 0 of every row when the model prepends BOS): the
BOS activation is an attention-sink outlier that would dominate every top-k list.

The result, a :class:`FeatureIndex`, is computed once per SAE set and cached on disk under
``cache_dir()/dashboards/<key>/``; the key hashes the SAE weights, configs and hook names, the
sample file's content, the model name, ``context``, ``max_tokens``, ``k`` and ``window``. The
cache entry is written in a temporary directory and renamed into place, so an interrupted
build never leaves a broken entry. :func:`feature_dashboard` renders one feature as a
:class:`Dashboard` (HTML for notebooks and files from ``templates/dashboard.html`` and
``assets/dashboard.css``, ``to_dict()`` for other pages).

HTML is offline: token colouring uses CircuitsVis' ``colored_tokens``, whose
``RenderedHTML.local_src`` inlines the CircuitsVis JavaScript bundle (1.3 MB) in every
visualisation, while its ``str()`` / ``show_code()`` import the bundle from a CDN, and its
``_repr_html_`` picks between the two by pinging a web site. We take ``local_src``, strip the
bundle from each context and include it once per page (:func:`circuitsvis_script`).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import circuitsvis
import torch
from circuitsvis.tokens import colored_tokens
from jaxtyping import Float, Int
from markupsafe import Markup
from sae_lens import SAE
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.loading_from_pretrained import get_official_model_name

from sfc_plugin.datasets.text import SAMPLE, read_texts, token_batches
from sfc_plugin.frontend.templating import render_template, visible
from sfc_plugin.models import EMBEDDED_MODEL, is_embedded_model, load_model
from sfc_plugin.models.cache import cache_dir, ensure_cache_entry
from sfc_plugin.nodes import node_id
from sfc_plugin.sites import Site, encode, hook_sort_key, make_sites

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "EDGES",
    "Context",
    "ContextView",
    "Dashboard",
    "FeatureIndex",
    "SiteStats",
    "TokenEffect",
    "build_feature_index",
    "circuitsvis_script",
    "feature_dashboard",
    "feature_index",
    "index_key",
]

EDGES: Float[Tensor, " edges"] = torch.logspace(-3, 3, 61)
"""Histogram bin edges. Bin 0 holds activations in (0, 1e-3), bin ``i`` holds
``[EDGES[i-1], EDGES[i])`` and the last bin holds ``>= 1e3``."""

_FORMAT = 1
_TENSORS_FILE = "index.safetensors"
_META_FILE = "index.json"


class Context(NamedTuple):
    """One top-activating position of the sample: ``(activation, row, pos)``."""

    activation: float
    row: int
    pos: int


@dataclass(frozen=True)
class TokenEffect:
    """An output token and the direct logit effect ``W_dec[i] @ W_U`` on it."""

    token: str
    id: int
    value: float


@dataclass(frozen=True)
class ContextView:
    """A top-activating context ready to show: ``tokens[focus]`` is the max-activating token."""

    activation: float
    row: int
    pos: int
    tokens: list[str]
    values: list[float]
    focus: int


@dataclass
class SiteStats:
    """Everything the index holds for the features of one site (``d_sae`` rows each)."""

    top_values: Float[Tensor, "d_sae k"]  # descending; entries <= 0 are padding
    top_index: Int[Tensor, "d_sae k"]  # row * context + pos
    top_windows: Float[Tensor, "d_sae k window"]  # activations around pos, NaN off the row
    hist: Int[Tensor, "d_sae bins"]
    promoted_ids: Int[Tensor, "d_sae k_out"]
    promoted_values: Float[Tensor, "d_sae k_out"]
    suppressed_ids: Int[Tensor, "d_sae k_out"]
    suppressed_values: Float[Tensor, "d_sae k_out"]


def _field_names() -> list[str]:
    return [f.name for f in fields(SiteStats)]


# ------------------------------------------------------------------------------- the index


@dataclass
class FeatureIndex:
    """Top contexts, histograms and output tokens of every feature of a set of SAEs.

    ``tokens`` are the sample rows that were scanned (each starts with BOS iff ``first`` is
    1); ``vocab`` maps the token ids that occur in them or among the output tokens to strings.
    """

    stats: dict[str, SiteStats]
    tokens: Int[Tensor, "row context"]
    vocab: dict[int, str]
    first: int
    window: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def sites(self) -> list[str]:
        """Hook names, in forward order."""
        return list(self.stats)

    @property
    def n_tokens(self) -> int:
        """Number of (non-BOS) token positions scanned."""
        return self.tokens.shape[0] * (self.tokens.shape[1] - self.first)

    def _site(self, site: str, feature: int) -> SiteStats:
        if site not in self.stats:
            raise KeyError(f"site {site!r} is not in this index; sites: {self.sites}")
        d_sae = self.stats[site].hist.shape[0]
        if not 0 <= feature < d_sae:
            raise IndexError(f"feature {feature} out of range for {site} (d_sae={d_sae})")
        return self.stats[site]

    def top_contexts(self, site: str, feature: int, k: int | None = None) -> list[Context]:
        """The (up to) ``k`` positions where the feature is largest, descending; only
        positions where it fires."""
        st = self._site(site, feature)
        width = self.tokens.shape[1]
        out = []
        for value, index in zip(st.top_values[feature].tolist(), st.top_index[feature].tolist()):
            if value <= 0 or (k is not None and len(out) == k):
                break
            out.append(Context(value, index // width, index % width))
        return out

    def _span(self, pos: int, window: tuple[int, int] | None) -> tuple[int, int]:
        before, after = window or self.window
        return max(self.first, pos - before), min(self.tokens.shape[1] - 1, pos + after)

    def context_tokens(
        self, row: int, pos: int, window: tuple[int, int] | None = None
    ) -> list[str]:
        """String tokens of ``row`` from ``pos - before`` to ``pos + after`` (``window``,
        default the index's), clipped to the row, BOS excluded."""
        lo, hi = self._span(pos, window)
        return [self.vocab[t] for t in self.tokens[row, lo : hi + 1].tolist()]

    def context_values(
        self, site: str, feature: int, rank: int, window: tuple[int, int] | None = None
    ) -> list[float]:
        """The feature's activations over the tokens of ``context_tokens`` for its
        ``rank``-th top context (``window`` at most the index's)."""
        st = self._site(site, feature)
        before, after = window or self.window
        if before > self.window[0] or after > self.window[1]:
            raise ValueError(f"window {window} is wider than the stored one {self.window}")
        row = st.top_windows[feature, rank, self.window[0] - before : self.window[0] + after + 1]
        return [v for v in row.float().tolist() if v == v]  # NaN: off the row or BOS

    def histogram(
        self, site: str, feature: int
    ) -> tuple[Int[Tensor, " bins"], Float[Tensor, " edges"]]:
        """Counts of the feature's non-zero activations per bin, and the bin edges
        (``EDGES``; ``len(counts) == len(edges) + 1``)."""
        return self._site(site, feature).hist[feature].clone(), EDGES.clone()

    def firing_counts(self, site: str) -> Int[Tensor, " d_sae"]:
        """Number of scanned tokens on which each feature of ``site`` fires."""
        return self.stats[site].hist.sum(1)

    def output_tokens(
        self, site: str, feature: int, k: int | None = None
    ) -> tuple[list[TokenEffect], list[TokenEffect]]:
        """``(promoted, suppressed)``: the ``k`` largest and smallest entries of
        ``W_dec[feature] @ W_U`` (empty if the site's directions don't live in the residual
        stream)."""
        st = self._site(site, feature)

        def effects(ids: Tensor, values: Tensor) -> list[TokenEffect]:
            pairs = list(zip(ids[feature].tolist(), values[feature].tolist()))[:k]
            return [TokenEffect(self.vocab[i], i, v) for i, v in pairs]

        return (
            effects(st.promoted_ids, st.promoted_values),
            effects(st.suppressed_ids, st.suppressed_values),
        )

    def dashboard(
        self,
        site: str,
        feature: int,
        *,
        n_contexts: int = 10,
        n_outputs: int = 10,
        window: tuple[int, int] | None = None,
    ) -> Dashboard:
        """The dashboard of one feature (data and HTML)."""
        contexts = []
        for rank, (act, row, pos) in enumerate(self.top_contexts(site, feature, n_contexts)):
            lo, _ = self._span(pos, window)
            contexts.append(
                ContextView(
                    act,
                    row,
                    pos,
                    self.context_tokens(row, pos, window),
                    self.context_values(site, feature, rank, window),
                    pos - lo,
                )
            )
        counts, edges = self.histogram(site, feature)
        promoted, suppressed = self.output_tokens(site, feature, n_outputs)
        return Dashboard(
            site=site,
            feature=feature,
            n_tokens=self.n_tokens,
            fired=int(counts.sum()),
            contexts=contexts,
            histogram=counts.tolist(),
            edges=edges.tolist(),
            promoted=promoted,
            suppressed=suppressed,
        )

    def save(self, path: str | Path) -> None:
        """Write the index to the directory ``path`` (safetensors + JSON)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"tokens": self.tokens.to(torch.int32).contiguous()}
        for site, st in self.stats.items():
            for name in _field_names():
                tensors[f"{site}/{name}"] = getattr(st, name).contiguous()
        save_file(tensors, str(path / _TENSORS_FILE))
        meta = {
            **self.meta,
            "format": _FORMAT,
            "sites": self.sites,
            "first": self.first,
            "window": list(self.window),
            "vocab": {str(i): s for i, s in self.vocab.items()},
        }
        (path / _META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path) -> FeatureIndex:
        """Read an index written by :meth:`save`."""
        path = Path(path)
        meta = json.loads((path / _META_FILE).read_text())
        tensors = load_file(str(path / _TENSORS_FILE))
        stats = {
            site: SiteStats(**{name: tensors[f"{site}/{name}"] for name in _field_names()})
            for site in meta.pop("sites")
        }
        return cls(
            stats=stats,
            tokens=tensors["tokens"].long(),
            vocab={int(i): s for i, s in meta.pop("vocab").items()},
            first=meta.pop("first"),
            window=tuple(meta.pop("window")),
            meta=meta,
            path=path,
        )


# ---------------------------------------------------------------------------- building it


class _Accumulator:
    """Streaming top-k, windows and histogram of one site's features."""

    def __init__(
        self, d_sae: int, k: int, window: tuple[int, int], first: int, device: str | torch.device
    ) -> None:
        self.k, self.window, self.first = k, window, first
        n_win = window[0] + window[1] + 1
        self.values = torch.full((d_sae, k), -torch.inf, device=device)
        self.index = torch.full((d_sae, k), -1, dtype=torch.long, device=device)
        self.windows = torch.full((d_sae, k, n_win), torch.nan, device=device)
        self.edges = EDGES.to(device)
        self.hist = torch.zeros(d_sae * (len(EDGES) + 1), dtype=torch.long, device=device)

    def update(self, f: Float[Tensor, "batch pos d_sae"], row0: int) -> None:
        """Merge a batch of activations whose first row is sample row ``row0``."""
        _, width, d_sae = f.shape
        body = f[:, self.first :].reshape(-1, d_sae)  # [rows * (width - first), d_sae]
        # Histogram of the firing positions.
        tok, feat = torch.nonzero(body > 0, as_tuple=True)
        bins = torch.bucketize(body[tok, feat], self.edges, right=True)
        self.hist.scatter_add_(0, feat * (len(EDGES) + 1) + bins, torch.ones_like(bins))
        # This batch's top-k with their windows, then merge with the running top-k.
        values, flat = body.topk(min(self.k, body.shape[0]), dim=0)  # [kk, d_sae]
        b, p = flat // (width - self.first), flat % (width - self.first) + self.first
        offsets = torch.arange(-self.window[0], self.window[1] + 1, device=f.device)
        pos = p[..., None] + offsets  # [kk, d_sae, n_win]
        feature = torch.arange(d_sae, device=f.device)[None, :, None]
        windows = f[b[..., None], pos.clamp(self.first, width - 1), feature]
        windows = windows.masked_fill((pos < self.first) | (pos >= width), torch.nan)
        values = torch.cat([self.values, values.T], 1)
        index = torch.cat([self.index, ((row0 + b) * width + p).T], 1)
        windows = torch.cat([self.windows, windows.permute(1, 0, 2)], 1)
        self.values, keep = values.topk(self.k, dim=1)
        self.index = index.gather(1, keep)
        self.windows = windows.gather(1, keep[..., None].expand(-1, -1, windows.shape[-1]))


_RESIDUAL_HOOKS = re.compile(
    r"(hook_embed|hook_pos_embed|hook_resid_(pre|mid|post)|hook_(attn|mlp)_out|hook_mlp_in"
    r"|ln_final\.hook_normalized)$"
)


def _residual_directions(model, site: Site) -> Float[Tensor, "d_sae d_model"] | None:
    """The decoder directions as residual-stream vectors (``hook_z`` through ``W_O``,
    ``mlp.hook_post`` through ``W_out``), or None for other sites (e.g. ``hook_q``)."""
    w_dec = site.sae.W_dec.detach().float()
    if site.hook_name.endswith("attn.hook_z"):
        w_o = model.blocks[site.layer].attn.W_O.detach().float()  # [head, d_head, d_model]
        return torch.einsum("fhd,hdm->fm", w_dec.reshape(-1, *w_o.shape[:2]), w_o)
    if site.hook_name.endswith("mlp.hook_post"):
        return w_dec @ model.blocks[site.layer].mlp.W_out.detach().float()
    return w_dec if _RESIDUAL_HOOKS.search(site.hook_name) else None


def _output_tokens(model, site: Site, k: int, chunk: int = 256) -> dict[str, Tensor]:
    """The ``promoted_*`` / ``suppressed_*`` fields of :class:`SiteStats`: top-k and bottom-k
    token ids and values of ``W_dec @ W_U`` (``[d_sae, k]``, or ``[d_sae, 0]`` if the site's
    directions are not residual-stream vectors), computed ``chunk`` features at a time."""
    names = ("promoted_ids", "promoted_values", "suppressed_ids", "suppressed_values")
    dirs = _residual_directions(model, site)
    if dirs is None:
        empty = torch.zeros(site.d_sae, 0)
        return dict(zip(names, (empty.int(), empty, empty.int(), empty)))
    w_u = model.W_U.detach().float()
    parts = []
    for block in dirs.to(w_u.device).split(chunk):
        logits = block @ w_u
        top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        parts.append((top.indices.int(), top.values, bottom.indices.int(), bottom.values))
    return {name: torch.cat(p).cpu() for name, p in zip(names, zip(*parts))}


@torch.no_grad()
def build_feature_index(
    model,
    saes: Mapping[str, SAE],
    sample: str | Path = SAMPLE,
    *,
    context: int = 128,
    batch_size: int = 16,
    max_tokens: int = 200_000,
    k: int = 20,
    window: tuple[int, int] = (24, 8),
    progress: bool = True,
) -> FeatureIndex:
    """Scan ``sample`` once for all SAEs and return the index (uncached; see the module
    docstring and :func:`feature_index`).

    ``sample``: a JSONL file of ``{"text": ...}``, cut into ``context``-token rows (BOS
    included) by :func:`~sfc_plugin.sae_quality.token_batches` and run ``batch_size`` rows at a
    time, up to ``max_tokens`` non-BOS tokens. ``k``: contexts kept per feature, and output
    tokens kept each way. ``window``: tokens kept before and after each top position.
    """
    sites = make_sites(model, saes)
    first = int(bool(model.cfg.default_prepend_bos))
    max_rows = -(-max_tokens // (context - first))
    device = model.cfg.device
    accs = {s.hook_name: _Accumulator(s.d_sae, k, window, first, device) for s in sites}
    # Run only the blocks the sites need (no unembedding).
    last = max(hook_sort_key(s.hook_name)[0] for s in sites)
    stop = None if last == float("inf") else int(last) + 1
    rows: list[Tensor] = []
    n_rows = 0
    batches = token_batches(model, read_texts(sample), context, batch_size)
    total = max_rows * (context - first)
    with tqdm(total=total, unit="tok", desc="Feature index", disable=not progress) as bar:
        for tokens in batches:
            tokens = tokens[: max_rows - n_rows]
            _, cache = model.run_with_cache(
                tokens.to(device),
                names_filter=list(accs) + [s.read_hook for s in sites],
                stop_at_layer=stop,
                return_type=None,
            )
            for site in sites:
                f, _ = encode(site, cache[site.read_hook], cache[site.hook_name])
                accs[site.hook_name].update(f.float(), n_rows)
            del cache
            rows.append(tokens.cpu())
            n_rows += tokens.shape[0]
            bar.update(tokens.shape[0] * (context - first))
            if n_rows >= max_rows:
                break
    if not rows:
        raise ValueError(f"{sample}: no text has {context} tokens; lower `context`")
    stats = {
        site.hook_name: SiteStats(
            top_values=accs[site.hook_name].values.cpu(),
            top_index=accs[site.hook_name].index.int().cpu(),
            top_windows=accs[site.hook_name].windows.half().cpu(),
            hist=accs[site.hook_name].hist.view(site.d_sae, -1).int().cpu(),
            **_output_tokens(model, site, k),
        )
        for site in sites
    }
    tokens = torch.cat(rows)
    ids = torch.cat(
        [tokens.flatten()]
        + [torch.cat([s.promoted_ids, s.suppressed_ids]).flatten().long() for s in stats.values()]
    ).unique()
    vocab = dict(zip(ids.tolist(), model.to_str_tokens(ids)))
    return FeatureIndex(stats, tokens, vocab, first, window)


# ----------------------------------------------------------------------------- the cache


def _canonical_model_name(name: str) -> str:
    """One spelling per model: the embedded model's name or TransformerLens' official one."""
    if is_embedded_model(name):
        return EMBEDDED_MODEL
    try:
        return get_official_model_name(name)
    except ValueError:
        return name


def _model_name(saes: Mapping[str, SAE], model) -> str:
    """The model the SAEs were trained on (``cfg.metadata.model_name``), else the model's."""
    found = (getattr(sae.cfg.metadata, "model_name", None) for sae in saes.values())
    names: set[str] = {n for n in found if n is not None and n != ""}
    if len(names) > 1:
        raise ValueError(f"the SAEs name different models: {sorted(names)}")
    if names:
        return _canonical_model_name(names.pop())
    if model is None:
        raise ValueError("the SAEs name no model (cfg.metadata.model_name): pass model=")
    return _canonical_model_name(model.cfg.model_name)


def _sae_digest(sae: SAE) -> str:
    """SHA-256 of an SAE's class, config (less device and metadata) and weights."""
    h = hashlib.sha256(type(sae).__name__.encode())
    cfg = {k: v for k, v in sae.cfg.to_dict().items() if k not in ("device", "metadata")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(sae.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@lru_cache(maxsize=8)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of a file's content; memoised on (path, mtime, size)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def index_key(
    saes: Mapping[str, SAE],
    model_name: str,
    sample: str | Path,
    *,
    context: int,
    max_tokens: int,
    k: int,
    window: tuple[int, int],
) -> str:
    """The cache key of an index: a hash of everything its content depends on."""
    stat = Path(sample).stat()
    spec = {
        "format": _FORMAT,
        "saes": [[h, _sae_digest(saes[h])] for h in sorted(saes, key=hook_sort_key)],
        "sample": _file_digest(str(Path(sample).resolve()), stat.st_mtime_ns, stat.st_size),
        "model": model_name,
        "context": context,
        "max_tokens": max_tokens,
        "k": k,
        "window": list(window),
    }
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:20]


def feature_index(
    saes: Mapping[str, SAE],
    model: HookedTransformer | None = None,
    *,
    sample: str | Path = SAMPLE,
    context: int = 128,
    batch_size: int = 16,
    max_tokens: int = 200_000,
    k: int = 20,
    window: tuple[int, int] = (24, 8),
    progress: bool = True,
) -> FeatureIndex:
    """The :class:`FeatureIndex` of ``saes``: read from the disk cache, or built with
    :func:`build_feature_index` (same arguments; ``progress``: a bar while building) and
    cached.

    ``model`` is only needed for a build; if it is None, the model the SAEs name in
    ``cfg.metadata.model_name`` is loaded, if ``load_model`` knows it (the embedded model or
    a TransformerLens model name). The model is identified in the key by that metadata name
    (or, if the SAEs name none, by ``model.cfg.model_name``), not by its weights.
    """
    name = _model_name(saes, model)
    key = index_key(saes, name, sample, context=context, max_tokens=max_tokens, k=k, window=window)

    def build(tmp: Path) -> None:
        index = build_feature_index(
            model if model is not None else _load_named_model(name, saes),
            saes,
            sample,
            context=context,
            batch_size=batch_size,
            max_tokens=max_tokens,
            k=k,
            window=window,
            progress=progress,
        )
        index.meta.update(model=name, sample=str(sample), context=context, max_tokens=max_tokens)
        index.save(tmp)

    path = ensure_cache_entry(
        cache_dir() / "dashboards" / key, {"format": _FORMAT, "key": key}, build
    )
    return FeatureIndex.load(path)


def _load_named_model(name: str, saes: Mapping[str, SAE]):
    """Load the model the SAEs name, if ``load_model`` knows it."""
    if not is_embedded_model(name):
        try:
            get_official_model_name(name)
        except ValueError:
            raise ValueError(
                f"the SAEs' model {name!r} is not a model load_model knows: pass model="
            ) from None
    return load_model(name, device=next(iter(saes.values())).cfg.device)


def feature_dashboard(
    saes: Mapping[str, SAE],
    site: str,
    feature: int,
    model: HookedTransformer | None = None,
    *,
    n_contexts: int = 10,
    n_outputs: int = 10,
    sample: str | Path = SAMPLE,
    context: int = 128,
    batch_size: int = 16,
    max_tokens: int = 200_000,
    k: int = 20,
    window: tuple[int, int] = (24, 8),
) -> Dashboard:
    """The dashboard of ``feature`` of the SAE at ``site``, from the (cached) index of the
    whole SAE set (see :func:`feature_index`)."""
    index = feature_index(
        saes,
        model,
        sample=sample,
        context=context,
        batch_size=batch_size,
        max_tokens=max_tokens,
        k=k,
        window=window,
    )
    return index.dashboard(site, feature, n_contexts=n_contexts, n_outputs=n_outputs)


# ------------------------------------------------------------------------------ rendering


@dataclass(repr=False)
class Dashboard:
    """One feature's dashboard: its data (``to_dict()``) and its HTML (``to_html()``)."""

    site: str
    feature: int
    n_tokens: int
    fired: int
    contexts: list[ContextView]
    histogram: list[int]
    edges: list[float]
    promoted: list[TokenEffect]
    suppressed: list[TokenEffect]

    @property
    def node(self) -> str:
        """The feature's node id (summed over positions), e.g. ``blocks.3.hook_mlp_out/f12``."""
        return node_id(self.site, self.feature, None)

    @property
    def max_activation(self) -> float:
        """The largest activation on the sample (0 if the feature never fires)."""
        return self.contexts[0].activation if self.contexts else 0.0

    @property
    def label(self) -> str:
        """A short name for pictures: the max-activating token most of its top contexts
        share (stripped; the stronger context breaks ties), else its most promoted token as
        ``→token``; "" for a feature that never fired and promotes nothing."""
        tops = Counter(visible(c.tokens[c.focus]).strip() for c in self.contexts)
        tops.pop("", None)
        if tops:
            return tops.most_common(1)[0][0]
        promoted = [t for t in (visible(e.token).strip() for e in self.promoted) if t]
        return f"→{promoted[0]}" if promoted else ""

    def __repr__(self) -> str:
        return (
            f"Dashboard({self.node}: fires on {self.fired}/{self.n_tokens} tokens, "
            f"max {self.max_activation:.3g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (all fields, plus node id, firing rate and max)."""
        return {
            "node": self.node,
            "label": self.label,
            "firing_rate": self.fired / self.n_tokens,
            "max_activation": self.max_activation,
            **asdict(self),
        }

    def to_html(self, *, bundle: bool = True, page: bool = False) -> str:
        """The dashboard as HTML that needs no network. ``bundle=False`` leaves out the
        CircuitsVis script (include :func:`circuitsvis_script` once on the page instead);
        ``page=True`` returns a whole document (for a file)."""
        body = render_template(
            "dashboard.html",
            d=self,
            histogram=Markup(_histogram_svg(self.histogram, self.edges)),
            contexts=[(c, *_colored_context(c, self.max_activation)) for c in self.contexts],
            bundle=Markup(circuitsvis_script() if bundle else ""),
        )
        if not page:
            return body
        return render_template("page.html", title=self.node, body=Markup(body))

    def _repr_html_(self) -> str:
        return self.to_html()


def _shown(token: str) -> str:
    """A token as HTML text: escaped, newlines as a visible mark."""
    return html.escape(visible(token), quote=False)


@lru_cache(maxsize=1)
def _bundle() -> str:
    """The CircuitsVis bundle, exactly as ``RenderedHTML.local_src`` inlines it."""
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


@lru_cache(maxsize=1)
def circuitsvis_script() -> str:
    """A ``<script>`` that defines the global ``CircuitsVis`` from the installed package
    (inlined, no network). Pages showing several dashboards include it once and render each
    with ``to_html(bundle=False)``."""
    return "<script>" + re.sub(r"//# sourceMappingURL=\S*\s*$", "", _bundle()) + "</script>"


def _colored_context(view: ContextView, max_value: float) -> tuple[str, Markup]:
    """The context coloured by CircuitsVis: its container's id (the template outlines the
    max-activating token through it) and its HTML."""
    rendered = colored_tokens(
        [_shown(t) for t in view.tokens], view.values, min_value=0.0, max_value=max_value
    )
    # local_src inlines the bundle (circuitsvis_script provides it once per page) and writes
    # the container as `<div .../>`, which HTML parsers treat as an unclosed div.
    src = rendered.local_src.replace(_bundle(), "").replace('"/>', '"></div>', 1)
    container = re.search(r'id="([^"]+)"', src)
    if container is None:
        raise RuntimeError("CircuitsVis colored_tokens output has no container id")
    return container[1], Markup(src)


def _histogram_svg(
    counts: list[int], edges: list[float], width: int = 360, height: int = 110
) -> str:
    """Bars of the non-empty bin range, decade ticks below, counts in tooltips."""
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return "<p>never fires on the sample</p>"
    lo, hi = nonzero[0], nonzero[-1]
    bar, top, plot = width / (hi - lo + 1), max(counts), height - 16
    bounds = [0.0, *edges, float("inf")]  # bin i covers [bounds[i], bounds[i + 1])
    parts = []
    for j, i in enumerate(range(lo, hi + 1)):
        h = plot * counts[i] / top
        tip = f"[{bounds[i]:.3g}, {bounds[i + 1]:.3g}): {counts[i]}"
        parts.append(
            f'<rect x="{j * bar:.1f}" y="{plot - h:.1f}" width="{max(bar - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="#4c78a8"><title>{tip}</title></rect>'
        )
        if (
            0 < bounds[i] < float("inf")
            and abs(math.log10(bounds[i]) - round(math.log10(bounds[i]))) < 1e-4
        ):
            parts.append(
                f'<text x="{j * bar:.1f}" y="{height - 2}" font-size="10">{bounds[i]:g}</text>'
            )
    return (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(parts)
        + "</svg>"
    )
