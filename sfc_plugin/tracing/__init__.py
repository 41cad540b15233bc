"""Hierarchical tracing with direct effects (seed 002, METHOD.md sections 9 and 11): the frozen
replacement model (``replacement``), direct effects (``direct``), tracing into a ``Circuit``
(``trace``), pruning by a judge (``pruning``) and export to circuit-tracer's graph JSON
(``export``)."""

from sfc_plugin.tracing.direct import Target, direct_effects
from sfc_plugin.tracing.export import export_graph, graph_json
from sfc_plugin.tracing.pruning import TRACE_PROMPT, prune_with_judge
from sfc_plugin.tracing.trace import TraceBudgetError, trace

__all__ = [
    "TRACE_PROMPT",
    "Target",
    "TraceBudgetError",
    "direct_effects",
    "export_graph",
    "graph_json",
    "prune_with_judge",
    "trace",
]
