"""Node ids: the one format every part of the package reads and writes.

A node is one feature or the error of one site, at one position (templatic aggregation) or
summed over positions (sum aggregation):

    blocks.3.hook_mlp_out/f123@5    feature 123 of the site at blocks.3.hook_mlp_out, position 5
    blocks.3.hook_mlp_out/err@5     the site's error at position 5
    blocks.3.hook_mlp_out/f123      feature 123 summed over positions (no ``@``)
    metric                          the metric, the sink of the graph (``METRIC_NODE``)

A site is named by the hook it writes (for a transcoder, the MLP output it replaces).
This module formats, parses and validates ids and turns lists of ids into per-site masks;
nothing else in the package looks inside an id string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Bool
from torch import Tensor

if TYPE_CHECKING:
    from sfc_plugin.sites import Site

METRIC_NODE = "metric"
"""Node id of the metric, the sink of the graph."""

_NODE_ID = re.compile(r"^(?P<hook>[^/]+)/(?P<kind>err|f\d+)(?:@(?P<pos>\d+))?$")


class Node(NamedTuple):
    """A parsed node id: the site's hook, the feature (None for the error) and the position
    (None when summed over positions)."""

    hook_name: str
    feature: int | None
    position: int | None


def node_id(hook_name: str, feature: int | None, position: int | None) -> str:
    """Format a node id: ``blocks.3.hook_mlp_out/f123@5``, ``.../err@5``; no ``@`` when
    effects are summed over positions."""
    kind = "err" if feature is None else f"f{feature}"
    return f"{hook_name}/{kind}" + ("" if position is None else f"@{position}")


def parse_node_id(node: str) -> Node:
    """``(hook_name, feature or None for the error, position or None)`` of a node id."""
    m = _NODE_ID.match(node)
    if not m:
        raise ValueError(
            f"node id {node!r} is not of the form 'hook/f<feature>@<pos>' or 'hook/err@<pos>'"
        )
    feature = None if m["kind"] == "err" else int(m["kind"][1:])
    return Node(m["hook"], feature, None if m["pos"] is None else int(m["pos"]))


def is_error(node: str) -> bool:
    """True for an error node (``.../err`` or ``.../err@pos``)."""
    return parse_node_id(node).feature is None


def has_position(node: str) -> bool:
    """True for a templatic id (one with ``@pos``)."""
    return parse_node_id(node).position is not None


def without_position(node: str) -> str:
    """``site/f3@5`` -> ``site/f3``: the node summed over positions (ids without a position
    come back unchanged)."""
    hook, feature, _ = parse_node_id(node)
    return node_id(hook, feature, None)


def check_node_id(node: str, sites: Mapping[str, Site], n_pos: int, templatic: bool) -> Node:
    """``parse_node_id`` plus checks against the sites and the data: a known site, a
    position exactly when templatic and within the sequence, a feature below ``d_sae``."""
    hook, feature, pos = parsed = parse_node_id(node)
    if hook not in sites:
        raise ValueError(f"node {node!r}: {hook!r} is not one of the sites {list(sites)}")
    if (pos is None) == templatic:
        need = "needs a position '@<pos>'" if templatic else "takes no position"
        raise ValueError(
            f"node {node!r}: under {('sum', 'templatic')[templatic]} aggregation a node id {need}"
        )
    if feature is not None and feature >= sites[hook].d_sae:
        raise ValueError(f"node {node!r}: feature {feature} >= d_sae {sites[hook].d_sae}")
    if pos is not None and pos >= n_pos:
        raise ValueError(f"node {node!r}: position {pos} >= sequence length {n_pos}")
    return parsed


NodeMasks = dict[str, tuple[Bool[Tensor, "rows d_sae"], Bool[Tensor, " rows"]]]
"""Per site hook: boolean masks of features ``[rows, d_sae]`` and errors ``[rows]``;
``rows`` is the sequence length (templatic) or 1 (summed: one mask for every position)."""


def node_masks(
    nodes: Iterable[str],
    sites: Iterable[Site],
    n_pos: int,
    templatic: bool,
    *,
    known: Iterable[Site] | None = None,
    device: torch.device | str | None = None,
) -> NodeMasks:
    """Masks of the nodes ``nodes`` at each of ``sites`` (every id checked by
    ``check_node_id``). Ids at a site of ``known`` (default: ``sites``) that is not in
    ``sites`` are checked and skipped, e.g. sites an evaluation leaves untouched."""
    sites = list(sites)
    by_hook = {s.hook_name: s for s in (sites if known is None else known)}
    rows = n_pos if templatic else 1
    masks = {
        s.hook_name: (
            torch.zeros(rows, s.d_sae, dtype=torch.bool, device=device),
            torch.zeros(rows, dtype=torch.bool, device=device),
        )
        for s in sites
    }
    for node in nodes:
        hook, feature, pos = check_node_id(node, by_hook, n_pos, templatic)
        if hook not in masks:
            continue
        row = 0 if pos is None else pos
        if feature is None:
            masks[hook][1][row] = True
        else:
            masks[hook][0][row, feature] = True
    return masks


def count_nodes(masks: NodeMasks) -> int:
    """Number of nodes set in ``masks``."""
    return sum(int(f.sum()) + int(e.sum()) for f, e in masks.values())
