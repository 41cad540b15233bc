"""Sites: SAELens dictionaries attached at TransformerLens hook points as circuit nodes.

At a site with activation ``x`` the SAE gives features ``f = encode(x)`` and the error
``eps = x - decode(f)`` (METHOD.md section 1).  While attached, a site outputs

    out = x + (x_hat - stopgrad(x_hat)) + (eps - stopgrad(eps)),   x_hat = decode(f)

with ``f`` and ``eps`` fresh leaf tensors.  Its value is exactly ``x`` (the added terms are zero
to the bit), so the forward pass is unchanged; its gradient gives

* ``dm/df = W_dec^T dm/dout`` and ``dm/deps = dm/dout`` from the same backward pass, and
* ``dm/dx = dm/dout`` (pass-through): everything upstream sees the true model gradient, not the
  gradient of the reconstruction.  SAELens' own ``use_error_term`` computes the error under
  ``no_grad`` and loses this, which is why sites use plain TL hooks instead.

Interventions replace the site output by ``decode(f') + eps'`` for chosen ``f'`` and ``eps'``
(``compose``).  All hooks live inside context managers that always remove them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

# Rank of a hook inside a transformer block, in forward order. Hooks are matched on the part
# of the name after ``blocks.{L}.``; unknown hooks sort after the known ones of their block.
_COMPONENT_ORDER: tuple[tuple[str, ...], ...] = (
    ("hook_resid_pre",),
    ("ln1.",),
    ("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in"),
    ("attn.",),  # hook_q/k/v, hook_attn_scores, hook_pattern, hook_z, ...
    ("hook_attn_out",),
    ("hook_resid_mid",),
    ("ln2.",),
    ("hook_mlp_in",),
    ("mlp.",),  # hook_pre, hook_post, ...
    ("hook_mlp_out",),
    ("hook_resid_post",),
)
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.*)$")


def hook_sort_key(hook_name: str) -> tuple[float, int, str]:
    """Sort key putting hooks in forward order: embeddings, then blocks by layer and, inside a
    block, resid_pre < attention (inputs, ``attn.*``, hook_attn_out) < resid_mid < MLP
    (hook_mlp_in, ``mlp.*``, hook_mlp_out) < resid_post; anything after the blocks last.
    Ties (and unknown hooks) are broken by name."""
    match = _BLOCK_RE.match(hook_name)
    if match is None:
        if hook_name.startswith(("hook_embed", "hook_pos_embed", "hook_tokens")):
            return (-1.0, 0, hook_name)
        return (float("inf"), 0, hook_name)
    layer, rest = int(match.group(1)), match.group(2)
    for rank, prefixes in enumerate(_COMPONENT_ORDER):
        if rest.startswith(prefixes):
            return (float(layer), rank, hook_name)
    return (float(layer), len(_COMPONENT_ORDER), hook_name)


@dataclass(frozen=True)
class Site:
    """One dictionary at one hook point."""

    hook_name: str
    sae: SAE = field(repr=False, compare=False)

    @property
    def layer(self) -> int | None:
        """Block index for ``blocks.{L}.*`` hooks, else None (embeddings, final norm)."""
        m = _BLOCK_RE.match(self.hook_name)
        return int(m.group(1)) if m else None

    @property
    def component(self) -> str:
        """The hook's name within its block, e.g. ``attn_out``, ``resid_post``, ``attn.z``."""
        m = _BLOCK_RE.match(self.hook_name)
        return (m.group(2) if m else self.hook_name).replace("hook_", "")

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    @property
    def d_in(self) -> int:
        return self.sae.cfg.d_in


def make_sites(model, saes: Mapping[str, SAE]) -> list[Site]:
    """Validate ``saes`` against ``model`` and return its sites in forward order."""
    if not saes:
        raise ValueError("no SAEs given: pass a dict hook_name -> SAE (see load_saes)")
    sites = []
    for hook_name, sae in saes.items():
        if hook_name not in model.hook_dict:
            close = [h for h in model.hook_dict if h.split(".")[-1] == hook_name.split(".")[-1]]
            raise ValueError(
                f"SAE key {hook_name!r} is not a hook point of this model"
                + (f"; hooks of that kind: {close[:4]}" if close else "")
            )
        if not isinstance(sae, SAE):
            raise TypeError(f"saes[{hook_name!r}] is a {type(sae).__name__}, not a SAELens SAE")
        sites.append(Site(hook_name, sae))
    return sorted(sites, key=lambda s: hook_sort_key(s.hook_name))


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1)


def encode(
    site: Site, x: Tensor, grad: bool = False
) -> tuple[Float[Tensor, "batch pos d_sae"], Float[Tensor, "batch pos d_in"]]:
    """Features and error of activation ``x``, in ``x``'s dtype.

    ``x`` has shape ``[batch, pos, ...]``; trailing dims (e.g. heads x d_head at ``hook_z``)
    are flattened to ``d_in`` unless the SAE reshapes hook_z inputs itself. With ``grad``
    both are differentiable functions of ``x`` (the error through the encoder too), as a
    downstream node is for edges; otherwise no gradient is recorded.
    """
    sae = site.sae
    if _flat(x).shape[-1] != site.d_in:
        raise ValueError(
            f"site {site.hook_name}: activation has {_flat(x).shape[-1]} dims per position but "
            f"the SAE's d_in is {site.d_in}"
        )
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        inp = x if getattr(sae, "hook_z_reshaping_mode", False) else _flat(x)
        f = sae.encode(inp.to(sae.dtype)).to(x.dtype)
        err = _flat(x) - decode(site, f)
    return f, err


def decode(site: Site, f: Float[Tensor, "batch pos d_sae"]) -> Float[Tensor, "batch pos d_in"]:
    """``decode(f)`` flattened to ``[batch, pos, d_in]``, in ``f``'s dtype."""
    return _flat(site.sae.decode(f.to(site.sae.dtype))).to(f.dtype)


def compose(
    site: Site,
    f: Float[Tensor, "batch pos d_sae"],
    err: Float[Tensor, "batch pos d_in"],
    like: Tensor,
) -> Tensor:
    """The site output ``decode(f) + err`` in the shape of the activation ``like``."""
    return (decode(site, f) + err).reshape(like.shape)


@dataclass
class SiteActivations:
    """Feature and error leaves of the latest forward pass, keyed by hook name."""

    features: dict[str, Float[Tensor, "batch pos d_sae"]] = field(default_factory=dict)
    errors: dict[str, Float[Tensor, "batch pos d_in"]] = field(default_factory=dict)


def _record_hook(site: Site, acts: SiteActivations, grad: bool):
    def hook(x: Tensor, hook) -> Tensor:
        f, err = encode(site, x)
        track = grad and torch.is_grad_enabled()
        f.requires_grad_(track)
        err.requires_grad_(track)
        acts.features[site.hook_name] = f
        acts.errors[site.hook_name] = err
        if not track:
            return x
        x_hat = decode(site, f)
        zero = (x_hat - x_hat.detach()) + (err - err.detach())
        return x + zero.reshape(x.shape)

    return hook


@contextmanager
def attach_saes(model, saes: Mapping[str, SAE], *, grad: bool = True) -> Iterator[SiteActivations]:
    """Attach ``saes`` as sites for the duration of the ``with`` block.

    Yields a ``SiteActivations`` that each forward pass refills: ``features[h]``
    (``[batch, pos, d_sae]``) and ``errors[h]`` (``[batch, pos, d_in]``) are leaves, so after
    ``metric.backward()`` their ``.grad`` holds dm/df and dm/deps for every site at once.
    Logits are unchanged, and gradients upstream of a site equal the model's own.

    Example::

        with attach_saes(model, saes) as acts:
            metric(model(tokens)).sum().backward()
        acts.features["blocks.2.hook_resid_post"].grad
    """
    sites = make_sites(model, saes)
    acts = SiteActivations()
    hooks = [(s.hook_name, _record_hook(s, acts, grad)) for s in sites]
    with model.hooks(fwd_hooks=hooks):
        yield acts
