"""The ``sfc`` command end to end on a tiny random model (the model loader is patched; SAEs,
data and reports go through files as a user's would)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_saes, make_tiny_model, standard_hooks

import sfc_plugin.cli
import sfc_plugin.models
from sfc_plugin.cli import main
from sfc_plugin.evaluation import circuit_scores

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(tokenizer, monkeypatch, tmp_path):
    model = make_tiny_model("sequential", tokenizer)
    saes = make_saes(model, standard_hooks(model.cfg.n_layers), d_sae=16)
    for hook, sae in saes.items():
        sae.save_model(tmp_path / "saes" / hook)
    monkeypatch.setattr(sfc_plugin.models, "load_model", lambda name, device=None: model)
    return model, saes, tmp_path


def test_data_circuit_and_evaluate_commands(tiny, capsys):
    model, saes, tmp = tiny
    for split, n in (("train", 8), ("test", 6)):
        assert main(["data", "--task", "across_pp", "--split", split, "--n", str(n),
                     "--out", str(tmp / f"{split}.jsonl")]) == 0  # fmt: skip
    assert len((tmp / "test.jsonl").read_text().splitlines()) == 6
    saes_dir = str(tmp / "saes")
    code = main(
        ["circuit", "--saes", saes_dir, "--data", str(tmp / "train.jsonl"),
         "--test-data", str(tmp / "test.jsonl"), "--out", str(tmp / "report.html"),
         "--circuit-out", str(tmp / "circuit.json"), "--method", "atp",
         "--node-threshold", "0.02", "--edge-threshold", "0.001"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "faithfulness" in out and "report:" in out
    page = (tmp / "report.html").read_text()
    assert "<svg" in page and "data:image/png;base64," in page and "neurons" in page

    assert main(["evaluate", "--saes", saes_dir, "--circuit", str(tmp / "circuit.json"),
                 "--data", str(tmp / "test.jsonl"), "--json"]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from sfc_plugin.circuit import Circuit

    want = circuit_scores(
        model, saes, Circuit.load(tmp / "circuit.json"), tmp / "test.jsonl", progress=False
    )
    assert got["faithfulness"] == pytest.approx(want.faithfulness, abs=1e-6)
    assert got["completeness"] == pytest.approx(want.completeness, abs=1e-6)
    assert got["nodes"] > 0


def test_errors_are_reported_without_traceback(tiny, capsys):
    _, _, tmp = tiny
    (tmp / "bad.jsonl").write_text('{"clean_prefix": "The cat"}\n')
    code = main(["evaluate", "--saes", str(tmp / "saes"), "--circuit", str(tmp / "nope.json"),
                 "--data", str(tmp / "bad.jsonl")])  # fmt: skip
    assert code == 2 and "nope.json" in capsys.readouterr().err
    code = main(["circuit", "--saes", str(tmp / "saes"), "--data", str(tmp / "bad.jsonl"),
                 "--out", str(tmp / "r.html")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "row 0" in err and "bad.jsonl" in err


HELP_SCRIPT = """
import sys, sfc_plugin.cli
try:
    sfc_plugin.cli.main(["--help"])
except SystemExit:
    pass
print("HEAVY", sorted(m for m in sys.modules if m in ("torch", "transformer_lens")))
"""


def test_help_is_quick_and_complete(capsys):
    # a fresh interpreter, as the installed command: --help imports neither torch nor TL
    done = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "usage: sfc" in done.stdout
    assert "HEAVY []" in done.stdout
    assert sfc_plugin.cli.EMBEDDED_MODEL == sfc_plugin.models.EMBEDDED_MODEL
    for command in ("circuit", "evaluate", "data"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: sfc {command}" in text
        if command == "circuit":
            assert "--node-threshold" in text and "--test-data" in text
