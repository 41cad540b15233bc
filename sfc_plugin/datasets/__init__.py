"""Datasets shipped with the package (generated from templates, no downloads) and the
shared reading of plain text."""

from sfc_plugin.datasets.agreement import TASKS, agreement
from sfc_plugin.datasets.bias_in_bios import bias_in_bios
from sfc_plugin.datasets.ioi import ioi

__all__ = ["TASKS", "agreement", "bias_in_bios", "ioi"]
