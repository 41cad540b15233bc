"""Train the SAEs of a model with SAELens' multi-SAE trainer: one model pass feeds every SAE.

Command (``train(TrainConfig(corpus=DIR, out=DIR, ...))`` from Python)::

    sfc train --corpus DIR --out DIR [--layers 2,5,...,29]
        [--hooks attn_out,mlp_out,resid_post] [--d-sae 1152] [--architecture topk] [--k 32]
        [--tokens N] [--context-size 128] [--batch-size 4096] [--lm-batch-size 32]
        [--buffer-tokens 8192] [--lr 1e-3] [--checkpoint-every N] [--seed 0] [--resume]
        [--eval-batches 0] [--transcoders 0-29] [--transcoder-read ln2.hook_normalized]
        [--transcoder-skip]

What it does:

1. Reads ``DIR/train.jsonl`` (one ``{"text": ..., "source": ...}`` per line), shuffles the
   documents with ``--seed``, tokenizes them without special tokens and packs them into
   ``--context-size`` contexts with SAELens' own ``concat_and_batch_sequences``: every context
   starts with BOS and documents are separated by BOS, as SAELens does for text datasets with
   ``prepend_bos=True``. For the embedded SmolLM2 model BOS is ``<|endoftext|>`` (id 0), the
   document separator of its pretraining, which is what ``model.to_tokens`` prepends. Only as
   many contexts as the run needs (plus 10% and 64k tokens) are tokenized; they are shuffled
   again (a long document's contexts end up far apart) and handed to SAELens as a
   pre-tokenized ``datasets.Dataset`` with a ``tokens`` column.
2. Trains one SAE per hook (``blocks.{L}.hook_{kind}`` for every layer and kind) with
   ``sae_lens.MultiSAETrainingRunner``, our model as ``override_model`` and the dataset as
   ``override_dataset``. Each SAE has its own Adam optimizer, learning-rate schedule (linear
   warm-up over the first 5% of steps, constant, linear decay to 0 over the last 20%) and
   activation scaler (``normalize_activations="expected_average_only_in"``: inputs are scaled
   to mean norm ``sqrt(d_in)``, so one learning rate suits all layers; the factor is folded
   into the weights at the end). TopK (``--architecture topk``, exactly ``k`` features per
   token) is the default; ``batchtopk`` keeps ``k`` on average and is saved as a JumpReLU SAE.
   The default learning rate, 1e-3, beat 5e-4 clearly in a pilot (400k tokens, batch 4096,
   ``blocks.14.hook_resid_post``: variance explained 0.93 vs 0.35).
3. Excludes BOS positions (context starts and document separators) from training, unless
   ``--no-exclude-bos``: they are attention sinks whose residual norm is 10-130x the median
   (layers 2-14 of SmolLM2) and would dominate the reconstruction loss. Other sink tokens are
   kept: in a context that starts mid-document, a punctuation token at positions 1-3 often
   gets a residual norm of ~100x the median from layer ~10 on (about 1 token in 500), and these
   dominate the variance (and so variance explained) of those hooks.
4. Trains one transcoder per layer in ``--transcoders`` in the same model pass: it reads
   ``blocks.{L}.<--transcoder-read>`` (the MLP's input; ``ln2.hook_normalized`` by default,
   as Dunefsky et al. and Gemma Scope) and predicts ``blocks.{L}.hook_mlp_out``. They are
   BatchTopK (``k`` features per token on average, ``d_sae`` wide) with the training class of
   ``sfc_plugin.training.transcoder``, optionally with an affine skip connection, and are
   saved as SAELens ``JumpReLUTranscoder`` (``JumpReLUSkipTranscoder``) directories under
   ``OUT/transcoders/<write hook>/`` (``cfg.metadata.hook_name`` the read hook,
   ``hook_name_out`` the written one). ``--hooks ''`` trains transcoders only.
5. Saves each SAE in SAELens' inference format (``save_inference_model``: TopK decoder norms
   folded in, loadable with ``SAE.load_from_disk``, ``cfg.metadata.hook_name`` is the
   TransformerLens hook) to ``OUT/saes/<hook_name>/``, and writes ``OUT/train_config.json``
   (every argument, corpus manifest and hash, token counts, wall time, peak memory,
   versions, SAELens' end-of-training L0 and dead-feature counts, optional held-out evals).

Checkpoints and resuming. SAELens' checkpoint format is used (per-SAE weights, optimizer,
scheduler, sparsity statistics and activation scaler, plus the activation store's position
in the dataset) under ``OUT/checkpoints/<tokens>/``, every ``--checkpoint-every`` tokens.
Four things are done differently from ``MultiSAETrainingRunner``'s defaults:

* Ctrl-C / SIGTERM only sets a flag; training stops at the next step boundary and then saves
  a checkpoint. (SAELens raises from the signal handler, which can land between two SAEs'
  updates of one step, or inside an optimizer step, and checkpoint an inconsistent state.) A
  second Ctrl-C stops at once, without a checkpoint.
* A checkpoint is complete once ``sfc_checkpoint.json`` is written (after SAELens' files);
  ``--resume`` uses the newest complete one, and only the two newest are kept (each holds
  weights plus Adam state: about 0.5 GB for 30 SAEs of width 1152).
* On resume, the checkpoint schedule continues from the checkpoint (SAELens rebuilds it from
  0, which would save a checkpoint at every step until it caught up), the step counters are
  set from the token count (SAELens saves periodic checkpoints before counting the step, so
  they lag by one), and the torch RNG state (used by the activation shuffle) is restored.
* The progress bar is updated every step with the mean loss, and starts at the resumed
  token count.

A resumed run continues the same optimizer and schedule but is not bit-identical to an
uninterrupted one: the activation shuffle buffer is not checkpointed, so the activations that
were in it (at most ``--buffer-tokens``) are skipped. ``--resume`` refuses to continue if any
training argument, the corpus (SHA-256 of ``train.jsonl``) or the resulting training contexts
differ from the original run's.

Memory. The multi-hook buffer holds ``--buffer-tokens`` tokens for every hook at once (a
transcoder needs its read and its written hook)
(``n_hooks * d_in * 4`` bytes per token: 69 KB for 30 hooks of width 576, so 0.57 GB for the
default 8192 tokens). SAELens' mixing step concatenates and permutes it, and batches served
from it are views that keep an older permuted copy alive, so about three copies plus one model
batch (32 contexts: 0.28 GB) exist at the peak. SAELens sizes the buffer as
``n_batches_in_buffer * context_size`` tokens (not model batches); it is set from
``--buffer-tokens``. The activation-norm estimate caches its batches for all hooks as well, so
it uses at most 8192 tokens (SAELens' default of 1000 batches would need ~280 GB here). A
pilot with 30 SAEs and twice these sizes peaked at 9.4 GB resident.

Determinism: ``--seed`` fixes the document and context order, the SAE initialisation and the
shuffle buffer (torch's global RNG); two runs with the same arguments on the same machine and
thread count give the same SAEs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sae_lens import (
    SAE,
    ActivationsStore,
    LoggingConfig,
    MultiSAETrainingRunner,
    MultiSAETrainingRunnerConfig,
)
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAEConfig, TrainStepOutput
from sae_lens.saes.topk_sae import TopKTrainingSAEConfig
from sae_lens.tokenization_and_batching import concat_and_batch_sequences
from sae_lens.training._interruption import InterruptedException  # train() raises it; exported
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from tqdm.auto import tqdm

from sfc_plugin.sites import hook_widths
from sfc_plugin.training.transcoder import BatchTopKTrainingTranscoderConfig

__all__ = [
    "DEFAULT_HOOK_KINDS",
    "DEFAULT_LAYERS",
    "InterruptedException",
    "TrainConfig",
    "evaluate",
    "hook_names",
    "latest_checkpoint",
    "tokenize_contexts",
    "train",
]

logger = logging.getLogger(__name__)

DEFAULT_LAYERS = tuple(range(2, 30, 3))
DEFAULT_HOOK_KINDS = ("attn_out", "mlp_out", "resid_post")
HOOK_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
ARCHITECTURES = {"topk": TopKTrainingSAEConfig, "batchtopk": BatchTopKTrainingSAEConfig}

CONFIG_FILE = "train_config.json"
ARGS_FILE = "train_args.json"
SAES_DIR = "saes"
TRANSCODERS_DIR = "transcoders"
TRANSCODER_SUFFIX = ".transcoder"  # trainer name of a transcoder: its write hook + this
TRANSCODER_WRITE = "hook_mlp_out"
CHECKPOINTS_DIR = "checkpoints"
MARKER_FILE = "sfc_checkpoint.json"
RNG_FILE = "torch_rng_state.pt"
MANIFEST_FILE = "manifest.json"
KEEP_CHECKPOINTS = 2
NORM_ESTIMATE_TOKENS = 8192  # at most; and at most a tenth of the training tokens
DEAD_WINDOW_TOKENS = 262_144
WARMUP_FRACTION = 0.05
DECAY_FRACTION = 0.2
CONTEXT_MARGIN = 1.1
DATA_MARGIN_TOKENS = 65536
# Options (TrainConfig fields) that may change between a run and its resumption (none
# changes the data order, the SAEs or their optimizers).
RESUMABLE_CHANGES = frozenset(
    {
        "corpus",
        "out",
        "resume",
        "checkpoint_every",
        "buffer_tokens",
        "lm_batch_size",
        "eval_batches",
        "eval_batch_size",
    }
)


# ------------------------------------------------------------------------------------ config


@dataclass
class TrainConfig:
    """Every option of a training run, under the names of ``sfc train``'s flags (``--d-sae``
    is ``d_sae``); ``train_args.json`` and ``train_config.json`` record them under these names.

    ``corpus`` and ``out`` are kept as strings and ``layers`` and ``hooks`` as lists, so the
    record equals its JSON. Raises ``ValueError`` naming the first bad field.
    """

    corpus: str | Path
    out: str | Path
    model: str = "smollm2-135m"
    layers: list[int] = field(default_factory=lambda: list(DEFAULT_LAYERS))
    hooks: list[str] = field(default_factory=lambda: list(DEFAULT_HOOK_KINDS))
    d_sae: int = 1152
    architecture: str = "topk"
    k: int = 32
    tokens: int = 2_000_000
    context_size: int = 128
    batch_size: int = 4096
    lm_batch_size: int = 32
    buffer_tokens: int = 8192
    lr: float = 1e-3
    checkpoint_every: int = 100_000
    seed: int = 0
    device: str = "cpu"
    exclude_bos: bool = True
    eval_batches: int = 0
    eval_batch_size: int = 8
    transcoders: list[int] = field(default_factory=list)
    transcoder_read: str = "ln2.hook_normalized"
    transcoder_skip: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        self.corpus, self.out = str(self.corpus), str(self.out)
        self.layers, self.hooks = list(self.layers), list(self.hooks)
        self.transcoders = list(self.transcoders)
        bad_kinds = [h for h in self.hooks if h not in HOOK_KINDS]
        if bad_kinds:
            raise ValueError(
                f"hooks: unknown kind(s) {bad_kinds}; choose from {','.join(HOOK_KINDS)}"
            )
        if not self.hooks and not self.transcoders:
            raise ValueError("nothing to train: hooks and transcoders are both empty")
        if self.hooks and not self.layers:
            raise ValueError("layers is empty")
        if any(layer < 0 for layer in self.transcoders):
            raise ValueError(f"transcoders: negative layer in {self.transcoders}")
        if self.transcoder_read.startswith(("blocks.", "hook_mlp_out")):
            raise ValueError(
                f"transcoder_read {self.transcoder_read!r}: give the hook inside the block "
                "(e.g. ln2.hook_normalized or hook_mlp_in)"
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture: {self.architecture!r}; choose from {', '.join(ARCHITECTURES)}"
            )
        for name in ("d_sae", "k", "tokens", "context_size", "batch_size", "lm_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.k > self.d_sae:
            raise ValueError("k must not exceed d_sae")
        if self.buffer_tokens < self.batch_size:
            raise ValueError("buffer_tokens must be at least batch_size")
        if 0 < self.checkpoint_every < self.batch_size:
            raise ValueError("checkpoint_every must be 0 or at least batch_size")
        if self.context_size < 2:
            raise ValueError("context_size must be at least 2 (BOS plus one token)")


def hook_names(layers: Sequence[int], kinds: Sequence[str]) -> list[str]:
    """``blocks.{L}.hook_{kind}`` for every layer and kind, in layer order."""
    return [f"blocks.{layer}.hook_{kind}" for layer in layers for kind in kinds]


def transcoder_hooks(config: TrainConfig) -> dict[str, tuple[str, str]]:
    """Trainer name -> (read hook, write hook) of each transcoder of the run."""
    return {
        f"blocks.{layer}.{TRANSCODER_WRITE}{TRANSCODER_SUFFIX}": (
            f"blocks.{layer}.{config.transcoder_read}",
            f"blocks.{layer}.{TRANSCODER_WRITE}",
        )
        for layer in config.transcoders
    }


# ------------------------------------------------------------------------------------ corpus


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_texts(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row.get("text"), str):
                    raise ValueError(f"{path}:{n}: expected an object with a string 'text'")
                texts.append(row["text"])
    if not texts:
        raise ValueError(f"{path} holds no documents")
    return texts


def tokenize_contexts(
    texts: Sequence[str], tokenizer: Any, context_size: int, bos_id: int, max_contexts: int
) -> torch.Tensor:
    """Pack ``texts`` (in order) into at most ``max_contexts`` rows of ``context_size`` tokens.

    Each row starts with BOS and documents are separated by BOS (SAELens' packing for text
    datasets). Returns an ``int64`` tensor ``[n_contexts, context_size]``.
    """

    def documents() -> Iterator[torch.Tensor]:
        for start in range(0, len(texts), 256):
            batch = list(texts[start : start + 256])
            ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
            yield from (torch.tensor(seq, dtype=torch.long) for seq in ids if seq)

    rows = []
    for row in concat_and_batch_sequences(
        documents(),
        context_size,
        begin_batch_token_id=bos_id,
        sequence_separator_token_id=bos_id,
    ):
        rows.append(row)
        if len(rows) >= max_contexts:
            break
    if not rows:
        raise ValueError("the corpus is too small for one context")
    return torch.stack(rows)


def _contexts_dataset(contexts: torch.Tensor) -> Dataset:
    return Dataset.from_dict({"tokens": contexts.to(torch.int32).numpy()})


# ----------------------------------------------------------------------------- checkpoints


def _is_complete(checkpoint: Path) -> bool:
    return (checkpoint / MARKER_FILE).is_file()


def _checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories (complete or not), oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: int(p.name))


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None."""
    complete = [p for p in _checkpoints(directory) if _is_complete(p)]
    return complete[-1] if complete else None


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class _StopRequest:
    """SIGINT/SIGTERM handler that asks for a stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(
            "%s received: stopping after this step and saving a checkpoint "
            "(send it again to stop at once, without one)",
            signal.Signals(signum).name,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


class _StoppableIterator:
    """Wraps the trainer's data provider; raises InterruptedException once a stop is requested.

    The trainer asks for a batch at the start of every step, so the exception leaves every
    SAE, optimizer and counter at the same step.
    """

    def __init__(self, source: Iterator[dict[str, torch.Tensor]], stop: _StopRequest) -> None:
        self.source = source
        self.stop = stop

    def __iter__(self) -> _StoppableIterator:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.stop.requested:
            raise InterruptedException
        batch = next(self.source)
        if self.stop.requested:  # the model pass for this batch may have taken seconds
            raise InterruptedException
        return batch


class _WithTranscoderBatches:
    """Adds, to each multi-hook batch, ``batch[name] = [x_read | x_written]`` for every
    transcoder ``name -> (read hook, write hook)``: the one tensor its trainer steps on."""

    def __init__(
        self, source: Iterator[dict[str, torch.Tensor]], transcoders: dict[str, tuple[str, str]]
    ) -> None:
        self.source = source
        self.transcoders = transcoders

    def __iter__(self) -> _WithTranscoderBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.source)
        for name, (read, write) in self.transcoders.items():
            batch[name] = torch.cat([batch[read], batch[write]], dim=-1)
        return batch


class _Runner(MultiSAETrainingRunner):
    """``MultiSAETrainingRunner`` with step-boundary interrupts, resumable checkpoint
    schedule, complete-checkpoint markers with pruning, a per-step progress bar, and
    transcoders (fed by their read and written hooks)."""

    def __init__(
        self,
        cfg: MultiSAETrainingRunnerConfig,
        *,
        dataset: Dataset,
        model: Any,
        checkpoint_every: int,
        elapsed_before: float,
        transcoders: dict[str, tuple[str, str]],
        widths: dict[str, int],
    ) -> None:
        super().__init__(cfg, override_dataset=dataset, override_model=model)
        self.transcoders = transcoders
        if transcoders:
            # SAELens' store caches the hooks its SAEs read; transcoders need their written
            # hooks too, so the store is rebuilt with every hook of the run.
            hooks = list(
                dict.fromkeys(
                    [*cfg.hook_names_per_sae.values()]
                    + [write for _, write in transcoders.values()]
                )
            )
            self.activations_store = _multi_hook_store(cfg, model, dataset, hooks, widths)
        self.checkpoint_every = checkpoint_every
        self.elapsed_before = elapsed_before
        self.started = time.monotonic()
        self.start_samples = 0
        self.trainer: MultiSAETrainer | None = None

    def elapsed(self) -> float:
        """Training wall time in seconds, including earlier sessions of a resumed run."""
        return self.elapsed_before + time.monotonic() - self.started

    def _run_with_interruption_handling(self, trainer: MultiSAETrainer) -> dict[str, Any]:
        self.trainer = trainer
        start = self.start_samples = trainer.n_training_samples
        if self.cfg.resume_from_checkpoint is not None:
            steps = start // self.cfg.train_batch_size_tokens
            trainer.n_training_steps = steps
            for sae_trainer in trainer.trainers.values():
                sae_trainer.n_training_steps = steps
            rng = torch.load(Path(self.cfg.resume_from_checkpoint) / RNG_FILE)
            torch.set_rng_state(rng)
        every = self.checkpoint_every
        total = self.cfg.training_tokens
        # `_checkpoint_if_needed` saves once n_training_samples > threshold.
        trainer.checkpoint_thresholds = (
            [t - 1 for t in range(every, total, every) if t > start] if every else []
        )
        stop = _StopRequest()
        source = trainer.data_provider
        if self.transcoders:
            source = _WithTranscoderBatches(source, self.transcoders)
            trainer.hook_names.update({name: name for name in self.transcoders})
        trainer.data_provider = _StoppableIterator(source, stop)
        trainer._update_pbar = self._update_pbar  # type: ignore[method-assign]
        with stop.installed():
            try:
                return trainer.fit()
            except InterruptedException:
                n = trainer.n_training_samples
                ckpt_root = Path(self.cfg.checkpoint_path or "")
                if n > start and not _is_complete(ckpt_root / str(n)):
                    logger.warning("interrupted at %d tokens: saving a checkpoint", n)
                    trainer.save_checkpoint(checkpoint_name=str(n))
                raise

    def _update_pbar(
        self,
        step_outputs: dict[str, TrainStepOutput],
        pbar: tqdm,
        update_interval: int = 1,  # noqa: ARG002 (signature of MultiSAETrainer._update_pbar)
    ) -> None:
        assert self.trainer is not None
        if pbar.n < self.start_samples:
            pbar.n = pbar.last_print_n = pbar.initial = self.start_samples
        loss = sum(out.loss.item() for out in step_outputs.values()) / len(step_outputs)
        pbar.set_description(f"step {self.trainer.n_training_steps} | mean loss {loss:.4g}", False)
        pbar.update(self.trainer.n_training_samples - pbar.n)

    def _save_runner_checkpoint_files(self, checkpoint_path: Path | None) -> None:
        super()._save_runner_checkpoint_files(checkpoint_path)
        if checkpoint_path is None or self.trainer is None:
            return
        torch.save(torch.get_rng_state(), checkpoint_path / RNG_FILE)
        _write_json(
            checkpoint_path / MARKER_FILE,
            {
                "n_training_samples": self.trainer.n_training_samples,
                "elapsed_s": self.elapsed(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        complete = [p for p in _checkpoints(checkpoint_path.parent) if _is_complete(p)]
        keep = set(complete[-KEEP_CHECKPOINTS:]) | {checkpoint_path}
        for old in _checkpoints(checkpoint_path.parent):
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)


def _multi_hook_store(
    cfg: MultiSAETrainingRunnerConfig,
    model: Any,
    dataset: Dataset,
    hooks: list[str],
    widths: dict[str, int],
) -> ActivationsStore:
    """The activation store ``MultiSAETrainingRunner`` builds from ``cfg``, for ``hooks``."""
    exclude = cfg.exclude_special_tokens
    return ActivationsStore.from_config_multi_hook(
        model=model,
        dataset=dataset,
        hook_names=hooks,
        hook_d_ins={hook: widths[hook] for hook in hooks},
        hook_head_indices={hook: None for hook in hooks},
        streaming=cfg.streaming,
        context_size=cfg.context_size,
        n_batches_in_buffer=cfg.n_batches_in_buffer,
        total_training_tokens=cfg.training_tokens,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        prepend_bos=cfg.prepend_bos,
        normalize_activations="none",
        device=torch.device(str(cfg.act_store_device)),
        dtype=cfg.dtype,
        exclude_special_tokens=torch.tensor(exclude, device=str(cfg.act_store_device))
        if isinstance(exclude, list)
        else None,
        sequence_separator_token=cfg.sequence_separator_token,
        activations_mixing_fraction=cfg.activations_mixing_fraction,
    )


# ---------------------------------------------------------------------------------- training


def _sae_configs(
    config: TrainConfig, hooks: Sequence[str], widths: dict[str, int]
) -> dict[str, TrainingSAEConfig]:
    """Training configs: one SAE per hook in ``hooks``, then one transcoder per layer of
    ``config.transcoders``; ``widths`` maps each hook to its width per position."""
    cfg_cls = ARCHITECTURES[config.architecture]
    configs: dict[str, TrainingSAEConfig] = {
        hook: cfg_cls(
            d_in=widths[hook],
            d_sae=config.d_sae,
            k=config.k,
            normalize_activations="expected_average_only_in",
            dtype="float32",
            device=config.device,
        )
        for hook in hooks
    }
    for name, (read, write) in transcoder_hooks(config).items():
        tc = BatchTopKTrainingTranscoderConfig(
            d_in=widths[read],
            d_out=widths[write],
            d_sae=config.d_sae,
            k=config.k,
            skip=config.transcoder_skip,
            normalize_activations="expected_average_only_in",
            dtype="float32",
            device=config.device,
        )
        tc.metadata.hook_name_out = write
        configs[name] = tc
    return configs


def _runner_config(
    config: TrainConfig,
    hooks: Sequence[str],
    widths: dict[str, int],
    bos_id: int,
    training_tokens: int,
    checkpoint_dir: Path,
    resume_from: Path | None,
) -> MultiSAETrainingRunnerConfig:
    n_steps = training_tokens // config.batch_size
    window_steps = max(1, DEAD_WINDOW_TOKENS // config.batch_size)
    cfg = MultiSAETrainingRunnerConfig(
        saes=_sae_configs(config, hooks, widths),
        # A transcoder is fed by its read hook here; _Runner adds its written hook.
        hook_names={hook: hook for hook in hooks}
        | {name: read for name, (read, _) in transcoder_hooks(config).items()},
        model_name=config.model,
        model_class_name="HookedSAETransformer",
        model_from_pretrained_kwargs={},
        dataset_path=str(Path(config.corpus).resolve()),
        streaming=False,
        context_size=config.context_size,
        n_batches_in_buffer=math.ceil(config.buffer_tokens / config.context_size),
        training_tokens=training_tokens,
        store_batch_size_prompts=config.lm_batch_size,
        sequence_separator_token=bos_id,
        activations_mixing_fraction=0.5,
        device=config.device,
        seed=config.seed,
        dtype="float32",
        prepend_bos=True,
        train_batch_size_tokens=config.batch_size,
        lr=config.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=int(n_steps * WARMUP_FRACTION),
        lr_decay_steps=int(n_steps * DECAY_FRACTION),
        dead_feature_window=window_steps,
        feature_sampling_window=window_steps,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=str(checkpoint_dir),
        save_final_checkpoint=False,
        output_path=str(Path(config.out) / SAES_DIR),
        resume_from_checkpoint=str(resume_from) if resume_from is not None else None,
        exclude_special_tokens=[bos_id] if config.exclude_bos else False,
        n_batches_for_norm_estimate=_norm_estimate_batches(config.batch_size, training_tokens),
    )
    # __post_init__ appends a random run id to checkpoint_path; resuming needs a fixed path.
    cfg.checkpoint_path = str(checkpoint_dir)
    return cfg


def _norm_estimate_batches(batch_size: int, training_tokens: int) -> int:
    return max(1, min(NORM_ESTIMATE_TOKENS, training_tokens // 10) // batch_size)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "sae-lens", "transformer-lens", "transformers", "datasets", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    try:
        out["sfc_plugin_git"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["sfc_plugin_git"] = None
    return out


def _peak_rss_gb() -> float:
    """Peak resident memory of this process (GB; ``ru_maxrss`` is KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _resume_point(
    config: TrainConfig, identity: dict[str, Any]
) -> tuple[Path | None, float] | None:
    """Where to start: ``(checkpoint or None, training seconds so far)``, or None if the run in
    ``--out`` is already complete. Checks that a resumed run has the same identity."""
    out = Path(config.out)
    args_file = out / ARGS_FILE
    if not args_file.exists():
        if config.resume:
            raise FileNotFoundError(f"--resume: {out} holds no run ({ARGS_FILE} is missing)")
        return None, 0.0
    if not config.resume:
        raise FileExistsError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    # A run recorded before an option existed ran with its default.
    defaults = asdict(TrainConfig(corpus=config.corpus, out=config.out))
    saved = {**defaults, **json.loads(args_file.read_text())}
    keys = (saved.keys() | identity.keys()) - RESUMABLE_CHANGES - {"data_sha256"}
    diff = {k: (saved.get(k), identity.get(k)) for k in keys if saved.get(k) != identity.get(k)}
    if diff:
        raise ValueError(f"--resume: arguments or corpus differ from the run in {out}: {diff}")
    if (out / CONFIG_FILE).exists():
        return None
    checkpoint = latest_checkpoint(out / CHECKPOINTS_DIR)
    if checkpoint is None:
        logger.warning("--resume: no complete checkpoint in %s; starting from scratch", out)
        return None, 0.0
    marker = json.loads((checkpoint / MARKER_FILE).read_text())
    logger.info("resuming from %s (%d tokens)", checkpoint, marker["n_training_samples"])
    return checkpoint, float(marker["elapsed_s"])


def _record_data(config: TrainConfig, identity: dict[str, Any], contexts: torch.Tensor) -> None:
    """Write the run's identity with a hash of its training contexts, or, when resuming, check
    that the contexts are the ones the run started with (the checkpoint's dataset position
    only means something for the same contexts in the same order)."""
    args_file = Path(config.out) / ARGS_FILE
    data_sha = hashlib.sha256(contexts.to(torch.int32).numpy().tobytes()).hexdigest()
    if args_file.exists():
        if json.loads(args_file.read_text()).get("data_sha256") != data_sha:
            raise ValueError(
                f"--resume: the training contexts differ from those of the run in {config.out} "
                "(the corpus or sfc_plugin.training.trainer changed)"
            )
        return
    Path(config.out).mkdir(parents=True, exist_ok=True)
    _write_json(args_file, {**identity, "data_sha256": data_sha})


def evaluate(
    model: Any,
    sae_dirs: dict[str, Path],
    heldout: Dataset,
    config: TrainConfig,
    bos_id: int,
) -> dict[str, dict[str, float]]:
    """SAELens' ``run_evals`` on held-out contexts for each saved SAE (loaded from disk).

    Every SAE sees the same held-out tokens. Adds ``dead_fraction_heldout``, the fraction of
    features that never fired on the sparsity batches.
    """
    eval_cfg = EvalConfig(
        batch_size_prompts=config.eval_batch_size,
        n_eval_reconstruction_batches=config.eval_batches,
        n_eval_sparsity_variance_batches=config.eval_batches,
        compute_ce_loss=True,
        compute_kl=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    results = {}
    for hook, path in tqdm(sae_dirs.items(), desc="Evaluating SAEs"):
        sae = SAE.load_from_disk(path, device=config.device)
        store = ActivationsStore.from_sae(
            model,
            sae,
            dataset=heldout,
            streaming=False,
            context_size=config.context_size,
            store_batch_size_prompts=config.eval_batch_size,
            device=config.device,
        )
        metrics, features = run_evals(
            sae,
            store,
            model,
            ActivationScaler(),
            eval_cfg,
            exclude_special_tokens=[bos_id] if config.exclude_bos else False,
        )
        flat = {k: v for group in metrics.values() for k, v in group.items()}
        density = torch.tensor(features["feature_density"])
        flat["dead_fraction_heldout"] = (density == 0).float().mean().item()
        results[hook] = flat
    return results


@contextlib.contextmanager
def _quiet_sae_lens_warnings() -> Iterator[None]:
    """Silence two misleading SAELens warnings about pre-tokenized in-memory datasets."""
    with warnings.catch_warnings():
        # It compares the number of rows (contexts) with the number of tokens.
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        # It calls torch.tensor() on rows that are already tensors.
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        yield


def _training_contexts(
    config: TrainConfig, texts: list[str], tokenizer: Any, bos_id: int, training_tokens: int
) -> torch.Tensor:
    """Shuffled contexts for the run (10% and 64k tokens spare), or the whole corpus if it is
    smaller. They depend only on the corpus, seed, context size and token count."""
    random.Random(config.seed).shuffle(texts)
    spare = CONTEXT_MARGIN * training_tokens + DATA_MARGIN_TOKENS
    max_contexts = math.ceil(spare / (config.context_size - 1))
    norm_tokens = _norm_estimate_batches(config.batch_size, training_tokens) * config.batch_size
    needed = training_tokens + norm_tokens + config.buffer_tokens
    needed += 2 * config.lm_batch_size * config.context_size
    contexts = tokenize_contexts(texts, tokenizer, config.context_size, bos_id, max_contexts)
    order = torch.randperm(len(contexts), generator=torch.Generator().manual_seed(config.seed))
    contexts = contexts[order]
    available = int((contexts != bos_id).sum()) if config.exclude_bos else contexts.numel()
    if available < needed:
        logger.warning(
            "the corpus gives %d training tokens, fewer than the %d this run reads: "
            "SAELens will go through it more than once",
            available,
            needed,
        )
    return contexts


def train(config: TrainConfig, model: Any = None) -> dict[str, Any]:
    """Train (or resume, or skip if complete) the run described by ``config``; return its
    ``train_config.json`` contents. ``model``: an already loaded model (else ``load_model``).

    Raises SAELens' ``InterruptedException`` after Ctrl-C/SIGTERM, once a checkpoint is saved.
    """
    out = Path(config.out)
    corpus = Path(config.corpus)
    train_file = corpus / "train.jsonl"
    corpus_sha = _sha256(train_file)
    identity = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    identity["corpus_sha256"] = corpus_sha
    prepared = _resume_point(config, identity)
    if prepared is None:
        logger.info("%s is already complete", out)
        return json.loads((out / CONFIG_FILE).read_text())
    resume_from, elapsed_before = prepared

    if model is None:
        from sfc_plugin.models import load_model

        model = load_model(config.model, device=config.device)
    hooks = hook_names(config.layers, config.hooks)
    transcoders = transcoder_hooks(config)
    all_hooks = list(dict.fromkeys(hooks + [h for pair in transcoders.values() for h in pair]))
    missing = [h for h in all_hooks if h not in model.hook_dict]
    if missing:
        raise ValueError(f"hooks not in the model: {missing}")
    tokenizer = model.tokenizer
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        raise ValueError("the model's tokenizer has no BOS token")
    widths = hook_widths(model, all_hooks)
    training_tokens = math.ceil(config.tokens / config.batch_size) * config.batch_size

    t0 = time.monotonic()
    texts = _read_texts(train_file)
    contexts = _training_contexts(config, texts, tokenizer, bos_id, training_tokens)
    _record_data(config, identity, contexts)
    tokenize_s = time.monotonic() - t0

    cfg = _runner_config(
        config, hooks, widths, bos_id, training_tokens, out / CHECKPOINTS_DIR, resume_from
    )
    buffer_tokens = cfg.n_batches_in_buffer * config.context_size
    buffer_gb = buffer_tokens * sum(widths.values()) * 4 / 1e9
    logger.info(
        "training %d SAEs and %d transcoders on %d tokens (%d steps); shuffle buffer %d "
        "tokens = %.2f GB",
        len(hooks),
        len(transcoders),
        training_tokens,
        training_tokens // config.batch_size,
        buffer_tokens,
        buffer_gb,
    )
    torch.manual_seed(config.seed)  # SAE initialisation and the shuffle buffer
    with _quiet_sae_lens_warnings():
        runner = _Runner(
            cfg,
            dataset=_contexts_dataset(contexts),
            model=model,
            checkpoint_every=config.checkpoint_every,
            elapsed_before=elapsed_before,
            transcoders=transcoders,
            widths=widths,
        )
        session_start = time.monotonic()
        saes = runner.run()
        session_s = time.monotonic() - session_start
        assert runner.trainer is not None
        trained_this_session = runner.trainer.n_training_samples - runner.start_samples

        trainers = runner.trainer.trainers

        def summary(name: str, path: Path) -> dict[str, Any]:
            meta = saes[name].cfg.metadata
            return {
                "path": str(path),
                "l0_last_window": meta.l0,
                "dead_features": meta.num_dead_features,
                "dead_fraction": (meta.num_dead_features or 0) / config.d_sae,
                "unfired_last_window": int((trainers[name].feature_sparsity == 0).sum()),
            }

        results = {hook: summary(hook, Path(SAES_DIR) / hook) for hook in hooks}
        transcoder_results = {}
        for name, (_, write) in transcoders.items():
            dest = out / TRANSCODERS_DIR / write
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out / SAES_DIR / name, dest)
            transcoder_results[write] = summary(name, Path(TRANSCODERS_DIR) / write)
        manifest_path = corpus / MANIFEST_FILE
        record = {
            "args": asdict(config),
            "argv": sys.argv,
            "hook_names": hooks,
            "architecture": config.architecture if hooks else None,
            "transcoder_hooks": {write: read for read, write in transcoders.values()},
            "corpus": {
                "dir": str(corpus.resolve()),
                "train_sha256": corpus_sha,
                "manifest": json.loads(manifest_path.read_text())
                if manifest_path.exists()
                else None,
                "documents": len(texts),
                "contexts_tokenized": len(contexts),
                "tokens_tokenized": contexts.numel(),
            },
            "training_tokens": runner.trainer.n_training_samples,
            "training_steps": runner.trainer.n_training_steps,
            "bos_id": bos_id,
            "buffer_tokens": buffer_tokens,
            "buffer_gb": buffer_gb,
            "schedule_steps": {
                "lr_warmup": cfg.lr_warm_up_steps,
                "lr_decay": cfg.lr_decay_steps,
                "dead_feature_window": cfg.dead_feature_window,
                "feature_sampling_window": cfg.feature_sampling_window,
            },
            "resumed_from": str(resume_from) if resume_from is not None else None,
            "wall_time_s": runner.elapsed(),
            "session": {
                "tokenize_s": tokenize_s,
                "train_s": session_s,
                "tokens_trained": trained_this_session,
                "tokens_per_s": trained_this_session / session_s,
                "peak_rss_gb": _peak_rss_gb(),
                "torch_threads": torch.get_num_threads(),
            },
            "versions": _versions(),
            "saes": results,
            "transcoders": transcoder_results,
        }
        # The run is complete from here on: evals below are an optional extra.
        _write_json(out / CONFIG_FILE, record)
        shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)

        if config.eval_batches > 0:
            t1 = time.monotonic()
            heldout_contexts = tokenize_contexts(
                _read_texts(corpus / "heldout.jsonl"),
                tokenizer,
                config.context_size,
                bos_id,
                2 * config.eval_batches * config.eval_batch_size,
            )
            sae_dirs = {hook: out / SAES_DIR / hook for hook in hooks}
            evals = evaluate(model, sae_dirs, _contexts_dataset(heldout_contexts), config, bos_id)
            for hook, metrics in evals.items():
                results[hook]["heldout"] = metrics
            record["session"]["eval_s"] = time.monotonic() - t1
            record["session"]["peak_rss_gb"] = _peak_rss_gb()
            _write_json(out / CONFIG_FILE, record)
    return record
