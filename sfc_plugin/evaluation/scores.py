"""Faithfulness and completeness of a circuit (METHOD.md section 5; paper section 3.2).

A circuit ``C`` is a set of nodes. ``m(C)`` is the mean metric over the evaluation data when
every node *outside* ``C`` is ablated, at every site from ``start_layer`` on, in one forward:

    at each site, in forward order:  f = encode(x),  eps = x - decode(f)
                                     f_i   <- ablated value   for feature nodes not in C
                                     eps   <- ablated value   for error nodes not in C
                                     output decode(f) + eps

Each site encodes its *current* input, so ablations upstream propagate (as in the reference
implementation's ``run_with_ablations``). Then

    faithfulness(C) = (m(C) - m(empty)) / (m(M) - m(empty))
    completeness(C) = faithfulness(complement of C)

with ``M`` the model untouched (no site replaced) and ``empty`` every node of every evaluated
site ablated. Both are 1 for the full model and 0 for the empty circuit by construction.

Ablated values: ``"mean"`` is the node's mean over the clean inputs of the evaluation data,
per position for templatic circuits (nodes ``...@pos``) and over all real tokens otherwise;
``"zero"`` is zero. Error-node policies (``errors=``):

* ``"keep"``: error nodes are nodes like features: those in ``C`` keep their values, the
  others are ablated (the reference's ``handle_errors='default'``);
* ``"remove"``: every error node is ablated, in ``C`` or not (feature-only circuits);
* ``"remove_attn_mlp"``: attention- and MLP-output errors are ablated; residual-stream
  errors behave as under ``"keep"`` (the paper's Figure 3 variant).

The policy applies after complementing, so ``C`` and its complement are scored alike.
Sites in blocks below ``start_layer`` are left untouched (given to the circuit for free);
the paper evaluates from layer 2 on. Sites outside the blocks (embeddings) count as layer 0.

Threshold sweeps built on ``Evaluator`` are in ``evaluation.curves``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.attribution.run import Aggregation, check_choice, check_sites_feed, mean_values
from sfc_plugin.circuit import Circuit
from sfc_plugin.data import Batch, Dataset, TokenizedDataset, read_dataset, tokenize
from sfc_plugin.metrics import Metric, forward_metric, resolve_metric
from sfc_plugin.nodes import NodeMasks, count_nodes, has_position, node_masks
from sfc_plugin.sites import Site, WriteFn, compose, encode, make_sites, site_hooks

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

ErrorPolicy = Literal["keep", "remove", "remove_attn_mlp"]
EvalAblation = Literal["mean", "zero"]
CircuitLike = Circuit | Iterable[str]


@dataclass(frozen=True)
class CircuitScores:
    """Mean metrics and the two scores of one circuit on one dataset.

    ``m_model``: nothing ablated; ``m_empty``: every evaluated node ablated; ``m_circuit``:
    nodes outside the circuit ablated; ``m_complement``: nodes inside it ablated;
    ``n_nodes``: the circuit's nodes at the evaluated sites.
    """

    m_model: float
    m_empty: float
    m_circuit: float
    m_complement: float
    n_nodes: int

    @property
    def faithfulness(self) -> float:
        return _share(self.m_circuit, self.m_model, self.m_empty)

    @property
    def completeness(self) -> float:
        return _share(self.m_complement, self.m_model, self.m_empty)


def _share(m: float, m_model: float, m_empty: float) -> float:
    """``(m - m(empty)) / (m(M) - m(empty))``: the share of the behaviour ``m`` retains."""
    return (m - m_empty) / (m_model - m_empty)


class Evaluator:
    """Scores any number of circuits on one dataset, sharing the tokenization, the ablation
    values, ``m(M)`` and ``m(empty)`` (what a threshold sweep needs).

    Args: as ``faithfulness``; ``aggregation`` says whether circuits are templatic (node ids
    with ``@pos``, ablation values per position) or summed over positions.
    """

    def __init__(
        self,
        model: HookedTransformer,
        saes: Mapping[str, SAE],
        data: Dataset | str | Path | Sequence[dict[str, Any]],
        *,
        aggregation: Aggregation = "templatic",
        ablation: EvalAblation = "mean",
        start_layer: int = 0,
        errors: ErrorPolicy = "keep",
        metric: Callable | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ):
        check_choice("ablation", ablation, ("mean", "zero"))
        check_choice("errors", errors, ("keep", "remove", "remove_attn_mlp"))
        check_choice("aggregation", aggregation, ("templatic", "sum"))
        if not isinstance(start_layer, int) or start_layer < 0:
            raise ValueError(f"start_layer must be a non-negative integer, got {start_layer!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.templatic = aggregation == "templatic"
        self.errors = errors
        self.batch_size = batch_size
        self.progress = progress
        self.all_sites = make_sites(model, saes)
        self.sites = [s for s in self.all_sites if (s.layer or 0) >= start_layer]
        if not self.sites:
            raise ValueError(f"no SAE site is at or after start_layer={start_layer}")
        dataset = read_dataset(data)
        self.tokens: TokenizedDataset = tokenize(
            model, dataset, same_length=self.templatic, need_patch=False
        )
        self.metric: Metric = resolve_metric(metric, dataset.is_pairs)
        check_sites_feed(self.all_sites, self.metric)
        batches = self.tokens.batches(batch_size)
        if ablation == "mean":
            self.ablated = mean_values(model, self.sites, batches, self.templatic)
        else:
            self.ablated = {
                s.hook_name: (torch.zeros(1, 1, s.d_sae), torch.zeros(1, 1, s.d_out))
                for s in self.sites
            }
        self.m_model = self._mean_metric(None)
        self.m_empty = self._mean_metric(self._masks([], complement=False))

    def scores(self, circuit: CircuitLike) -> CircuitScores:
        """Mean metric with the circuit kept and with it ablated, plus m(M) and m(empty)."""
        kept = self._kept(_node_ids(circuit))
        keep = self._with_policy(kept, complement=False)
        return CircuitScores(
            m_model=self.m_model,
            m_empty=self.m_empty,
            m_circuit=self._mean_metric(keep),
            m_complement=self._mean_metric(self._with_policy(kept, complement=True)),
            n_nodes=count_nodes(keep),
        )

    def score(self, circuit: CircuitLike, complement: bool = False) -> float:
        """Faithfulness of ``circuit`` (of its complement, if ``complement``)."""
        return _share(self.metric_with(circuit, complement), self.m_model, self.m_empty)

    def count_nodes(self, circuit: CircuitLike) -> int:
        """Nodes of ``circuit`` at the evaluated sites (from ``start_layer`` on), counted under
        the error policy (removed errors do not count)."""
        return count_nodes(self._masks(_node_ids(circuit), complement=False))

    def metric_with(self, circuit: CircuitLike, complement: bool = False) -> float:
        """Mean metric with every node outside ``circuit`` (inside, if ``complement``) ablated."""
        return self._mean_metric(self._masks(_node_ids(circuit), complement))

    def _masks(self, nodes: Sequence[str], complement: bool) -> NodeMasks:
        """Per evaluated site, boolean keep-masks for features ``[pos, d_sae]`` and errors
        ``[pos]`` (``[1, ...]`` when summed over positions: one mask for every position)."""
        return self._with_policy(self._kept(nodes), complement)

    def _kept(self, nodes: Sequence[str]) -> NodeMasks:
        """The circuit's own nodes as masks (as ``_masks``, before complement and policy);
        ids at sites below ``start_layer`` are checked and skipped (never ablated anyway)."""
        return node_masks(
            nodes,
            self.sites,
            self.tokens.n_pos,
            self.templatic,
            known=self.all_sites,
            device=self.model.cfg.device,
        )

    def _with_policy(self, kept: NodeMasks, complement: bool) -> NodeMasks:
        """``kept`` (or its complement) with the error policy applied, as new masks."""
        out = {}
        for site in self.sites:
            f, e = kept[site.hook_name]
            if complement:
                f, e = ~f, ~e
            if self.errors == "remove" or (
                self.errors == "remove_attn_mlp" and site.component in ("attn_out", "mlp_out")
            ):
                e = torch.zeros_like(e)
            out[site.hook_name] = (f, e)
        return out

    @torch.no_grad()
    def _mean_metric(self, keep: NodeMasks | None) -> float:
        """Mean metric over the data with the given keep-masks (None: the model untouched)."""
        hooks = []
        if keep is not None:
            hooks = [hook for s in self.sites for hook in site_hooks(s, self._on_write(s, keep))]
        total = 0.0
        n = self.tokens.n_batches(self.batch_size)
        for batch in tqdm(
            self.tokens.batches(self.batch_size),
            total=n,
            disable=not self.progress or n <= 1,
            desc="evaluating circuit",
            leave=False,
        ):
            total += float(self._batch_metric(batch, hooks).sum())
        return total / len(self.tokens.dataset)

    def _batch_metric(self, batch: Batch, hooks) -> Tensor:
        return forward_metric(self.model, self.metric, batch, hooks=hooks)

    def _on_write(self, site: Site, keep: NodeMasks) -> WriteFn:
        keep_f, keep_e = keep[site.hook_name]
        mean_f, mean_e = self.ablated[site.hook_name]
        n_pos = keep_f.shape[0]

        def on_write(x_in: Tensor, x: Tensor) -> Tensor:
            f, e = encode(site, x_in, x)
            p = x.shape[1] if n_pos > 1 else 1
            m_f, m_e = mean_f[:, :p].to(f), mean_e[:, :p].to(e)
            f = torch.where(keep_f[None, :p], f, m_f)
            e = torch.where(keep_e[None, :p, None], e, m_e)
            return compose(site, f, e, x)

        return on_write


def _node_ids(circuit: CircuitLike) -> list[str]:
    """The circuit's node ids, without those at a traced circuit's frozen hooks (embeddings,
    MLPs without a dictionary: no site ablates them, so they are always kept)."""
    if isinstance(circuit, Circuit):
        frozen = set(circuit.settings.get("frozen_hooks") or ())
        return [n for n, h in zip(circuit.nodes.node, circuit.nodes.hook_name) if h not in frozen]
    if isinstance(circuit, str):
        raise TypeError("circuit must be a Circuit or a list of node ids, not one string")
    return list(circuit)


def _aggregation(circuit: CircuitLike, aggregation: Aggregation | None) -> Aggregation:
    """The circuit's own aggregation unless given: from its settings, else from its node ids
    (``@pos`` means templatic); an empty list of ids defaults to templatic."""
    if aggregation is not None:
        return aggregation
    if isinstance(circuit, Circuit) and circuit.settings.get("aggregation"):
        return circuit.settings["aggregation"]
    nodes = _node_ids(circuit)
    return "sum" if nodes and not any(has_position(n) for n in nodes) else "templatic"


def _evaluator(model, saes, circuit: CircuitLike, data, aggregation, **options: Any) -> Evaluator:
    return Evaluator(model, saes, data, aggregation=_aggregation(circuit, aggregation), **options)


def circuit_scores(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    circuit: CircuitLike,
    data: Dataset | str | Path | Sequence[dict[str, Any]],
    *,
    ablation: EvalAblation = "mean",
    start_layer: int = 0,
    errors: ErrorPolicy = "keep",
    aggregation: Aggregation | None = None,
    metric: Callable | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> CircuitScores:
    """Faithfulness and completeness of ``circuit`` together (the four mean metrics).
    Arguments as in ``faithfulness``."""
    options: dict[str, Any] = dict(
        ablation=ablation,
        start_layer=start_layer,
        errors=errors,
        metric=metric,
        batch_size=batch_size,
        progress=progress,
    )
    return _evaluator(model, saes, circuit, data, aggregation, **options).scores(circuit)


def faithfulness(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    circuit: CircuitLike,
    data: Dataset | str | Path | Sequence[dict[str, Any]],
    *,
    ablation: EvalAblation = "mean",
    start_layer: int = 0,
    errors: ErrorPolicy = "keep",
    aggregation: Aggregation | None = None,
    metric: Callable | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> float:
    """``(m(C) - m(empty)) / (m(M) - m(empty))``: how much of the behaviour the circuit alone
    carries, every other node ablated (module docstring).

    Args:
        model, saes: as for ``discover_circuit``; every node's site must be in ``saes``.
        circuit: a ``Circuit`` or node ids (``blocks.3.hook_mlp_out/f12@5``, ``.../err@5``).
        data: evaluation data (ideally held out from discovery): pairs or single inputs.
        ablation: ``"mean"`` (over the data's clean inputs, per position when templatic) or
            ``"zero"``.
        start_layer: sites in blocks below it are never ablated.
        errors: ``"keep"``, ``"remove"`` or ``"remove_attn_mlp"`` (module docstring).
        aggregation: ``"templatic"`` or ``"sum"``; default: the circuit's own.
        metric: as in ``node_effects`` (default: logit difference for pairs).
        batch_size: examples per forward.
    """
    options: dict[str, Any] = dict(
        ablation=ablation,
        start_layer=start_layer,
        errors=errors,
        metric=metric,
        batch_size=batch_size,
        progress=progress,
    )
    return _evaluator(model, saes, circuit, data, aggregation, **options).score(circuit)


def completeness(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    circuit: CircuitLike,
    data: Dataset | str | Path | Sequence[dict[str, Any]],
    *,
    ablation: EvalAblation = "mean",
    start_layer: int = 0,
    errors: ErrorPolicy = "keep",
    aggregation: Aggregation | None = None,
    metric: Callable | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> float:
    """Faithfulness of the complement of ``circuit`` (its nodes ablated, all others kept):
    near 0 when the circuit is needed for the behaviour. Arguments as in ``faithfulness``."""
    options: dict[str, Any] = dict(
        ablation=ablation,
        start_layer=start_layer,
        errors=errors,
        metric=metric,
        batch_size=batch_size,
        progress=progress,
    )
    ev = _evaluator(model, saes, circuit, data, aggregation, **options)
    return ev.score(circuit, complement=True)
