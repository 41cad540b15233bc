"""The frozen replacement model: the model made linear in its nodes (METHOD.md sections 9, 11).

Hierarchical tracing (Dunefsky et al.; circuit-tracer) freezes, at the values of the clean run
of each example,

* every attention pattern (``attn.hook_pattern``) and every normalisation scale
  (``*.hook_scale``, the final norm included): attention becomes a fixed linear map of its
  values and each norm a fixed affine map;
* every dictionary output: the hook a site writes outputs ``decode(f) + eps`` with the
  features ``f`` and the error ``eps`` fresh leaves holding their clean values, so nothing
  upstream of a site reaches it except through its features' encoder (for a transcoder, the
  MLP input; no gradient enters the MLP);
* every residual-stream write without a dictionary, as one *frozen* leaf per position: the
  token (and absolute position) embeddings, and the output of an MLP without a transcoder
  (``missing="error"``; ``missing="refuse"`` raises instead).

Each leaf is a node. Between nodes the model is then linear (attention values, the residual
stream, frozen norms, the unembedding), so the value of a target (a feature's pre-activation,
a logit, a logit difference) is the sum over upstream nodes of their *direct effects*

    DE(s -> t) = a_s * (d_s . J . w_t)        (features: activation x decoder . Jacobian . encoder)
    DE(e -> t) = eps . J . w_t                (errors and embeddings: the vector itself)

plus constants (decoder and attention biases). One backward from a target's value gives its
direct effect on every node at once (``frozen_rows``); each row of a batch holds one
(example, target) pair, so many targets share a backward.

Exactness needs each dictionary's encoder to be affine in its input (standard, TopK, JumpReLU
SAEs and transcoders) and a target that is linear in the logits (a logit or logit difference;
log-probabilities are traced to first order). A feature of a site that reads an MLP's output
(an ``mlp_out`` SAE) is a source only: its input crosses the MLP, so it cannot be a target.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from sfc_plugin.data import Batch
from sfc_plugin.sites import Site, compose, encode, hook_sort_key, make_sites, site_hooks

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

MissingPolicy = Literal["error", "refuse"]

_MLP_OUT = re.compile(r"^blocks\.(\d+)\.hook_mlp_out$")
EMBED_HOOKS = ("hook_embed", "hook_pos_embed")
"""Hooks whose output enters the residual stream as a frozen leaf (when no SAE sits there)."""


def is_frozen_read(site: Site) -> bool:
    """True when the site's input is a linear function of earlier nodes in the frozen model,
    so its features can be targets: anything but the output of (or a hook inside) an MLP."""
    rest = site.read_hook.split(".", 2)[-1]
    return not (rest.startswith("mlp.") or rest == "hook_mlp_out")


def missing_mlps(model: HookedTransformer, sites: list[Site]) -> list[str]:
    """MLP output hooks no site writes, in forward order."""
    written = {s.hook_name for s in sites}
    hooks = [h for h in model.hook_dict if _MLP_OUT.match(h) and h not in written]
    return sorted(hooks, key=hook_sort_key)


@dataclass
class FrozenState:
    """The clean run of a set of examples: what the replacement model freezes.

    ``leaves[h]`` is the clean value of every frozen leaf hook (embeddings, MLPs without a
    transcoder), ``[n, pos, d_model]``; ``features`` / ``errors`` each site's clean features
    and error; ``patterns`` and ``scales`` the frozen attention patterns and norm scales."""

    model: HookedTransformer
    sites: list[Site]
    batch: Batch
    features: dict[str, Float[Tensor, "n pos d_sae"]]
    errors: dict[str, Float[Tensor, "n pos d_out"]]
    leaves: dict[str, Float[Tensor, "n pos d_model"]]
    patterns: dict[str, Tensor]
    scales: dict[str, Tensor]

    @property
    def n_examples(self) -> int:
        return len(self.batch)

    @property
    def n_pos(self) -> int:
        return self.batch.clean_tokens.shape[1]

    @property
    def site_by_hook(self) -> dict[str, Site]:
        return {s.hook_name: s for s in self.sites}


def freeze(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    batch: Batch,
    *,
    missing: MissingPolicy = "error",
    crossed: Callable[[str], bool] = lambda hook: True,
) -> FrozenState:
    """Run ``batch`` clean and record what the replacement model freezes.

    ``missing``: what to do with an MLP without a transcoder (or any dictionary writing its
    output) that the trace crosses (``crossed(hook)``): ``"error"`` freezes its output as one
    error node per position, ``"refuse"`` raises naming the layers."""
    if missing not in ("error", "refuse"):
        raise ValueError(f"missing must be 'error' or 'refuse', got {missing!r}")
    sites = make_sites(model, saes)
    leaf_hooks = [h for h in EMBED_HOOKS if h in model.hook_dict and h not in saes]
    absent = [h for h in missing_mlps(model, sites) if crossed(h)]
    if absent and missing == "refuse":
        raise ValueError(
            f"no transcoder (or other dictionary) writes {absent}: the trace crosses these "
            "MLPs, which are not linear; pass dictionaries for them, or missing='error' to "
            "freeze each one's output as an error node"
        )
    leaf_hooks += absent
    leaves: dict[str, Tensor] = {}
    patterns: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    features: dict[str, Tensor] = {}
    errors: dict[str, Tensor] = {}

    def keep(store: dict[str, Tensor]) -> Callable[[Tensor, HookPoint], None]:
        def save(x: Tensor, hook: HookPoint) -> None:
            store[str(hook.name)] = x.detach()

        return save

    def on_write(site: Site) -> Callable[[Tensor, Tensor], Tensor]:
        def record(x_in: Tensor, x: Tensor) -> Tensor:
            features[site.hook_name], errors[site.hook_name] = encode(site, x_in, x)
            return x

        return record

    hooks: list[tuple[str | Callable, Callable]] = [(h, keep(leaves)) for h in leaf_hooks]
    hooks += [(_is_pattern, keep(patterns)), (_is_scale, keep(scales))]
    hooks += [hook for s in sites for hook in site_hooks(s, on_write(s))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(batch.clean_tokens, padding_side="right")
    return FrozenState(model, sites, batch, features, errors, leaves, patterns, scales)


def _is_pattern(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


def _is_scale(name: str) -> bool:
    return name.endswith("hook_scale")


@dataclass
class FrozenLeaves:
    """The leaves of one frozen forward over ``examples`` (one row each): after a backward,
    ``direct_effects`` reads every node's direct effect on each row's target."""

    examples: Int[Tensor, " rows"]
    features: dict[str, Tensor] = field(default_factory=dict)
    errors: dict[str, Tensor] = field(default_factory=dict)
    leaves: dict[str, Tensor] = field(default_factory=dict)
    reads: dict[str, Tensor] = field(default_factory=dict)

    def direct_effects(
        self,
    ) -> tuple[dict[str, Float[Tensor, "rows pos d_sae"]], dict[str, Float[Tensor, "rows pos"]]]:
        """Direct effect of every node on its row's target, after the backward: feature
        effects ``a * grad`` per site, and ``(vector . grad)`` summed over the model width
        for each site's error and each frozen leaf (keyed by hook)."""
        feats = {h: _times_grad(f) for h, f in self.features.items()}
        vectors = {h: _times_grad(e).sum(-1) for h, e in {**self.errors, **self.leaves}.items()}
        return feats, vectors


def _times_grad(x: Tensor) -> Tensor:
    return (x * x.grad).detach() if x.grad is not None else torch.zeros_like(x)


def frozen_forward(
    state: FrozenState,
    examples: Int[Tensor, " rows"],
    *,
    read_hooks: tuple[str, ...] = (),
    stop_at_layer: int | None = None,
) -> tuple[Tensor | None, FrozenLeaves]:
    """One forward of the replacement model over rows ``examples`` (indices into the state's
    examples, repeats allowed): every frozen value as recorded by ``freeze``, every node a
    fresh leaf that requires grad. Returns the logits (None when stopped early) and the
    leaves, with the activations at ``read_hooks`` (for targets) in ``leaves.reads``."""
    model = state.model
    run = FrozenLeaves(examples)

    def leaf(value: Tensor) -> Tensor:
        return value[examples].clone().requires_grad_(True)

    def constant(store: dict[str, Tensor]) -> Callable[[Tensor, HookPoint], Tensor]:
        def replace(x: Tensor, hook: HookPoint) -> Tensor:
            return store[str(hook.name)][examples]

        return replace

    def frozen_leaf(x: Tensor, hook: HookPoint) -> Tensor:
        name = str(hook.name)
        run.leaves[name] = leaf(state.leaves[name])
        return run.leaves[name]

    def site_output(site: Site) -> Callable[[Tensor, HookPoint], Tensor]:
        def write(x: Tensor, hook: HookPoint) -> Tensor:
            f = run.features[site.hook_name] = leaf(state.features[site.hook_name])
            e = run.errors[site.hook_name] = leaf(state.errors[site.hook_name])
            return compose(site, f, e, x)

        return write

    def read(x: Tensor, hook: HookPoint) -> None:
        run.reads[str(hook.name)] = x

    hooks: list[tuple[str | Callable, Callable]] = [
        (_is_pattern, constant(state.patterns)),
        (_is_scale, constant(state.scales)),
    ]
    hooks += [(h, frozen_leaf) for h in state.leaves]
    hooks += [(h, read) for h in read_hooks]  # before a site writes the same hook
    hooks += [(s.hook_name, site_output(s)) for s in state.sites]
    tokens = state.batch.clean_tokens[examples]
    with model.hooks(fwd_hooks=hooks):
        out = model(tokens, stop_at_layer=stop_at_layer, padding_side="right")
    return (out if stop_at_layer is None else None), run
