"""sfc_plugin: sparse feature circuits (Marks et al.) on SAELens + TransformerLens.

The public API lives here; submodules are imported lazily so ``import sfc_plugin`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sfc_plugin.version import __version__

_EXPORTS = {
    "load_model": "sfc_plugin.models",
    "load_tokenizer": "sfc_plugin.models",
    "load_saes": "sfc_plugin.dictionaries",
    "neuron_saes": "sfc_plugin.dictionaries",
    "attach_saes": "sfc_plugin.sites",
    "Site": "sfc_plugin.sites",
    "node_effects": "sfc_plugin.attribution",
    "NodeEffects": "sfc_plugin.attribution",
    "Dataset": "sfc_plugin.data",
    "read_dataset": "sfc_plugin.data",
    "edge_effects": "sfc_plugin.attribution",
    "discover_circuit": "sfc_plugin.circuit",
    "Circuit": "sfc_plugin.circuit",
    "faithfulness": "sfc_plugin.evaluation",
    "completeness": "sfc_plugin.evaluation",
    "circuit_scores": "sfc_plugin.evaluation",
    "CircuitScores": "sfc_plugin.evaluation",
    "faithfulness_curve": "sfc_plugin.evaluation",
    "nodes_to_reach": "sfc_plugin.evaluation",
    "smallest_faithful_threshold": "sfc_plugin.evaluation",
    "approximation_check": "sfc_plugin.attribution",
    "plot_faithfulness_curve": "sfc_plugin.frontend.plots",
    "plot_approximation": "sfc_plugin.frontend.plots",
    "circuit_report": "sfc_plugin.experiments.report",
    "feature_dashboard": "sfc_plugin.frontend.dashboards",
    "feature_index": "sfc_plugin.frontend.dashboards",
    "FeatureIndex": "sfc_plugin.frontend.dashboards",
    "Dashboard": "sfc_plugin.frontend.dashboards",
    "train_probe": "sfc_plugin.shift",
    "Probe": "sfc_plugin.shift",
    "probe_circuit": "sfc_plugin.shift",
    "run_shift": "sfc_plugin.shift",
    "ShiftSettings": "sfc_plugin.shift",
    "ShiftResult": "sfc_plugin.shift",
    "trace": "sfc_plugin.tracing",
    "direct_effects": "sfc_plugin.tracing",
    "export_graph": "sfc_plugin.tracing",
    "prune_with_judge": "sfc_plugin.tracing",
}

_SUBMODULES = ("behaviours", "datasets", "judges", "shift", "tracing")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)

if TYPE_CHECKING:
    from sfc_plugin.attribution import NodeEffects, approximation_check, edge_effects, node_effects
    from sfc_plugin.circuit import Circuit, discover_circuit
    from sfc_plugin.data import Dataset, read_dataset
    from sfc_plugin.dictionaries import load_saes, neuron_saes
    from sfc_plugin.evaluation import (
        CircuitScores,
        circuit_scores,
        completeness,
        faithfulness,
        faithfulness_curve,
        nodes_to_reach,
        smallest_faithful_threshold,
    )
    from sfc_plugin.experiments.report import circuit_report
    from sfc_plugin.frontend.dashboards import (
        Dashboard,
        FeatureIndex,
        feature_dashboard,
        feature_index,
    )
    from sfc_plugin.frontend.plots import plot_approximation, plot_faithfulness_curve
    from sfc_plugin.models import load_model, load_tokenizer
    from sfc_plugin.shift import (
        Probe,
        ShiftResult,
        ShiftSettings,
        probe_circuit,
        run_shift,
        train_probe,
    )
    from sfc_plugin.sites import Site, attach_saes
    from sfc_plugin.tracing import direct_effects, export_graph, prune_with_judge, trace


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"sfc_plugin.{name}")
    raise AttributeError(f"module 'sfc_plugin' has no attribute {name!r}")
