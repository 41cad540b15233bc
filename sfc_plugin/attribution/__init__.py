"""Attribution: indirect effects of nodes (eq. 2-4) and edges (eq. 5, 6), and the check of
the approximations against exact patching. ``run`` holds what node and edge passes share."""

from sfc_plugin.attribution.approximation import approximation_check
from sfc_plugin.attribution.edges import edge_effects
from sfc_plugin.attribution.effects import NodeEffects, node_effects

__all__ = ["NodeEffects", "approximation_check", "edge_effects", "node_effects"]
