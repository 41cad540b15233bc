"""Datasets shipped with the package (generated from templates, no downloads) and the
shared reading of plain text."""

from sfc_plugin.datasets.agreement import TASKS, agreement

__all__ = ["TASKS", "agreement"]
