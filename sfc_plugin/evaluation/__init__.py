"""Evaluation of circuits: faithfulness and completeness (``scores``) and their curves
against circuit size (``curves``)."""

from sfc_plugin.evaluation.curves import (
    CURVE_COLUMNS,
    ThresholdChoice,
    default_thresholds,
    faithfulness_curve,
    interpolated_nodes,
    nodes_to_reach,
    smallest_faithful_threshold,
)
from sfc_plugin.evaluation.scores import (
    CircuitScores,
    ErrorPolicy,
    EvalAblation,
    Evaluator,
    circuit_scores,
    completeness,
    faithfulness,
)

__all__ = [
    "CURVE_COLUMNS",
    "CircuitScores",
    "ErrorPolicy",
    "EvalAblation",
    "ThresholdChoice",
    "Evaluator",
    "circuit_scores",
    "completeness",
    "default_thresholds",
    "faithfulness",
    "faithfulness_curve",
    "interpolated_nodes",
    "nodes_to_reach",
    "smallest_faithful_threshold",
]
