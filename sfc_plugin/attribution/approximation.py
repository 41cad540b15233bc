"""How well attribution patching and integrated gradients approximate exact patching.

``approximation_check`` computes AtP and IG effects of every node, picks the top nodes of
each site kind (attn_out, mlp_out, resid_post, ...) by ``max(|AtP|, |IG|)``, and patches those
exactly (METHOD.md section 2). The paper's Appendix C finds AtP underestimating effects in
early layers, where IG is close to exact; ``plots.plot_approximation`` draws the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sae_lens import SAE

from sfc_plugin.attribution.effects import NodeEffects, node_effects
from sfc_plugin.attribution.run import Ablation, Aggregation
from sfc_plugin.data import Dataset
from sfc_plugin.nodes import parse_node_id

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

APPROXIMATION_COLUMNS = [
    "node",
    "hook_name",
    "layer",
    "component",
    "kind",
    "position",
    "feature",
    "atp",
    "ig",
    "exact",
]


def approximation_check(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    data: Dataset | str | Path | Sequence[dict[str, Any]],
    *,
    top: int = 20,
    nodes: Sequence[str] | None = None,
    steps: int = 10,
    ablation: Ablation = "patch",
    aggregation: Aggregation = "templatic",
    metric: Callable | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """AtP, IG (``steps``) and exact effects of chosen nodes, one row each
    (``APPROXIMATION_COLUMNS``).

    ``nodes``: node ids to check; default the ``top`` nodes of each site kind by
    ``max(|AtP|, |IG|)``. Other arguments as in ``node_effects``.
    """
    common: dict[str, Any] = dict(
        ablation=ablation,
        aggregation=aggregation,
        metric=metric,
        batch_size=batch_size,
        progress=progress,
    )
    atp = node_effects(model, saes, data, method="atp", **common)
    ig = node_effects(model, saes, data, method="ig", steps=steps, **common)
    if nodes is None:
        size = atp.to_frame().set_index("node").effect.abs()
        size = pd.concat([size, ig.to_frame().set_index("node").effect.abs()], axis=1).max(axis=1)
        components = {s.hook_name: s.component for s in atp.sites}
        frame = pd.DataFrame({"node": size.index, "size": size.values})
        frame["component"] = [components[parse_node_id(n)[0]] for n in frame.node]
        frame = frame.sort_values("size", ascending=False, kind="stable")
        nodes = list(frame.groupby("component", sort=False).head(top).node)
    exact = node_effects(model, saes, data, method="exact", nodes=list(nodes), **common)
    sites = {s.hook_name: s for s in atp.sites}
    rows = []
    for node in nodes:
        hook, feature, pos = parse_node_id(node)
        site = sites[hook]
        values = [_value(e, hook, feature, pos) for e in (atp, ig, exact)]
        kind = "error" if feature is None else "feature"
        rows.append((node, hook, site.layer, site.component, kind, pos, feature, *values))
    return pd.DataFrame(rows, columns=APPROXIMATION_COLUMNS)


def _value(effects: NodeEffects, hook: str, feature: int | None, pos: int | None) -> float:
    values = effects.errors[hook] if feature is None else effects.features[hook][..., feature]
    return float(values if pos is None else values[pos])
