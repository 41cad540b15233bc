"""Datasets shipped with the package (generated from templates, no downloads)."""

from sfc_plugin.datasets.agreement import TASKS, agreement

__all__ = ["TASKS", "agreement"]
