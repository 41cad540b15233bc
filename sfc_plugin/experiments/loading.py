"""What the experiment commands share: the model, its dictionaries and, when asked, the
feature dashboards their pages show (built once, then read from the cache)."""

from __future__ import annotations

import time
from typing import Any

from sfc_plugin.dictionaries import load_saes
from sfc_plugin.frontend.dashboards import FeatureIndex, feature_index
from sfc_plugin.models import load_model


def load_with_dashboards(
    model: str, saes: str, *, dashboard_tokens: int, device: str | None = None
) -> tuple[Any, dict[str, Any], FeatureIndex | None]:
    """``load_model(model)``, ``load_saes(saes)`` on its device, and the feature index over
    ``dashboard_tokens`` tokens of the bundled text (None for 0), printing its time."""
    lm = load_model(model, device=device)
    dictionaries = load_saes(saes, device=str(lm.cfg.device))
    index = None
    if dashboard_tokens:
        t0 = time.perf_counter()
        index = feature_index(dictionaries, lm, max_tokens=dashboard_tokens)
        print(f"feature dashboards ready in {time.perf_counter() - t0:.1f} s")
    return lm, dictionaries, index
