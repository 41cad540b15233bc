"""A local Hugging Face hub cache laid out exactly as ``huggingface_hub`` writes it, for tests
that load models, tokenizers and SAE releases by their hub names with the hub offline.

Layout (``huggingface_hub.file_download``): ``models--{org}--{name}/refs/main`` holds the
commit hash (no trailing newline), ``blobs/{etag}`` the file contents (etag: sha256 for LFS
files, the git blob sha1 otherwise), ``snapshots/{commit}/{path}`` relative symlinks to the
blobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save as save_safetensors

COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
LFS_SUFFIXES = (".safetensors", ".npz", ".pt", ".bin", ".model")
"""Files the hub stores in LFS (named by sha256 in the cache)."""


def git_blob_sha1(data: bytes) -> str:
    """The etag the hub gives a non-LFS file: git's blob hash."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubCache:
    """One repository in a local hub cache rooted at ``root`` (the ``HF_HUB_CACHE`` folder)."""

    def __init__(self, root: Path, repo_id: str, commit: str = COMMIT):
        self.root = Path(root)
        self.repo_dir = self.root / ("models--" + repo_id.replace("/", "--"))
        self.commit = commit
        (self.repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (self.repo_dir / "blobs").mkdir(exist_ok=True)
        # huggingface_hub reads refs/main verbatim (no strip): no trailing newline.
        (self.repo_dir / "refs" / "main").write_text(commit)

    def snapshot_path(self, filename: str) -> Path:
        return self.repo_dir / "snapshots" / self.commit / filename

    def add_file(self, filename: str, data: bytes, lfs: bool | None = None) -> Path:
        """Store ``data`` as ``filename`` (LFS by suffix unless ``lfs`` says otherwise)."""
        if lfs is None:
            lfs = filename.endswith(LFS_SUFFIXES)
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        blob = self.repo_dir / "blobs" / etag
        blob.write_bytes(data)
        return self._link(filename, blob)

    def move_file(self, filename: str, source: Path, lfs: bool = True) -> Path:
        """Move the file ``source`` into the cache as ``filename`` (for large files: no copy
        in memory)."""
        digest = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % source.stat().st_size)
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        blob = self.repo_dir / "blobs" / digest.hexdigest()
        os.replace(source, blob)
        return self._link(filename, blob)

    def _link(self, filename: str, blob: Path) -> Path:
        link = self.snapshot_path(filename)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        return link

    def add_json(self, filename: str, obj: object) -> Path:
        return self.add_file(filename, json.dumps(obj, indent=2).encode(), lfs=False)

    def add_directory(self, directory: Path) -> None:
        """Store every file of ``directory`` (e.g. written by ``save_pretrained``)."""
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                self.add_file(path.relative_to(directory).as_posix(), path.read_bytes())

    def add_safetensors(self, filename: str, tensors: dict[str, torch.Tensor]) -> Path:
        data = save_safetensors({k: v.contiguous() for k, v in tensors.items()})
        return self.add_file(filename, data, lfs=True)

    def add_sae(
        self,
        folder: str,
        cfg: dict,
        weights: dict[str, torch.Tensor],
        sparsity: torch.Tensor | None = None,
    ) -> None:
        """An SAE in SAELens' plain format: ``cfg.json``, ``sae_weights.safetensors`` and,
        if given, ``sparsity.safetensors`` in ``folder``."""
        self.add_json(f"{folder}/cfg.json", cfg)
        self.add_safetensors(f"{folder}/sae_weights.safetensors", weights)
        if sparsity is not None:
            self.add_safetensors(f"{folder}/sparsity.safetensors", {"sparsity": sparsity})


def bpe_tokenizer(
    texts: Iterable[str],
    special_tokens: list[str],
    vocab_size: int = 600,
    style: Literal["byte_level", "sentencepiece"] = "byte_level",
):
    """A small BPE tokenizer trained on ``texts``, on which every frequent word of ``texts``
    (with its leading space) is one token. ``byte_level``: GPT-2's scheme (Pythia, GPT-2);
    ``sentencepiece``: spaces as ``▁`` and no pre-tokenizer at use (Gemma's, as
    ``transformers``' ``GemmaTokenizer`` rebuilds it around the vocabulary and merges)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    texts = list(texts)
    if style == "byte_level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Replace(" ", "\u2581")
        # words for training only: merges then never cross a space
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
        alphabet = sorted(set("".join(texts).replace(" ", "\u2581")))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if style == "sentencepiece":
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        tok.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
    return tok


def write_dunefsky(
    directory: Path,
    layer: int,
    width: int,
    n_features: int,
    seed: int,
    drop: Iterable[str] = (),
    model_name: str = "gpt2-small",
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A transcoder file in the exact format of Dunefsky's transcoder_circuits: torch.save of
    ``{"cfg": sae_training.config.LanguageModelSAERunnerConfig, "state_dict": ...}``, named
    ``final_sparse_autoencoder_{model}_blocks.{L}.ln2.hook_normalized_{n_features}.pt``.
    Returns the path and the state dict."""
    pkg, mod = types.ModuleType("sae_training"), types.ModuleType("sae_training.config")

    @dataclasses.dataclass
    class LanguageModelSAERunnerConfig:
        model_name: str = "gpt2-small"
        hook_point: str = f"blocks.{layer}.ln2.hook_normalized"
        hook_point_layer: int = layer
        d_in: int = width
        dtype: torch.dtype = torch.float32
        device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
        is_transcoder: bool = True
        out_hook_point: str = f"blocks.{layer}.hook_mlp_out"
        out_hook_point_layer: int = layer
        d_out: int = width
        expansion_factor: int = n_features // width

    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    mod.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(seed)
    state = {
        "W_enc": torch.randn(width, n_features, generator=g) / width**0.5,
        "b_enc": -0.2 * torch.rand(n_features, generator=g),
        "W_dec": torch.randn(n_features, width, generator=g) / n_features**0.5,
        "b_dec": 0.3 * torch.randn(width, generator=g),
        "b_dec_out": 0.1 * torch.randn(width, generator=g),
    }
    state = {k: v for k, v in state.items() if k not in set(drop)}
    path = Path(directory) / (
        f"final_sparse_autoencoder_{model_name}_blocks.{layer}.ln2.hook_normalized_{n_features}.pt"
    )
    sys.modules.update({"sae_training": pkg, "sae_training.config": mod})
    try:
        torch.save(
            {"cfg": LanguageModelSAERunnerConfig(model_name=model_name), "state_dict": state}, path
        )
    finally:
        del sys.modules["sae_training"], sys.modules["sae_training.config"]
    return path, state
