"""SHIFT (paper section 4, METHOD.md section 7): probes on a frozen model (``probe``), the
probe's circuit (``circuit``), judges of its features (``sfc_plugin.judges``), ablation
(``ablation``), scores and the concept-bottleneck baseline (``scoring``), and the whole table
(``experiment.run_shift``)."""

from sfc_plugin.judges import (
    GENDER_WORDS,
    PROFESSION_WORDS,
    PROMPT,
    FeatureDescription,
    Judge,
    Judgement,
    describe_features,
    judge_features,
    lexicon_judge,
    llm_judge,
    marked_judge,
)
from sfc_plugin.shift.ablation import ablation_hooks, mean_features, random_features
from sfc_plugin.shift.circuit import ProbeCircuit, probe_circuit, probe_metric, probe_sites
from sfc_plugin.shift.experiment import (
    ROWS,
    ShiftResult,
    ShiftSettings,
    run_shift,
)
from sfc_plugin.shift.probe import Probe, default_probe_hook, pooled_activations, train_probe
from sfc_plugin.shift.scoring import CBP_CONCEPTS, concept_similarities, concept_vectors, scores

__all__ = [
    "CBP_CONCEPTS",
    "GENDER_WORDS",
    "PROFESSION_WORDS",
    "PROMPT",
    "ROWS",
    "FeatureDescription",
    "Judge",
    "Judgement",
    "Probe",
    "ProbeCircuit",
    "ShiftResult",
    "ShiftSettings",
    "ablation_hooks",
    "concept_similarities",
    "concept_vectors",
    "default_probe_hook",
    "describe_features",
    "judge_features",
    "lexicon_judge",
    "llm_judge",
    "marked_judge",
    "mean_features",
    "pooled_activations",
    "probe_circuit",
    "probe_metric",
    "probe_sites",
    "random_features",
    "run_shift",
    "scores",
    "train_probe",
]
