"""SHIFT (paper section 4, METHOD.md section 7): probes on a frozen model, and (next) the
probe's circuit, judges, ablation and retraining, baselines."""

from sfc_plugin.shift.probe import Probe, default_probe_hook, pooled_activations, train_probe

__all__ = ["Probe", "default_probe_hook", "pooled_activations", "train_probe"]
