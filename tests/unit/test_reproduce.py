"""The reproduction script's pure parts (the full run is `sfc reproduce`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sfc_plugin.attribution import NodeEffects
from sfc_plugin.experiments.reproduce import (
    END,
    START,
    ReproduceSettings,
    error_share,
    finished_task,
    generated_section,
    overlap,
    write_page,
)


def test_overlap_counts_shared_nodes():
    o = overlap(["a/f1", "a/f2", "b/err", "c/f3"], ["a/f1", "b/err", "d/f9"])
    assert (o["a"], o["b"], o["common"]) == (4, 3, 2)
    assert o["share_of_a"] == 0.5 and math.isclose(o["share_of_b"], 2 / 3)
    assert math.isclose(o["jaccard"], 2 / 5)


def test_error_share_is_share_of_absolute_effect():
    eff = NodeEffects(
        features={"h": torch.tensor([[1.0, -2.0], [0.0, 1.0]])},
        errors={"h": torch.tensor([-3.0, 1.0])},
        method="atp",
        ablation="patch",
        aggregation="templatic",
        steps=None,
        n_examples=1,
        metric_clean=0.0,
    )
    assert math.isclose(error_share(eff), 4 / 8)


def test_write_page_keeps_text_around_the_generated_section(tmp_path):
    page = tmp_path / "r.md"
    write_page(page, f"{START}\nfirst\n{END}")
    assert page.read_text().startswith("# Reproduction")
    page.write_text(f"# Mine\nintro\n{START}\nold\n{END}\nclosing words\n")
    write_page(page, f"{START}\nnew\n{END}")
    assert page.read_text() == f"# Mine\nintro\n{START}\nnew\n{END}\nclosing words\n"


def test_finished_tasks_are_reused_only_for_the_same_method(tmp_path):
    done = tmp_path / "summary.json"
    assert finished_task(done, "atp", ReproduceSettings()) is None
    done.write_text(json.dumps({"task": "simple", "method": "atp"}))
    assert finished_task(done, "atp", ReproduceSettings()) == {"task": "simple", "method": "atp"}
    assert finished_task(done, "atp", ReproduceSettings(fresh=True)) is None
    with pytest.raises(ValueError, match="holds atp results.*asks for ig"):
        finished_task(done, "ig", ReproduceSettings())


def _summary(task: str, method: str, reach: int) -> dict:
    return {
        "task": task, "method": method, "n_train": 64, "n_test": 64, "seconds": 60.0,
        "reach": {k: {"0.5": reach, "0.8": None} for k in ("features", "neurons")},
        "error_share": 0.2, "circuit_nodes": reach, "circuit_error_nodes": 3,
        "circuit_faithfulness": 0.5, "circuit_completeness": 0.1, "m_model": -2.0,
        "m_empty": 0.0,
    }  # fmt: skip


def test_generated_section_puts_each_method_beside_the_headline():
    summaries = {
        "ig": {t: _summary(t, "ig", 11) for t in ("simple", "across_rc")},
        "atp": {t: _summary(t, "atp", 22) for t in ("simple", "across_rc")},
    }
    figures = {"ig": "reproduction/ig/curves.png", "atp": "reproduction/atp/curves.png"}
    text = generated_section(summaries, {"node_threshold": 0.1, "command": "sfc x"}, figures)
    table = [line for line in text.splitlines() if line.startswith("| simple")]
    # both tables: the task's IG row, then its AtP row
    assert [row.split(" | ")[1] for row in table] == ["IG", "AtP", "IG", "AtP"]
    assert table[0].split(" | ")[3] == "11" and table[1].split(" | ")[3] == "22"
    assert text.index("| simple | IG") < text.index("| across_rc | IG")
    assert text.index("](reproduction/ig/curves.png)") < text.index("](reproduction/atp/")
