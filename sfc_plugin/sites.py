"""Sites: SAELens dictionaries attached at TransformerLens hook points as circuit nodes.

A site is a dictionary that reads one hook and writes another (METHOD.md section 1). An SAE
reads and writes the same hook; a transcoder reads the MLP input (e.g.
``blocks.L.ln2.hook_normalized``) and writes the MLP output (``blocks.L.hook_mlp_out``). At a
site with read activation ``x_in`` and written activation ``x`` the dictionary gives features
``f = encode(x_in)`` and the error ``eps = x - decode(f)``.  While attached, the write hook
outputs

    out = x + (x_hat - stopgrad(x_hat)) + (eps - stopgrad(eps)),   x_hat = decode(f)

with ``f`` and ``eps`` fresh leaf tensors.  Its value is exactly ``x`` (the added terms are zero
to the bit), so the forward pass is unchanged; its gradient gives

* ``dm/df = W_dec^T dm/dout`` and ``dm/deps = dm/dout`` from the same backward pass, and
* ``dm/dx = dm/dout`` (pass-through): everything upstream sees the true model gradient, not the
  gradient of the reconstruction (for a transcoder, through the real MLP).  SAELens' own
  ``use_error_term`` computes the error under ``no_grad`` and loses this, which is why sites
  use plain TL hooks instead.

Interventions replace the written activation by ``decode(f') + eps'`` for chosen ``f'`` and
``eps'`` (``compose``).  A site is named by the hook it writes: node ids, ``saes`` keys and the
forward order all use it. A skip transcoder's skip term ``W_skip x_in`` is not a feature, so it
is part of the error.  All hooks live inside context managers that always remove them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from sae_lens import SAE, Transcoder
from torch import Tensor
from transformer_lens.hook_points import HookPoint

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

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


def writes_by(hook_name: str, hook: str) -> bool:
    """True when a site writing ``hook_name`` can affect ``hook``: it is in an earlier block,
    or in the same block at or before it (``hook_sort_key`` order, ties included)."""
    return hook_sort_key(hook_name)[:2] <= hook_sort_key(hook)[:2]


def stop_layer(hook_name: str, n_layers: int) -> int | None:
    """The ``stop_at_layer`` of a forward that only needs to reach ``hook_name`` (None: the
    whole model)."""
    parts = hook_name.split(".")
    if parts[0] == "blocks" and int(parts[1]) + 1 < n_layers:
        return int(parts[1]) + 1
    return None


def stop_layer_for(hook_names: Iterable[str], n_layers: int) -> int | None:
    """The ``stop_at_layer`` of a forward that must reach every hook of ``hook_names``."""
    stops = [stop_layer(h, n_layers) for h in hook_names]
    return None if any(s is None for s in stops) else max(s for s in stops if s is not None)


def hook_widths(model: HookedTransformer, hook_names: Iterable[str]) -> dict[str, int]:
    """Values per position at each hook (e.g. heads x d_head at ``hook_z``), read off one
    forward of one token that stops after the last of them."""
    names = list(hook_names)
    seen: dict[str, int] = {}

    def width_of(name: str) -> Callable[[Tensor, HookPoint], None]:
        def width(x: Tensor, hook: HookPoint) -> None:
            seen[name] = x[0, 0].numel()

        return width

    tokens = torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device)
    with torch.no_grad(), model.hooks(fwd_hooks=[(h, width_of(h)) for h in names]):
        model(tokens, stop_at_layer=stop_layer_for(names, model.cfg.n_layers))
    return {h: seen[h] for h in names}


@dataclass(frozen=True)
class Site:
    """One dictionary reading ``read_hook`` and writing ``hook_name`` (the same hook for an
    SAE; ``read_hook=""`` means that)."""

    hook_name: str
    sae: SAE = field(repr=False, compare=False)
    read_hook: str = ""

    def __post_init__(self) -> None:
        if not self.read_hook:
            object.__setattr__(self, "read_hook", self.hook_name)

    @property
    def reads_elsewhere(self) -> bool:
        """True when the site reads one hook and writes another (a transcoder)."""
        return self.read_hook != self.hook_name

    @property
    def layer(self) -> int | None:
        """Block index of the written hook for ``blocks.{L}.*``, else None (embeddings, final
        norm)."""
        m = _BLOCK_RE.match(self.hook_name)
        return int(m.group(1)) if m else None

    @property
    def component(self) -> str:
        """The written hook's name within its block, e.g. ``attn_out``, ``resid_post``."""
        m = _BLOCK_RE.match(self.hook_name)
        return (m.group(2) if m else self.hook_name).replace("hook_", "")

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    @property
    def d_in(self) -> int:
        """Width per position of the read activation."""
        return self.sae.cfg.d_in

    @property
    def d_out(self) -> int:
        """Width per position of the written activation (and of the error)."""
        return getattr(self.sae.cfg, "d_out", self.sae.cfg.d_in)


def read_hook_of(hook_name: str, sae: SAE) -> str:
    """The hook a dictionary keyed by the hook it writes reads: ``hook_name`` for an SAE;
    for a SAELens ``Transcoder``, ``cfg.metadata.hook_name`` (its input). A transcoder must
    be keyed by its output hook (``cfg.metadata.hook_name_out`` where set)."""
    if not isinstance(sae, Transcoder):
        return hook_name
    meta = sae.cfg.metadata
    read, write = meta.hook_name, meta.get("hook_name_out")
    if not read:
        raise ValueError(
            f"saes[{hook_name!r}] is a transcoder without cfg.metadata.hook_name (the hook it "
            "reads)"
        )
    if write and write != hook_name:
        raise ValueError(
            f"saes[{hook_name!r}] is a transcoder that writes {write!r} "
            "(cfg.metadata.hook_name_out): key it by the hook it writes"
        )
    if read == hook_name:
        raise ValueError(
            f"saes[{hook_name!r}] is a transcoder reading the hook it is keyed by; key it by "
            "the hook it writes (e.g. blocks.L.hook_mlp_out)"
        )
    return read


def make_sites(model: HookedTransformer, saes: Mapping[str, SAE]) -> list[Site]:
    """Validate ``saes`` (keyed by the hook each writes) against ``model`` and return its
    sites in forward order. Sites may not overlap: each reads at or after the hook the
    previous one writes."""
    if not saes:
        raise ValueError("no SAEs given: pass a dict hook_name -> SAE (see load_saes)")
    sites = []
    for hook_name, sae in saes.items():
        if not isinstance(sae, SAE):
            raise TypeError(f"saes[{hook_name!r}] is a {type(sae).__name__}, not a SAELens SAE")
        read = read_hook_of(hook_name, sae)
        for role, hook in (("key", hook_name), ("read hook", read)):
            if hook not in model.hook_dict:
                close = [h for h in model.hook_dict if h.split(".")[-1] == hook.split(".")[-1]]
                raise ValueError(
                    f"SAE {role} {hook!r} is not a hook point of this model"
                    + (f"; hooks of that kind: {close[:4]}" if close else "")
                )
        if hook_sort_key(read) > hook_sort_key(hook_name):
            raise ValueError(f"saes[{hook_name!r}] reads {read!r}, which comes after it")
        sites.append(Site(hook_name, sae, read))
    sites.sort(key=lambda s: hook_sort_key(s.hook_name))
    for before, site in zip(sites, sites[1:]):
        if hook_sort_key(site.read_hook) < hook_sort_key(before.hook_name):
            raise ValueError(
                f"sites overlap: {site.hook_name!r} reads {site.read_hook!r}, before "
                f"{before.hook_name!r} (an earlier site) writes"
            )
    return sites


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1)


def encode(
    site: Site, x_in: Tensor, x_out: Tensor | None = None, grad: bool = False
) -> tuple[Float[Tensor, "batch pos d_sae"], Float[Tensor, "batch pos d_out"]]:
    """Features of the read activation ``x_in`` and the error of the written one ``x_out``
    (default ``x_in``, for SAEs), in ``x_in``'s dtype.

    Activations have shape ``[batch, pos, ...]``; trailing dims (e.g. heads x d_head at
    ``hook_z``) are flattened unless the SAE reshapes hook_z inputs itself. With ``grad``
    both are differentiable functions of the activations (the error through the encoder
    too), as a downstream node is for edges; otherwise no gradient is recorded.
    """
    sae = site.sae
    if x_out is None:
        if site.reads_elsewhere:
            raise ValueError(
                f"site {site.hook_name} reads {site.read_hook}: its error needs the written "
                "activation too (x_out)"
            )
        x_out = x_in
    for what, x, name, width in (
        ("read", x_in, "d_in", site.d_in),
        ("written", x_out, "d_out", site.d_out),
    ):
        if _flat(x).shape[-1] != width:
            raise ValueError(
                f"site {site.hook_name}: {what} activation has {_flat(x).shape[-1]} dims per "
                f"position but the dictionary's {name} is {width}"
            )
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        inp = x_in if getattr(sae, "hook_z_reshaping_mode", False) else _flat(x_in)
        f = sae.encode(inp.to(sae.dtype)).to(x_in.dtype)
        err = _flat(x_out) - decode(site, f)
    return f, err


def decode(site: Site, f: Float[Tensor, "batch pos d_sae"]) -> Float[Tensor, "batch pos d_out"]:
    """``decode(f)`` flattened to ``[batch, pos, d_out]``, in ``f``'s dtype."""
    return _flat(site.sae.decode(f.to(site.sae.dtype))).to(f.dtype)


def prediction(
    site: Site, f: Float[Tensor, "batch pos d_sae"], x_in: Tensor
) -> Float[Tensor, "batch pos d_out"]:
    """The dictionary's own prediction of the written activation: ``decode(f)``, plus the
    skip term ``x_in W_skip^T`` of a skip transcoder (which sites count as error)."""
    out = decode(site, f)
    w_skip = getattr(site.sae, "W_skip", None)
    if isinstance(w_skip, Tensor):
        out = out + (_flat(x_in).to(w_skip.dtype) @ w_skip.T).to(out.dtype)
    return out


def compose(
    site: Site,
    f: Float[Tensor, "batch pos d_sae"],
    err: Float[Tensor, "batch pos d_out"],
    like: Tensor,
) -> Tensor:
    """The site output ``decode(f) + err`` in the shape of the written activation ``like``."""
    return (decode(site, f) + err).reshape(like.shape)


WriteFn = Callable[[Tensor, Tensor], Tensor]
"""``on_write(x_in, x_out) -> new written activation`` for ``site_hooks``."""


def site_hooks(site: Site, on_write: WriteFn) -> list[tuple[str, Callable]]:
    """TransformerLens forward hooks that call ``on_write(x_in, x_out)`` at the site's write
    hook, with ``x_in`` the read activation of the same pass (a hook at the read hook keeps
    it when the site reads elsewhere). Register the hooks of several sites in forward order:
    a site reading the hook an earlier site writes then sees that site's output."""
    if not site.reads_elsewhere:
        return [(site.hook_name, lambda x, hook: on_write(x, x))]
    seen: dict[str, Tensor] = {}

    def read(x: Tensor, hook: HookPoint) -> None:
        seen["x_in"] = x

    def write(x: Tensor, hook: HookPoint) -> Tensor:
        if "x_in" not in seen:
            raise RuntimeError(
                f"site {site.hook_name}: its read hook {site.read_hook} did not run in this pass"
            )
        return on_write(seen.pop("x_in"), x)

    return [(site.read_hook, read), (site.hook_name, write)]


@dataclass
class SiteActivations:
    """Feature and error leaves of the latest forward pass, keyed by hook name."""

    features: dict[str, Float[Tensor, "batch pos d_sae"]] = field(default_factory=dict)
    errors: dict[str, Float[Tensor, "batch pos d_out"]] = field(default_factory=dict)


def _record(site: Site, acts: SiteActivations, grad: bool) -> WriteFn:
    def on_write(x_in: Tensor, x: Tensor) -> Tensor:
        f, err = encode(site, x_in, x)
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

    return on_write


@contextmanager
def attach_saes(
    model: HookedTransformer, saes: Mapping[str, SAE], *, grad: bool = True
) -> Iterator[SiteActivations]:
    """Attach ``saes`` as sites for the duration of the ``with`` block.

    Yields a ``SiteActivations`` that each forward pass refills: ``features[h]``
    (``[batch, pos, d_sae]``) and ``errors[h]`` (``[batch, pos, d_out]``) are leaves, so after
    ``metric.backward()`` their ``.grad`` holds dm/df and dm/deps for every site at once.
    Logits are unchanged, and gradients upstream of a site equal the model's own.

    Example::

        with attach_saes(model, saes) as acts:
            metric(model(tokens)).sum().backward()
        acts.features["blocks.2.hook_resid_post"].grad
    """
    sites = make_sites(model, saes)
    acts = SiteActivations()
    hooks: list[tuple[str | Callable, Callable]] = [
        hook for s in sites for hook in site_hooks(s, _record(s, acts, grad))
    ]
    with model.hooks(fwd_hooks=hooks):
        yield acts
