"""Latents cached once per image and augmentation; each step samples mean + std·ε from the cached
distribution.

The VAE encoder is the same for every step of a run, so encoding the batch every step (as diffusers' script
does) repeats work; drawing from the cached diagonal Gaussian gives the same distribution of training latents.

A VAE's encoder only approximates the inverse of its decoder, and textual inversion learns to denoise towards
the cached latents, so it inherits the encoder's error. `refine_steps` fits each cached mean to its image
through the decoder (Adam on |decode(z) - image|², from the encoder's z). Measured on the demo world: the
encoder's latents of pink squares decode 44-58 RGB units off pink, and of purple triangles 26-46 off; fitted
latents decode within 8-18. The cache of a run is kept in its run folder (`latents.safetensors`), so every
process and every resume trains on the same numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from embeddings.errors import TokensmithError
from embeddings.files import run_temp_path
from trainers.modelprep import cast_weights
from trainers.samples import Sample
from trainers.writes import writing

ENCODE_CHUNK = 8
REFINE_LR = 0.1  # Adam's step on the unscaled latent when fitting it to the decoder
CACHE_FORMAT = "tokensmith-latents/3"  # /2: SDXL time ids per sample; /3: fitted images, deduplicated crops


@dataclass(frozen=True)
class LatentCache:
    """Per-sample latent distributions (already multiplied by the VAE's scaling factor) and loss weights."""

    means: list[torch.Tensor]  # each (C, h, w)
    stds: list[torch.Tensor]  # each (C, h, w)
    weights: list[torch.Tensor | None]  # each (1, h, w) or None
    time_ids: list[tuple[int, ...]]  # each sample's SDXL micro-conditioning (Sample.time_ids)

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
def encode_samples(
    vae, samples: list[Sample], *, device: torch.device | str = "cpu", refine_steps: int = 0
) -> LatentCache:
    """Run the VAE encoder once over every sample (in chunks of equal size) and keep its distributions;
    with `refine_steps`, fit each mean to its image through the decoder (see the module docstring).

    A float16 VAE whose config asks for `force_upcast` (SDXL's: its activations overflow float16, giving
    NaN latents) encodes in float32 and is put back in float16 for the previews, as diffusers' pipelines do
    for decoding; so does any half-precision VAE that refines (gradients through it in half precision lose the
    small steps). The cache is built once a run, so this costs nothing per step.
    """
    dtype = next(vae.parameters()).dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if dtype != torch.float32 and (upcast or refine_steps):
        cast_weights(vae, torch.float32)
        try:
            return encode_samples(vae, samples, device=device, refine_steps=refine_steps)
        finally:
            cast_weights(vae, dtype)
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    means: list[torch.Tensor] = [None] * len(samples)  # type: ignore[list-item]
    stds: list[torch.Tensor] = [None] * len(samples)  # type: ignore[list-item]
    by_size: dict[tuple[int, ...], list[int]] = {}
    first: dict[int, int] = {}  # id(sample) -> its first index: a sample listed again is encoded once
    for index, sample in enumerate(samples):
        if first.setdefault(id(sample), index) == index:
            by_size.setdefault(tuple(sample.pixels.shape), []).append(index)
    for members in by_size.values():
        for start in range(0, len(members), ENCODE_CHUNK):
            chunk = members[start : start + ENCODE_CHUNK]
            pixels = torch.stack([samples[i].pixels for i in chunk]).to(device, dtype)  # (b, 3, H, W)
            dist = vae.encode(pixels).latent_dist
            raw = dist.mean  # (b, C, h, w), before scaling
            if refine_steps:
                weight = None
                if samples[chunk[0]].weight is not None:
                    weight = torch.stack([samples[i].weight for i in chunk]).to(device, dtype)  # (b, 1, H, W)
                raw = fit_to_decoder(vae, pixels, raw, weight, steps=refine_steps)
            mean = ((raw - shift) * scale).float().cpu()  # (b, C, h, w)
            std = (dist.std * scale).float().cpu()  # (b, C, h, w)
            for row, i in enumerate(chunk):
                means[i], stds[i] = mean[row].clone(), std[row].clone()
    for index, sample in enumerate(samples):  # the repeats: copies (a cache file holds no shared tensors)
        if means[index] is None:
            means[index], stds[index] = means[first[id(sample)]].clone(), stds[first[id(sample)]].clone()
    weights = []
    for sample, mean in zip(samples, means, strict=True):
        if sample.weight is None:
            weights.append(None)
            continue
        weights.append(F.adaptive_avg_pool2d(sample.weight[None], mean.shape[-2:])[0])  # (1, h, w)
    time_ids = [sample.time_ids for sample in samples]
    return LatentCache(means=means, stds=stds, weights=weights, time_ids=time_ids)


def fit_to_decoder(vae, pixels, start, weight, *, steps: int) -> torch.Tensor:
    """Latents (b, C, h, w) whose decoding is nearer `pixels` (b, 3, H, W): `steps` Adam steps from `start`
    on each image's mean squared error (weighted by `weight` (b, 1, H, W) where given). Only the latents get
    gradients; the VAE's weights are never touched."""
    z = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=REFINE_LR)
    with torch.enable_grad():
        for _ in range(steps):
            error = (vae.decode(z).sample - pixels) ** 2  # (b, 3, H, W)
            if weight is not None:
                error = error * weight
            loss = error.mean(dim=(1, 2, 3)).sum()  # each image's own error: the fits do not interact
            (z.grad,) = torch.autograd.grad(loss, [z])
            optimizer.step()
    return z.detach()


# --- the run's cache file ---


def save_cache(cache: LatentCache, path: Path, *, made_for: dict | None = None) -> Path:
    """Write the cache to `path` (safetensors, temp file + rename), with what it was `made_for` (JSON)."""
    tensors = {}
    for i, (mean, std, weight) in enumerate(zip(cache.means, cache.stds, cache.weights, strict=True)):
        tensors[f"mean.{i}"], tensors[f"std.{i}"] = mean.contiguous(), std.contiguous()
        if weight is not None:
            tensors[f"weight.{i}"] = weight.contiguous()
    meta = {
        "format": CACHE_FORMAT,
        "time_ids": json.dumps([list(ids) for ids in cache.time_ids]),
        "made_for": json.dumps(made_for or {}, sort_keys=True),
    }
    path = Path(path)
    tmp = run_temp_path(path)
    with writing("the latent cache", path, temp=tmp):
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    return path


def _metadata(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (OSError, ValueError, SafetensorError) as exc:
        reason = f"latent cache {path} is unreadable ({exc}); delete it to encode anew"
        raise TokensmithError(reason) from None


def load_cache(path: Path) -> LatentCache:
    """Read a cache written by `save_cache`; TokensmithError when it is unreadable or not one."""
    meta = _metadata(path)
    if meta.get("format") != CACHE_FORMAT:
        raise TokensmithError(f"{path} is not a latent cache this version reads; delete it to encode anew")
    try:
        tensors = load_file(str(path))
        time_ids = [tuple(ids) for ids in json.loads(meta["time_ids"])]
        n = len(time_ids)
        return LatentCache(
            means=[tensors[f"mean.{i}"] for i in range(n)],
            stds=[tensors[f"std.{i}"] for i in range(n)],
            weights=[tensors.get(f"weight.{i}") for i in range(n)],
            time_ids=time_ids,
        )
    except (OSError, ValueError, KeyError) as exc:
        reason = f"latent cache {path} is incomplete ({exc}); delete it to encode anew"
        raise TokensmithError(reason) from None


def cache_format(path: Path) -> str | None:
    """The format a cache file says it has ('tokensmith-latents/3'), '?' for a file that is not readable as
    one, None when there is no file."""
    if not Path(path).is_file():
        return None
    try:
        return _metadata(path).get("format", "?")
    except TokensmithError:
        return "?"


def _made_for(path: Path) -> str | None:
    """What the cache file at `path` was made for (JSON), or None: no file, not one, or unreadable."""
    try:
        meta = _metadata(path) if Path(path).is_file() else {}
    except TokensmithError:
        return None
    return meta.get("made_for") if meta.get("format") == CACHE_FORMAT else None


def run_cache(path: Path, encode, *, made_for: dict, accelerator, reuse: bool) -> LatentCache:
    """The run's cache: made by `encode()` in the main process and kept at `path`, which the other processes
    read (one encode for all of them, and the same numbers in each). With `reuse` (a resume), the file the run
    began with is read instead, so a resumed run trains on exactly the latents it started with; a file made
    for other images or settings (`made_for`: what decides the latents), or unreadable, is made again."""
    cache = None
    if accelerator.is_main_process:
        if reuse and _made_for(path) == json.dumps(made_for, sort_keys=True):
            cache = load_cache(path)
        else:
            cache = encode()
            save_cache(cache, path, made_for=made_for)
    accelerator.wait_for_everyone()
    return cache if cache is not None else load_cache(path)
