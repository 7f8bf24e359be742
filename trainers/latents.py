"""Latents cached once per image and augmentation; each step samples mean + std·ε from the cached
distribution.

The VAE encoder is the same for every step of a run, so encoding the batch every step (as diffusers' script
does) repeats work; drawing from the cached diagonal Gaussian gives the same distribution of training latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainers.data import Sample

ENCODE_CHUNK = 8


@dataclass(frozen=True)
class LatentCache:
    """Per-sample latent distributions (already multiplied by the VAE's scaling factor) and loss weights."""

    means: list[torch.Tensor]  # each (C, h, w)
    stds: list[torch.Tensor]  # each (C, h, w)
    weights: list[torch.Tensor | None]  # each (1, h, w) or None
    sizes: list[tuple[int, int]]  # original (height, width) in pixels, for SDXL time ids

    def draw(
        self, indices: list[int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents for a batch of sample indices: mean + std·ε with ε from `generator`."""
        mean = torch.stack([self.means[i] for i in indices])  # (B, C, h, w)
        std = torch.stack([self.stds[i] for i in indices])  # (B, C, h, w)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)  # (B, C, h, w)
        latents = mean + std * eps  # (B, C, h, w)
        if self.weights[indices[0]] is None:
            return latents, None
        return latents, torch.stack([self.weights[i] for i in indices])  # (B, 1, h, w)


@torch.no_grad()
def encode_samples(vae, samples: list[Sample], *, device: torch.device | str = "cpu") -> LatentCache:
    """Run the VAE encoder once over every sample (in chunks of equal size) and keep its distributions.

    A float16 VAE whose config asks for `force_upcast` (SDXL's: its activations overflow float16, giving
    NaN latents) encodes in float32 and is put back in float16 for the previews, as diffusers' pipelines do
    for decoding. The cache is built once a run, so this costs nothing per step.
    """
    dtype = next(vae.parameters()).dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(dtype=torch.float32)
        try:
            return encode_samples(vae, samples, device=device)
        finally:
            vae.to(dtype=dtype)
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    means: list[torch.Tensor] = [None] * len(samples)  # type: ignore[list-item]
    stds: list[torch.Tensor] = [None] * len(samples)  # type: ignore[list-item]
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, sample in enumerate(samples):
        by_size.setdefault(tuple(sample.pixels.shape), []).append(index)
    for members in by_size.values():
        for start in range(0, len(members), ENCODE_CHUNK):
            chunk = members[start : start + ENCODE_CHUNK]
            pixels = torch.stack([samples[i].pixels for i in chunk]).to(device, dtype)  # (b, 3, H, W)
            dist = vae.encode(pixels).latent_dist
            mean = ((dist.mean - shift) * scale).float().cpu()  # (b, C, h, w)
            std = (dist.std * scale).float().cpu()  # (b, C, h, w)
            for row, i in enumerate(chunk):
                means[i], stds[i] = mean[row].clone(), std[row].clone()
    weights = []
    for sample, mean in zip(samples, means, strict=True):
        if sample.weight is None:
            weights.append(None)
            continue
        weights.append(F.adaptive_avg_pool2d(sample.weight[None], mean.shape[-2:])[0])  # (1, h, w)
    sizes = [tuple(sample.pixels.shape[-2:]) for sample in samples]
    return LatentCache(means=means, stds=stds, weights=weights, sizes=sizes)
