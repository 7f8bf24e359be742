"""The training step: noise cached latents, condition on prompts through the new rows, regress the UNet
target.

The diffusion maths is written out (it is four lines) so the step needs only the UNet, the conditioner and the
scheduler's ᾱ table: ε-prediction targets the noise, v-prediction targets √ᾱ·ε − √(1−ᾱ)·x₀.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainers.families import Conditioner


@dataclass(frozen=True)
class DiffusionMath:
    """ᾱ per timestep and what the UNet predicts, read from the model's scheduler config."""

    alphas_cumprod: torch.Tensor  # (T,)
    prediction_type: str  # "epsilon" | "v_prediction"

    @classmethod
    def from_scheduler(cls, scheduler) -> DiffusionMath:
        from diffusers import DDPMScheduler

        ddpm = DDPMScheduler.from_config(scheduler.config)
        kind = scheduler.config.get("prediction_type", "epsilon")
        if kind not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"cannot train a model whose scheduler predicts {kind!r}; epsilon or v_prediction"
            )
        return cls(alphas_cumprod=ddpm.alphas_cumprod.float().clone(), prediction_type=kind)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def noisy_and_target(self, x0, noise, t) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        noisy = ab.sqrt() * x0 + (1 - ab).sqrt() * noise  # (B, C, h, w)
        if self.prediction_type == "epsilon":
            return noisy, noise
        return noisy, ab.sqrt() * noise - (1 - ab).sqrt() * x0  # (B, C, h, w): velocity

    def min_snr_weights(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Per-sample loss weights of min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR for ε-prediction,
        min(SNR, γ)/(SNR + 1) for v-prediction; (B,).

        Where SNR is 0 (a zero-terminal-SNR schedule's last timestep) the ε weight is its limit, 1 (it is 1
        for every SNR up to γ): min(0, γ)/0 is NaN, and one such sample would turn the rows NaN.
        min_snr_weights([999], 5) -> [1.] (ε, ᾱ_999 = 0)."""
        ab = self.alphas_cumprod.to(t.device)[t]  # (B,)
        snr = ab / (1 - ab)  # (B,): 0 where ᾱ is 0
        clipped = snr.clamp(max=gamma)  # (B,)
        if self.prediction_type == "epsilon":
            return torch.where(snr > 0, clipped / snr, torch.ones_like(snr))  # (B,)
        return clipped / (snr + 1)  # (B,): 0 at SNR 0


@dataclass(frozen=True)
class Batch:
    """One micro-batch, every random draw already made (so a resumed run replays it exactly)."""

    latents: torch.Tensor  # (B, C, h, w)
    noise: torch.Tensor  # (B, C, h, w)
    timesteps: torch.Tensor  # (B,)
    prompts: list[str]
    time_ids: list[tuple[int, ...]]  # SDXL micro-conditioning per sample (Sample.time_ids)
    weights: torch.Tensor | None  # (B, 1, h, w) alpha weights, or None

    def to(self, device) -> Batch:
        """The same batch with its tensors on `device` (the draws are made on the CPU)."""
        weights = None if self.weights is None else self.weights.to(device)
        tensors = (self.latents.to(device), self.noise.to(device), self.timesteps.to(device))
        return Batch(*tensors, self.prompts, self.time_ids, weights)


def parameter_dtype(module) -> torch.dtype:
    """The dtype of a module's weights, read from its first floating-point parameter.

    diffusers' `ModelMixin.dtype` walks every submodule on each call: 0.65 ms on the demo UNet, 2.5% of its
    training step.
    """
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    return module.dtype if first is None else first.dtype


def step_loss(
    unet, conditioner: Conditioner, maths: DiffusionMath, batch: Batch, *, min_snr_gamma: float = 0.0
):
    """The loss of one micro-batch (differentiable in the new rows only)."""
    device = batch.latents.device
    noisy, target = maths.noisy_and_target(batch.latents, batch.noise, batch.timesteps)  # (B, C, h, w) ×2
    hidden, added = conditioner.encode(batch.prompts, device)  # (B, L, D)
    if added is not None:
        added["time_ids"] = torch.tensor(batch.time_ids, device=device, dtype=hidden.dtype)  # (B, 6)
    dtype = parameter_dtype(unet)
    pred = unet(
        noisy.to(dtype), batch.timesteps, encoder_hidden_states=hidden.to(dtype), added_cond_kwargs=added
    ).sample  # (B, C, h, w)
    error = F.mse_loss(pred.float(), target.float(), reduction="none")  # (B, C, h, w)
    if batch.weights is not None:
        error = error * batch.weights  # (B, C, h, w): alpha-weighted
        per_sample = error.sum((1, 2, 3)) / (batch.weights.sum((1, 2, 3)) * error.shape[1]).clamp(min=1e-6)
    else:
        per_sample = error.mean((1, 2, 3))  # (B,)
    if min_snr_gamma > 0:
        per_sample = per_sample * maths.min_snr_weights(batch.timesteps, min_snr_gamma)  # (B,)
    return per_sample.mean()


def draw_batch(cache, indices: list[int], prompts: list[str], maths: DiffusionMath, generator) -> Batch:
    """Sample latents (mean + std·ε), noise and timesteps for one micro-batch from `generator`."""
    latents, weights = cache.draw(indices, generator)  # (B, C, h, w)
    noise = torch.randn(latents.shape, generator=generator)  # (B, C, h, w)
    timesteps = torch.randint(0, maths.num_timesteps, (len(indices),), generator=generator)  # (B,)
    time_ids = [cache.time_ids[i] for i in indices]
    return Batch(latents, noise, timesteps, prompts, time_ids, weights)


ATTENTION_CHOICES = ("sdpa", "eager")


def pick_text_attention(conditioner: Conditioner, device) -> str:
    """Set the text encoders' attention implementation for training on `device` and return its name.

    A training step runs the text encoder forward and backward to the new rows. On a GPU, SDPA's fused
    kernels are the fast path. On a CPU, plain ("eager") attention is the safer one: measured with one thread
    on this project's 2-core machine, the two cost the same within 2% of a step when the machine is idle, but
    while other processes share it the demo encoder's forward + backward took 18-25 ms with SDPA against
    3-6 ms eager. The two agree to float rounding. A fixed rule (not a timing) keeps two runs with the same
    seed identical; checkpoints record the choice for resume.
    """
    name = "eager" if torch.device(device).type == "cpu" else "sdpa"
    set_text_attention(conditioner, name)
    return name


def set_text_attention(conditioner: Conditioner, name: str) -> None:
    """Switch every text encoder of the conditioner to `name` attention (transformers' implementations)."""
    if name not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention implementation {name!r}: {', '.join(ATTENTION_CHOICES)}")
    for rows in conditioner.rows:
        rows.text_encoder.set_attn_implementation(name)


def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds so per-step buffers are reused, not page-faulted in every step.

    Large per-step buffers above the default 128 KiB mmap threshold are returned to the OS on free and
    faulted in again next step (measured: up to 30% of a step at D=256). True when applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        # 32 MiB is glibc's largest mmap threshold on 64-bit; trimming waits until 1 GiB is free.
        mmap_ok = libc.mallopt(m_mmap_threshold, 32 << 20)
        return bool(mmap_ok) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False
