"""Datasets shipped with the package (generated from templates, no downloads) and the
shared reading of plain text."""

from sfc_plugin.datasets.agreement import TASKS, agreement
from sfc_plugin.datasets.bias_in_bios import bias_in_bios

__all__ = ["TASKS", "agreement", "bias_in_bios"]
