"""The ``sfc`` command: data, circuit and evaluate end to end on a tiny random model (the model
loader is patched; SAEs, data and reports go through files as a user's would); the other
commands with their library call patched, checking the options it gets."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import make_saes, make_tiny_model, standard_hooks

import sfc_plugin.cli
import sfc_plugin.dictionaries
import sfc_plugin.models
from sfc_plugin.cli import main
from sfc_plugin.datasets import TASKS
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

    # the threshold chosen on validation pairs instead of given
    assert main(["data", "--task", "across_pp", "--n", "6", "--seed", "1",
                 "--out", str(tmp / "validation.jsonl")]) == 0  # fmt: skip
    assert main(
        ["circuit", "--saes", saes_dir, "--data", str(tmp / "train.jsonl"),
         "--test-data", str(tmp / "test.jsonl"), "--out", str(tmp / "chosen.html"),
         "--circuit-out", str(tmp / "chosen.json"), "--method", "atp", "--no-curve",
         "--target-faithfulness", "0.5", "--validation-data", str(tmp / "validation.jsonl")]
    ) == 0  # fmt: skip
    assert "chosen on validation pairs" in capsys.readouterr().out
    chosen = Circuit.load(tmp / "chosen.json").settings["threshold_choice"]
    assert chosen["validation_pairs"] == 6 and chosen["target_faithfulness"] == 0.5


def test_trace_command(tiny, capsys):
    model, saes, tmp = tiny
    assert main(["data", "--task", "across_pp", "--n", "4", "--out", str(tmp / "t.jsonl")]) == 0
    out = tmp / "traced.json"
    code = main(
        ["trace", "--saes", str(tmp / "saes"), "--data", str(tmp / "t.jsonl"), "--out", str(out),
         "--html", str(tmp / "traced.html"), "--export-dir", str(tmp / "graphs"),
         "--node-threshold", "0.02", "--target", "metric", " is| are"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    from sfc_plugin.circuit import Circuit

    circuit = Circuit.load(out)
    assert circuit.settings["effects"] == "direct" and len(circuit.nodes) > 0
    assert circuit.settings["targets"] == ["metric", "logit(' is')-logit(' are')"]
    assert "<svg" in (tmp / "traced.html").read_text()
    assert json.loads((tmp / "graphs" / "traced.json").read_text())["links"]
    code = main(["trace", "--saes", str(tmp / "saes"), "--data", str(tmp / "t.jsonl"),
                 "--out", str(out), "--target", " two words"])  # fmt: skip
    assert code == 2 and "not one" in capsys.readouterr().err


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


COMMANDS = ("data", "circuit", "evaluate", "demo", "shift", "behaviours", "reproduce", "trace",
            "compare-tracing", "levers", "corpus", "train", "bundle", "quality")  # fmt: skip

HELP_SCRIPT = """
import sys, sfc_plugin.cli
for argv in (["--help"], *([command, "--help"] for command in sys.argv[1:])):
    try:
        sfc_plugin.cli.main(argv)
    except SystemExit:
        pass
print("HEAVY", sorted(m for m in sys.modules if m in ("torch", "transformer_lens")))
"""


def test_help_is_quick_and_complete(capsys):
    # a fresh interpreter, as the installed command: --help imports neither torch nor TL
    done = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, *COMMANDS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "usage: sfc" in done.stdout
    assert "HEAVY []" in done.stdout
    assert sfc_plugin.cli.EMBEDDED_MODEL == sfc_plugin.models.EMBEDDED_MODEL
    assert sfc_plugin.cli.TASKS == TASKS
    assert sfc_plugin.cli.REPRESENTATIONS == sfc_plugin.behaviours.KINDS
    for command in COMMANDS:
        assert f"usage: sfc {command}" in done.stdout
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: sfc {command}" in text
        if command == "circuit":
            assert "--node-threshold" in text and "--test-data" in text
    done = subprocess.run(
        [sys.executable, "-m", "sfc_plugin", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "usage: sfc train" in done.stdout and "--resume" in done.stdout


# ------------------------------------------------ the other commands: options -> typed calls


def _defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not p.empty
    }


def test_behaviours_passes_the_library_defaults(monkeypatch):
    from sfc_plugin.experiments import behaviours

    calls = []
    expected = _defaults(behaviours.run_behaviours_experiment)
    monkeypatch.setattr(behaviours, "run_behaviours_experiment", lambda **o: calls.append(o))
    assert main(["behaviours"]) == 0 and calls.pop() == expected
    argv = ["behaviours", "--k", "100", "400", "--engine", "ray", "--representation", "gradients"]
    assert main(argv) == 0
    assert calls.pop() == {
        **expected,
        "k": (100, 400),
        "engine": "ray",
        "representation": "gradients",
    }


def test_demo_and_reproduce_pass_the_library_defaults(monkeypatch, tmp_path, capsys):
    from sfc_plugin.experiments import demo, reproduce

    calls = []
    expected = _defaults(demo.run_demo)
    monkeypatch.setattr(demo, "run_demo", lambda **options: calls.append(options))
    assert main(["demo"]) == 0 and calls.pop() == expected
    assert main(["demo", "--method", "atp", "--dashboard-tokens", "0", "--neurons"]) == 0
    assert calls.pop() == {**expected, "method": "atp", "dashboard_tokens": 0, "neurons": True}
    assert main(["demo", "--target-faithfulness", "none", "--node-threshold", "0.2"]) == 0
    assert calls.pop() == {**expected, "target_faithfulness": None, "node_threshold": 0.2}

    def fake_reproduce(settings):
        calls.append(settings)
        return tmp_path / "reproduction.md"

    monkeypatch.setattr(reproduce, "reproduce", fake_reproduce)
    assert main(["reproduce"]) == 0 and calls.pop() == reproduce.ReproduceSettings()
    assert "reproduction.md" in capsys.readouterr().out
    argv = ["reproduce", "--tasks", "across_rc", "--no-approx", "--train", "32", "--out", "x"]
    assert main([*argv, "--methods", "atp"]) == 0
    settings = calls.pop()
    assert settings == reproduce.ReproduceSettings(
        tasks=["across_rc"], approx=False, train=32, out="x", methods=["atp"]
    )
    # the command line the page quotes: what sets its numbers, when not the defaults
    assert settings.command() == "sfc reproduce --out x --train 32 --methods atp"
    assert reproduce.ReproduceSettings().command() == "sfc reproduce"
    with pytest.raises(ValueError, match="approx_task"):
        reproduce.ReproduceSettings(approx_task="nope")
    for methods in ([], ["ig", "ig"], ["eap"]):
        with pytest.raises(ValueError, match="methods"):
            reproduce.ReproduceSettings(methods=methods)  # type: ignore[arg-type]


def test_compare_tracing_passes_the_library_defaults(monkeypatch, tmp_path):
    from sfc_plugin.experiments import tracing

    calls = []
    monkeypatch.setattr(tracing, "compare_tracing", lambda s: calls.append(s) or tmp_path)
    assert main(["compare-tracing"]) == 0 and calls.pop() == tracing.ComparisonSettings()
    assert main(["compare-tracing", "--tasks", "ioi", "--train", "8", "--out", "x"]) == 0
    settings = calls.pop()
    assert settings == tracing.ComparisonSettings(tasks=["ioi"], train=8, out="x")
    assert settings.command() == "sfc compare-tracing --out x --train 8"
    with pytest.raises(ValueError, match="judge_threshold"):
        tracing.ComparisonSettings(judge_threshold=0.5)


def test_levers_passes_the_library_defaults(monkeypatch, tmp_path):
    from sfc_plugin.experiments import levers

    calls = []
    monkeypatch.setattr(levers, "levers", lambda s: calls.append(s) or tmp_path)
    assert main(["levers"]) == 0 and calls.pop() == levers.LeverSettings()
    assert calls == [] and levers.LeverSettings().rows == list(levers.ROWS)
    assert main(["levers", "--rows", "bundled_ig", "--train", "8", "--out", "x"]) == 0
    assert calls.pop() == levers.LeverSettings(rows=["bundled_ig"], train=8, out="x")
    with pytest.raises(ValueError, match="unknown.*bundled_xx"):
        levers.LeverSettings(rows=["bundled_xx"])


def test_shift_passes_the_library_defaults(monkeypatch, tmp_path):
    from sfc_plugin.experiments import shift

    calls = []
    expected = _defaults(shift.run_shift_experiment)
    monkeypatch.setattr(shift, "run_shift_experiment", lambda **options: calls.append(options))
    assert main(["shift"]) == 0 and calls.pop() == expected
    argv = ["shift", "--judge", "marked", "--marked", "m.txt", "--method", "ig", "--n-test", "8"]
    assert main(argv) == 0
    assert calls.pop() == {**expected, "judge": "marked", "marked": "m.txt", "method": "ig"} | {
        "n_test": 8
    }
    marked = tmp_path / "nodes.txt"
    marked.write_text(
        "# spurious\nblocks.2.hook_resid_post/f3  # she\n\nblocks.5.hook_mlp_out/f0\n"
    )
    judge = shift.make_judge("marked", marked)
    from sfc_plugin.shift import FeatureDescription

    def ask(node):
        hook, feature = node.split("/f")
        return judge(FeatureDescription(node, hook, int(feature), 1.0))

    assert ask("blocks.2.hook_resid_post/f3")[0] and not ask("blocks.2.hook_resid_post/f4")[0]
    with pytest.raises(ValueError, match="needs marked="):
        shift.make_judge("marked")


def test_train_passes_a_train_config(monkeypatch, capsys):
    from sfc_plugin.training import trainer

    for var in ("WANDB_MODE", "HF_HUB_OFFLINE"):  # set by the command; restored afterwards
        monkeypatch.setenv(var, "")
    configs = []

    def fake_train(config):
        configs.append(config)
        return {"saes": {"blocks.2.hook_mlp_out": {"l0_last_window": 32, "dead_fraction": 0.0}},
                "wall_time_s": 1.0}  # fmt: skip

    monkeypatch.setattr(trainer, "train", fake_train)
    assert main(["train", "--corpus", "c", "--out", "o"]) == 0
    assert configs.pop() == trainer.TrainConfig(corpus="c", out="o")
    assert "blocks.2.hook_mlp_out: L0 32" in capsys.readouterr().out
    argv = ["train", "--corpus", "c", "--out", "o", "--layers", "1,3", "--hooks", "mlp_out",
            "--no-exclude-bos", "--resume", "--d-sae", "64"]  # fmt: skip
    assert main(argv) == 0
    assert configs.pop() == trainer.TrainConfig(
        corpus="c", out="o", layers=[1, 3], hooks=["mlp_out"], exclude_bos=False, resume=True,
        d_sae=64,
    )  # fmt: skip
    # bad options are named, before anything is loaded
    for bad, name in ((["--hooks", "attn_z"], "hooks"), (["--k", "64", "--d-sae", "32"], "k")):
        assert main(["train", "--corpus", "c", "--out", "o", *bad]) == 2
        assert name in capsys.readouterr().err
    assert not configs


def test_corpus_bundle_and_quality_commands(monkeypatch, tmp_path, capsys):
    import pandas as pd

    from sfc_plugin.datasets.text import SAMPLE, read_texts
    from sfc_plugin.dictionaries import quality
    from sfc_plugin.training import bundle, corpus

    calls = []
    expected = _defaults(corpus.build_corpus)
    total = {"documents": 1, "tokens": 2, "characters": 3}

    def fake_build(out, **options):
        calls.append((out, options))
        return {"total": {"train": total, "heldout": total}}

    monkeypatch.setattr(corpus, "build_corpus", fake_build)
    assert main(["corpus", "--out", str(tmp_path)]) == 0
    out, options = calls.pop()
    assert out == tmp_path and options == {
        name: expected[name] for name in ("max_tokens", "seed", "sample", "sample_tokens")
    } | {"mix": {}}
    assert main(["corpus", "--out", "c", "--weight", "gcide=0.5", "--weight", "bible=1"]) == 0
    assert calls.pop()[1]["mix"] == {"gcide": 0.5, "bible": 1.0}
    with pytest.raises(SystemExit):
        main(["corpus", "--out", "c", "--weight", "nope=1"])
    assert "NAME=WEIGHT" in capsys.readouterr().err

    expected = _defaults(bundle.bundle)

    def fake_bundle(src, **options):
        calls.append((src, options))
        return tmp_path

    monkeypatch.setattr(bundle, "bundle", fake_bundle)
    assert main(["bundle", "run/saes"]) == 0
    assert calls.pop() == ("run/saes", {k: expected[k] for k in ("release", "model", "dest")})
    assert main(["bundle", "run/saes", "--release", "new", "--dest", "pkg/saes"]) == 0
    assert calls.pop()[1] == {"release": "new", "model": expected["model"], "dest": "pkg/saes"}

    expected = _defaults(quality.sae_quality)
    model = SimpleNamespace(cfg=SimpleNamespace(device="cpu"))
    monkeypatch.setattr(sfc_plugin.models, "load_model", lambda name: model)
    monkeypatch.setattr(sfc_plugin.dictionaries, "load_saes", lambda source, device: {})
    table = pd.DataFrame({"hook_name": ["blocks.0.hook_mlp_out"], "l0": [4.0]})

    def fake_quality(model_, saes, texts, **options):
        calls.append((model_, list(texts), options))
        return table

    monkeypatch.setattr(quality, "sae_quality", fake_quality)
    page = tmp_path / "q.md"
    assert main(["quality", "--saes", "smollm2-135m-sfc", "--out", str(page)]) == 0
    model_, texts, options = calls.pop()
    assert model_ is model and texts == list(read_texts(SAMPLE))
    assert options == {k: expected[k] for k in ("max_tokens", "ce_tokens")}
    assert page.read_text() == quality.markdown_table(table) + "\n"
    assert pd.read_csv(page.with_suffix(".csv")).equals(table)
