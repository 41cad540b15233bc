"""A trainable transcoder for SAELens' trainers: BatchTopK on the MLP input, MSE on its output.

SAELens (6.54) has transcoder classes for inference (``JumpReLUTranscoder``,
``JumpReLUSkipTranscoder``, ...) but none for training. This module adds one, as the training
counterpart of those classes, so that ``MultiSAETrainer`` trains transcoders beside SAEs in
one model pass (``sfc_plugin.training.trainer``):

    f = BatchTopK_k((x_in W_enc + b_enc) * ||W_dec||)      (k active features per token on
                                                             average over the batch)
    x_out_hat = f (W_dec / ||W_dec||) + b_dec [+ x_in W_skip^T]
    loss = ||x_out - x_out_hat||^2 + auxiliary TopK loss on dead features

The trainer sees one tensor per step, so a transcoder's batch is ``[x_in | x_out]`` (read and
written activations of the same tokens, concatenated on the last axis); both are scaled by
the same activation scaler factor, which is folded into the weights at the end as for an
SAE (``W_enc * c``, ``W_dec / c``, ``b_dec / c``, threshold ``/ c``; ``W_skip`` unchanged).
Saved for inference, a BatchTopK transcoder becomes a SAELens ``JumpReLUTranscoder`` (or
``JumpReLUSkipTranscoder``) whose threshold is the running k-th activation, exactly as
SAELens saves a BatchTopK SAE as a JumpReLU SAE, so the files load with
``SAE.load_from_disk`` without this package.

Why BatchTopK and not per-token TopK: SAELens has no TopK transcoder class to load the result
into. Why not JumpReLU training: its sparsity coefficient needs a sweep per layer; BatchTopK
sets L0 directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens import JumpReLUSkipTranscoderConfig, JumpReLUTranscoderConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import SAEConfig, TrainStepInput, TrainStepOutput
from torch import nn

__all__ = ["ARCHITECTURE", "BatchTopKTrainingTranscoder", "BatchTopKTrainingTranscoderConfig"]

ARCHITECTURE = "batchtopk_transcoder"


@dataclass
class BatchTopKTrainingTranscoderConfig(BatchTopKTrainingSAEConfig):
    """``BatchTopKTrainingSAEConfig`` plus the written width ``d_out`` and an optional affine
    skip connection (``skip``: saved as a ``JumpReLUSkipTranscoder``). ``d_in`` is the read
    width. ``metadata.hook_name`` is the read hook and ``metadata.hook_name_out`` the written
    one."""

    d_out: int = 0
    skip: bool = False
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        if self.apply_b_dec_to_input:
            raise ValueError("apply_b_dec_to_input is not supported for transcoders")
        if self.d_out <= 0:
            raise ValueError(f"d_out must be positive, got {self.d_out}")
        super().__post_init__()

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        return JumpReLUSkipTranscoderConfig if self.skip else JumpReLUTranscoderConfig


class BatchTopKTrainingTranscoder(BatchTopKTrainingSAE):
    """Training transcoder: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec
    [d_out]``, and ``W_skip [d_out, d_in]`` (zero at start) when ``cfg.skip``."""

    cfg: BatchTopKTrainingTranscoderConfig  # type: ignore[assignment]

    def initialize_weights(self) -> None:
        cfg = self.cfg
        norm = cfg.decoder_init_norm or 1.0

        def rows(n: int, d: int) -> torch.Tensor:
            w = nn.init.kaiming_uniform_(torch.empty(n, d, dtype=self.dtype, device=self.device))
            return w / w.norm(dim=-1, keepdim=True) * norm

        self.W_dec = nn.Parameter(rows(cfg.d_sae, cfg.d_out))
        self.W_enc = nn.Parameter(rows(cfg.d_sae, cfg.d_in).T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=self.dtype, device=self.device))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, dtype=self.dtype, device=self.device))
        if cfg.skip:
            self.W_skip = nn.Parameter(
                torch.zeros(cfg.d_out, cfg.d_in, dtype=self.dtype, device=self.device)
            )

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        """The read activation, cast and hooked; no ``b_dec`` (it lives in the output space)."""
        return self.run_time_activation_norm_fn_in(self.hook_sae_input(sae_in.to(self.dtype)))

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[x_in | x_out]`` -> ``(x_in, x_out)``."""
        if batch.shape[-1] != self.cfg.d_in + self.cfg.d_out:
            raise ValueError(
                f"transcoder batch has width {batch.shape[-1]}, expected d_in + d_out = "
                f"{self.cfg.d_in} + {self.cfg.d_out}"
            )
        return batch[..., : self.cfg.d_in], batch[..., self.cfg.d_in :]

    def transcode(self, feature_acts: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """The predicted written activation: ``decode(f)`` plus the skip term."""
        out = self.decode(feature_acts)
        if self.cfg.skip:
            out = out + x_in.to(self.dtype) @ self.W_skip.T
        return out

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x_in, x_out = self.split(step_input.sae_in)
        feature_acts, hidden_pre = self.encode_with_hidden_pre(x_in)
        out = self.transcode(feature_acts, x_in)
        mse_loss = self.mse_loss_fn(out, x_out.to(out.dtype)).sum(dim=-1).mean()
        aux = self.calculate_topk_aux_loss(
            sae_in=x_out,
            sae_out=out,
            hidden_pre=hidden_pre,
            dead_neuron_mask=step_input.dead_neuron_mask,
        )
        self.update_topk_threshold(feature_acts)
        output = TrainStepOutput(
            sae_in=x_out,
            sae_out=out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=mse_loss + aux,
            losses={"mse_loss": mse_loss, "auxiliary_reconstruction_loss": aux},
        )
        output.metrics["topk_threshold"] = self.topk_threshold
        return output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted written activation of the read activation ``x``."""
        return self.transcode(self.encode(x), x)


if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
    register_sae_training_class(
        ARCHITECTURE, BatchTopKTrainingTranscoder, BatchTopKTrainingTranscoderConfig
    )
