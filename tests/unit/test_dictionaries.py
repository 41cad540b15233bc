"""Tests for sfc_plugin.dictionaries.load_saes (all offline).

Loading by SAELens release name is exercised on a Hugging Face hub cache built in tmp_path
with the exact layout ``huggingface_hub`` writes (``models--{org}--{name}/refs/main``,
``blobs/{etag}``, ``snapshots/{commit}/{path}`` symlinks), for the real release
``gpt2-small-res-jb`` (plain SAELens loader), with tiny random weights (d_in 32). Hub access is
forced offline and every socket connect / DNS lookup is recorded and refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import sae_metadata
from hub_cache import HubCache
from sae_lens import SAE, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

import sfc_plugin.dictionaries.loading as dictionaries
from sfc_plugin.dictionaries import (
    COMPANION_RELEASES,
    ReleaseNotInstalledError,
    load_saes,
    register_release,
    registered_releases,
    unregister_release,
)
from sfc_plugin.sites import hook_sort_key
from sfc_plugin.training.bundle import bundle

D_IN = 32
D_SAE = 64
RELEASE = "gpt2-small-res-jb"
REPO_ID = "jbloom/GPT2-Small-SAEs-Reformatted"
IDS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]


# --------------------------------------------------------------------------- helpers


def make_sae(
    hook_name: str | None, d_in: int = D_IN, d_sae: int = 16, seed: int = 0, arch: str = "std"
) -> SAE:
    """A small random SAE reading ``hook_name`` (no hook name in its metadata if None)."""
    meta = sae_metadata(hook_name=hook_name, model_name="tiny") if hook_name else sae_metadata()
    if arch == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return sae


def assert_same_weights(a: SAE, b: SAE) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def tiny_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=100,
        n_ctx=16,
        act_fn="gelu",
        seed=0,
        device="cpu",
    )
    return HookedTransformer(cfg)


@pytest.fixture
def bundled(monkeypatch):
    """An empty bundled-release registry for the duration of the test."""
    monkeypatch.setattr(dictionaries, "_BUNDLED_RELEASES", {})


# --------------------------------------------------------------------------- HF hub cache


def legacy_jb_cfg(hook_name: str, layer: int) -> dict:
    """cfg.json as served by jbloom/GPT2-Small-SAEs-Reformatted (pre-6.0 SAELens format:
    ``hook_point``, ``dtype: "torch.float32"``, training-run fields), shrunk to d_in 32."""
    return {
        "model_name": "gpt2-small",
        "hook_point": hook_name,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "use_cached_activations": False,
        "cached_activations_path": f"activations/Skylion007_openwebtext/gpt2-small/{hook_name}",
        "d_in": D_IN,
        "n_batches_in_buffer": 128,
        "total_training_tokens": 300000000,
        "store_batch_size": 32,
        "device": "mps",
        "seed": 42,
        "dtype": "torch.float32",
        "b_dec_init_method": "geometric_median",
        "expansion_factor": D_SAE // D_IN,
        "from_pretrained_path": None,
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "lr_scheduler_name": None,
        "lr_warm_up_steps": 5000,
        "train_batch_size": 4096,
        "use_ghost_grads": False,
        "feature_sampling_window": 1000,
        "feature_sampling_method": None,
        "resample_batches": 1028,
        "feature_reinit_scale": 0.2,
        "dead_feature_window": 5000,
        "dead_feature_estimation_method": "no_fire",
        "dead_feature_threshold": 1e-08,
        "log_to_wandb": True,
        "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5",
        "wandb_entity": None,
        "wandb_log_frequency": 100,
        "n_checkpoints": 10,
        "checkpoint_path": "checkpoints/y1t51byy",
        "d_sae": D_SAE,
        "tokens_per_buffer": 67108864,
        "run_name": f"{D_SAE}-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
    }


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
    }


@pytest.fixture
def jb_cache(hf_offline):
    """The hub cache holding two tiny SAEs of gpt2-small-res-jb; returns (cache, weights)."""
    info = dictionaries._pretrained_releases()[RELEASE]  # SAELens' pretrained_saes.yaml
    assert info["repo_id"] == REPO_ID and info.get("conversion_func") is None  # plain loader
    saes_map = {sae["id"]: sae["path"] for sae in info["saes"]}
    hub = HubCache(hf_offline, info["repo_id"])
    weights = {}
    for layer, sae_id in enumerate(IDS):
        weights[sae_id] = random_weights(seed=layer)
        # One SAE ships a sparsity file, the other does not (the loader must cope with both).
        sparsity = -torch.rand(D_SAE) * 5 if layer == 0 else None
        hub.add_sae(saes_map[sae_id], legacy_jb_cfg(sae_id, layer), weights[sae_id], sparsity)
    return hub, weights


# --------------------------------------------------------------------------- SAELens release


def test_release_loads_from_offline_hf_cache(jb_cache, no_network):
    hub, weights = jb_cache
    saes = load_saes(RELEASE, sae_ids=list(reversed(IDS)), device="cpu")
    assert list(saes) == IDS  # keyed by hook name, forward order
    for hook, sae in saes.items():
        assert isinstance(sae, StandardSAE)
        assert sae.cfg.metadata.hook_name == hook
        assert sae.cfg.metadata.model_name == "gpt2-small"
        assert sae.cfg.d_in == D_IN and sae.cfg.d_sae == D_SAE
        assert sae.dtype == torch.float32 and sae.device.type == "cpu"
        state = sae.state_dict()
        assert state.keys() == weights[hook].keys()
        for name, tensor in weights[hook].items():
            assert torch.equal(state[name], tensor), (hook, name)
    # config_overrides / neuronpedia ids of the yaml entry are applied on top of cfg.json
    assert saes[IDS[0]].cfg.metadata.neuronpedia_id == "gpt2-small/0-res-jb"
    assert saes[IDS[0]].cfg.metadata.model_from_pretrained_kwargs == {
        "center_writing_weights": True
    }
    assert no_network == []


def test_release_single_id_string_and_dtype(jb_cache, no_network):
    hub, weights = jb_cache
    saes = load_saes(RELEASE, sae_ids=IDS[1], device="cpu", dtype="float64")
    assert list(saes) == [IDS[1]]
    assert saes[IDS[1]].W_enc.dtype == torch.float64
    assert torch.equal(saes[IDS[1]].W_enc, weights[IDS[1]]["W_enc"].double())
    assert no_network == []


@pytest.mark.parametrize("missing", ["uncached_sae", "weights_file"])
def test_release_missing_file_offline_errors_without_network(jb_cache, no_network, missing):
    hub, _ = jb_cache
    if missing == "uncached_sae":
        sae_ids = ["blocks.2.hook_resid_pre"]  # a valid id of the release, never cached
    else:
        hub.snapshot_path(f"{IDS[0]}/sae_weights.safetensors").unlink()
        sae_ids = [IDS[0]]
    with pytest.raises(FileNotFoundError, match="disk cache|local cache"):
        load_saes(RELEASE, sae_ids=sae_ids, device="cpu")
    assert no_network == []


def test_unknown_release_names_it_and_lists_choices(no_network):
    with pytest.raises(ValueError) as err:
        load_saes("gpt2-small-res-jbb", sae_ids=IDS)
    msg = str(err.value)
    assert "'gpt2-small-res-jbb'" in msg and "'gpt2-small-res-jb'" in msg
    assert no_network == []


def test_unknown_sae_id_names_it_and_lists_choices(no_network):
    with pytest.raises(ValueError) as err:
        load_saes(RELEASE, sae_ids=[IDS[0], "blocks.0.hook_resid_pree"])
    msg = str(err.value)
    assert "'blocks.0.hook_resid_pree'" in msg and RELEASE in msg
    assert "'blocks.0.hook_resid_pre'" in msg  # closest valid choice is suggested
    assert no_network == []


def test_release_saes_attach_to_tiny_model(jb_cache):
    saes = load_saes(RELEASE, sae_ids=IDS, device="cpu")
    model = tiny_model()
    assert all(hook in model.hook_dict for hook in saes)
    _, cache = model.run_with_cache(torch.arange(10)[None])
    for hook, sae in saes.items():
        recon = sae(cache[hook])
        assert recon.shape == cache[hook].shape


# --------------------------------------------------------------------------- local directories


HOOKS = ["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"]


@pytest.fixture
def saved(tmp_path):
    """Three SAEs saved with SAE.save_model under tmp_path/saes/<name>; returns (root, saes)."""
    root = tmp_path / "saes"
    saes = {}
    for i, hook in enumerate(reversed(HOOKS)):  # saved out of forward order on purpose
        sae = make_sae(hook, seed=i, arch="topk" if i == 1 else "std")
        sae.save_model(root / f"sae_{i}")
        saes[hook] = sae
    return root, saes


def test_single_directory(saved):
    root, saes = saved
    loaded = load_saes(root / "sae_0", device="cpu")
    assert list(loaded) == [HOOKS[2]]
    assert_same_weights(loaded[HOOKS[2]], saes[HOOKS[2]])


def test_parent_directory_loads_all_in_forward_order(saved):
    root, saes = saved
    (root / "notes").mkdir()  # a subdirectory without cfg.json is ignored
    loaded = load_saes(str(root), device="cpu")
    assert list(loaded) == HOOKS
    for hook in HOOKS:
        assert_same_weights(loaded[hook], saes[hook])
        assert type(loaded[hook]) is type(saes[hook])


def test_list_of_directories_and_dtype(saved):
    root, saes = saved
    loaded = load_saes([root / "sae_2", str(root / "sae_1")], dtype=torch.bfloat16)
    assert list(loaded) == HOOKS[:2]
    assert all(s.W_enc.dtype == torch.bfloat16 for s in loaded.values())
    # device=None -> cuda if available else cpu
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert all(s.W_enc.device.type == expected for s in loaded.values())


def test_directory_saes_attach_to_tiny_model(saved):
    root, _ = saved
    model = tiny_model()
    loaded = load_saes(root, device="cpu")
    assert all(hook in model.hook_dict for hook in loaded)


# --------------------------------------------------------------------------- SAE objects


def test_single_sae_object():
    sae = make_sae("blocks.1.hook_mlp_out")
    loaded = load_saes(sae)
    assert loaded == {"blocks.1.hook_mlp_out": sae}
    assert loaded["blocks.1.hook_mlp_out"] is sae


def test_list_of_sae_objects_sorted():
    saes = [make_sae(h, seed=i) for i, h in enumerate(reversed(HOOKS))]
    loaded = load_saes(saes)
    assert list(loaded) == HOOKS
    assert all(loaded[s.cfg.metadata.hook_name] is s for s in saes)


def test_dict_of_sae_objects():
    saes = {h: make_sae(h, seed=i) for i, h in enumerate(reversed(HOOKS))}
    loaded = load_saes(saes)
    assert list(loaded) == HOOKS
    assert all(loaded[h] is saes[h] for h in HOOKS)


def test_sae_objects_moved_only_when_asked():
    sae = make_sae("blocks.0.hook_resid_pre").to(dtype=torch.float64)
    assert load_saes(sae)["blocks.0.hook_resid_pre"].W_enc.dtype == torch.float64
    moved = load_saes([sae], device="cpu", dtype="float32")["blocks.0.hook_resid_pre"]
    assert moved.W_enc.dtype == torch.float32 and moved.cfg.dtype == "float32"


# --------------------------------------------------------------------------- bundled registry


def test_bundled_release(bundled, saved, no_network):
    root, saes = saved
    register_release("smollm2-135m-sfc", root)
    assert registered_releases() == {"smollm2-135m-sfc": root.resolve()}
    loaded = load_saes("smollm2-135m-sfc", sae_ids=["sae_2", "sae_0"], device="cpu")
    assert list(loaded) == [HOOKS[0], HOOKS[2]]
    assert_same_weights(loaded[HOOKS[0]], saes[HOOKS[0]])
    assert list(load_saes("smollm2-135m-sfc", device="cpu")) == HOOKS  # all ids
    assert list(load_saes("smollm2-135m-sfc", sae_ids="sae_1")) == [HOOKS[1]]
    with pytest.raises(ValueError, match="'sae_9'.*'sae_0'"):
        load_saes("smollm2-135m-sfc", sae_ids=["sae_9"])
    unregister_release("smollm2-135m-sfc")
    assert registered_releases() == {}
    with pytest.raises(ReleaseNotInstalledError, match="smollm2-135m-sfc"):
        load_saes("smollm2-135m-sfc")
    assert no_network == []


def test_bundled_release_shadows_saelens_release(bundled, saved, no_network):
    root, _ = saved
    register_release(RELEASE, root)
    assert list(load_saes(RELEASE, sae_ids=["sae_1"], device="cpu")) == [HOOKS[1]]
    assert no_network == []


def test_register_missing_directory(bundled, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        register_release("x", tmp_path / "nowhere")


def test_companion_release_not_installed_names_its_package(bundled, no_network):
    for name, package in COMPANION_RELEASES.items():
        with pytest.raises(ReleaseNotInstalledError, match=f"pip install {package}"):
            load_saes(name)
    assert no_network == []


ENTRY_POINT_SCRIPT = """
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from sfc_plugin.dictionaries import load_saes, registered_releases
print(json.dumps({
    "releases": {k: str(v) for k, v in registered_releases().items()},
    "hooks": list(load_saes("fake-release", sae_ids=["sae_0"], device="cpu")),
    "warnings": [str(w.message) for w in caught],
}))
"""


def _fake_distribution(site, name: str, module: str, entry: str, body: str) -> None:
    """An installed distribution as pip leaves one: a module and a dist-info directory whose
    entry_points.txt declares ``entry`` in the sfc_plugin.releases group."""
    (site / f"{module}.py").write_text(body)
    info = site / f"{name}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[{dictionaries.RELEASES_ENTRY_POINTS}]\n{entry}\n")


def test_installed_release_registered_from_its_entry_point(saved, tmp_path):
    """A data package declaring an entry point is loadable by name in a fresh interpreter; a
    broken one is skipped with a warning naming it."""
    root, _ = saved
    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(
        site, "fake_release", "fake_release_data", "fake-release = fake_release_data:DIRECTORY",
        f"DIRECTORY = {str(root)!r}\n",
    )  # fmt: skip
    _fake_distribution(
        site, "broken_release", "broken_release_data", "broken = broken_release_data:MISSING",
        "",
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    run = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT_SCRIPT], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["releases"]["fake-release"] == str(root.resolve())
    assert "broken" not in out["releases"]
    assert out["hooks"] == [HOOKS[2]]  # sae_0 (see saved)
    assert any("'broken'" in w and "MISSING" in w for w in out["warnings"]), out["warnings"]


def test_bundle_replaces_an_installed_release_in_place(bundled, saved, tmp_path):
    src, saes = saved
    release = tmp_path / "package" / "saes"
    make_sae("blocks.9.hook_mlp_out").save_model(release / "blocks.9.hook_mlp_out")  # old
    (release / "README.md").write_text("kept")
    register_release("test-release", release)

    dest = bundle(src, release="test-release", model="tiny")
    assert dest == release.resolve()
    assert sorted(p.name for p in dest.iterdir()) == sorted([*HOOKS, "README.md"])
    assert (dest / "README.md").read_text() == "kept"
    loaded = load_saes("test-release", device="cpu")
    assert list(loaded) == HOOKS
    for hook, sae in loaded.items():
        meta = sae.cfg.metadata
        assert (meta.model_name, meta.release, meta.sae_id) == ("tiny", "test-release", hook)
        stored = SAE.load_from_disk(dest / hook, dtype="bfloat16")
        assert stored.W_dec.dtype == torch.bfloat16
        torch.testing.assert_close(sae.W_dec, saes[hook].W_dec.bfloat16().float())

    new = bundle(src, release="new-release", dest=tmp_path / "new")
    assert sorted(p.name for p in new.iterdir()) == HOOKS
    with pytest.raises(ValueError, match="'unknown'.*dest"):
        bundle(src, release="unknown")


# --------------------------------------------------------------------------- errors


def test_duplicate_hook_objects():
    a, b = make_sae("blocks.0.hook_mlp_out"), make_sae("blocks.0.hook_mlp_out", seed=1)
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_mlp_out"):
        load_saes([a, b])


def test_duplicate_hook_directories(tmp_path):
    make_sae("blocks.1.hook_resid_post").save_model(tmp_path / "a")
    make_sae("blocks.1.hook_resid_post", seed=1).save_model(tmp_path / "b")
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_post"):
        load_saes(tmp_path, device="cpu")


def test_missing_hook_name_names_the_item(tmp_path):
    good, bad = make_sae("blocks.0.hook_mlp_out"), make_sae(None)
    with pytest.raises(ValueError, match=r"source\[1\].*hook_name"):
        load_saes([good, bad])
    with pytest.raises(ValueError, match=r"source\['blocks\.0\.hook_attn_out'\].*hook_name"):
        load_saes({"blocks.0.hook_attn_out": bad})
    with pytest.raises(ValueError, match="hook_name"):
        load_saes(bad)
    bad.save_model(tmp_path / "nohook")
    with pytest.raises(ValueError, match="nohook.*hook_name"):
        load_saes(tmp_path / "nohook", device="cpu")


def test_dict_key_must_match_hook_name():
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_mlp_out"):
        load_saes({"blocks.1.hook_mlp_out": make_sae("blocks.0.hook_mlp_out")})


def test_missing_path(tmp_path):
    missing = tmp_path / "does_not_exist"
    for source in (missing, str(missing), [missing]):
        with pytest.raises(FileNotFoundError, match="does_not_exist"):
            load_saes(source)


def test_directory_without_weights(tmp_path):
    make_sae("blocks.0.hook_mlp_out").save_model(tmp_path / "s")
    (tmp_path / "s" / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_saes(tmp_path / "s")


@pytest.mark.parametrize("kind", ["list", "dict", "dir"])
def test_empty_source(tmp_path, kind):
    source = {"list": [], "dict": {}, "dir": tmp_path}[kind]
    with pytest.raises(ValueError):
        load_saes(source)


def test_sae_ids_only_with_release(saved):
    root, _ = saved
    with pytest.raises(ValueError, match="sae_ids"):
        load_saes(root, sae_ids=["sae_0"])
    with pytest.raises(ValueError, match="sae_ids"):
        load_saes([make_sae("blocks.0.hook_mlp_out")], sae_ids="x")
    with pytest.raises(ValueError, match="sae_ids"):
        load_saes(RELEASE, sae_ids=[])


# --------------------------------------------------------------------------- ordering


def test_hook_sort_key_forward_order():
    forward = [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.attn.hook_z",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_mlp_in",
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
        "blocks.2.hook_resid_pre",
        "blocks.10.hook_resid_pre",
        "ln_final.hook_normalized",
    ]
    assert sorted(reversed(forward), key=hook_sort_key) == forward


def test_transcoders_keyed_by_the_hook_they_write(tmp_path):
    """A transcoder (metadata hook_name = its input, hook_name_out = its output) is keyed by
    the hook it writes, from objects and from a save_model directory, and ordered by it."""
    from conftest import make_random_transcoder

    tc = make_random_transcoder("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", 32, 32)
    sae = make_sae("blocks.1.hook_resid_post")
    assert list(load_saes([sae, tc])) == ["blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    assert list(load_saes({"blocks.1.hook_mlp_out": tc})) == ["blocks.1.hook_mlp_out"]
    with pytest.raises(ValueError, match="disagrees with the hook the SAE writes"):
        load_saes({"blocks.1.ln2.hook_normalized": tc})
    tc.save_model(tmp_path / "tc")
    loaded = load_saes(tmp_path / "tc", device="cpu")
    assert list(loaded) == ["blocks.1.hook_mlp_out"]
    assert type(loaded["blocks.1.hook_mlp_out"]).__name__ == "Transcoder"
    other = make_random_transcoder("blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out", 32, 32)
    with pytest.raises(ValueError, match="two dictionaries write hook 'blocks.1.hook_mlp_out'"):
        load_saes([tc, other])
