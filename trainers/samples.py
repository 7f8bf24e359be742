"""Training samples: each image's crops (centre, random, or a bucket of its own shape), flips and alpha
weights, as tensors ready for the VAE, with SDXL's micro-conditioning of each crop; and the epoch's batches.

An image is scaled to cover its crop, never squashed; a bucket is at most MAX_ASPECT:1. Every sample is
encoded once (trainers/latents.py), so the list made here is the whole of what a run trains on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from trainers.data import TrainImage, check_alpha
from trainers.pictures import GRAY

RANDOM_CROPS = 4  # random crops per image, each cached once (latents are cached per crop and flip)
MAX_ASPECT = 4.0  # a bucket is at most 4:1 (or 1:4), as kohya caps it; a wider image is centre-cropped to it


@dataclass(frozen=True)
class Sample:
    """One cached training variant: an image at its crop and flip, ready for the VAE."""

    image_index: int
    pixels: torch.Tensor  # (3, H, W) in [-1, 1]
    weight: torch.Tensor | None  # (1, H, W) in [0, 1] from alpha, or None
    flipped: bool
    bucket: tuple[int, int]  # (width, height)
    # SDXL's micro-conditioning: the image's own (height, width), where the crop's top left lies in the image
    # scaled to cover the bucket (mirrored with the image), and the bucket's (height, width)
    time_ids: tuple[int, int, int, int, int, int]


def bucket_for(size: tuple[int, int], resolution: int, multiple: int) -> tuple[int, int]:
    """(width, height) of about resolution² pixels, sides a multiple of `multiple`, nearest in aspect; at
    most MAX_ASPECT:1 (a 16x4000 strip would make a 126:1 bucket of twice the pixels)."""
    width, height = size
    aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
    best_w = max(multiple, round(resolution * aspect**0.5 / multiple) * multiple)
    best_h = max(multiple, round(resolution / aspect**0.5 / multiple) * multiple)
    return best_w, best_h


def cover_and_crop(
    image: Image.Image, target: tuple[int, int], offset: tuple[float, float]
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Scale so the image covers `target` (aspect kept), then crop at `offset` (0..1 of the slack).

    Returns the crop and where it lies: (top, left, scaled height, scaled width)."""
    tw, th = target
    scale = max(tw / image.width, th / image.height)
    resized = image.resize(
        (max(tw, round(image.width * scale)), max(th, round(image.height * scale))), Image.Resampling.BICUBIC
    )
    left = round((resized.width - tw) * offset[0])
    top = round((resized.height - th) * offset[1])
    return resized.crop((left, top, left + tw, top + th)), (top, left, resized.height, resized.width)


def _time_ids(
    original: tuple[int, int], place: tuple[int, int, int, int], target: tuple[int, int], mirrored: bool
) -> tuple[int, int, int, int, int, int]:
    """SDXL's micro-conditioning of one sample, as SDXL was trained: the source's size (a small photo says
    "upscaled", so the token need not learn its blur) and the crop's top left (an off-centre crop says
    "cropped", so the token need not learn the cut). Generation asks for (size, size, 0, 0, size, size).

    `original` and `target` are (width, height), `place` is `cover_and_crop`'s; a mirrored crop's left is
    measured from the mirrored image's left edge."""
    (width, height), (tw, th) = original, target
    top, left, _, scaled_width = place
    if mirrored:
        left = scaled_width - left - tw
    return (height, width, top, left, th, tw)


def _to_tensors(image: Image.Image, alpha_weight: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
    alpha = rgba[..., 3:]
    rgb = rgba[..., :3] * alpha + (1.0 - alpha) * GRAY if image.mode == "RGBA" else rgba[..., :3]
    pixels = torch.from_numpy(rgb).permute(2, 0, 1) * 2.0 - 1.0  # (3, H, W)
    weight = torch.from_numpy(alpha).permute(2, 0, 1).contiguous() if alpha_weight else None  # (1, H, W)
    return pixels.contiguous(), weight


def build_samples(
    images: list[TrainImage],
    *,
    resolution: int,
    crop: str,
    flip: bool,
    alpha_weight: bool,
    multiple: int,
    seed: int,
) -> list[Sample]:
    """Every cached variant: one per image (RANDOM_CROPS for random crops), and its mirror when flipping.

    An image of the target's aspect has no room to move, so its random crops are one crop: it is listed
    RANDOM_CROPS times as the same Sample objects (the epoch draws each image as often as any other, and
    `encode_samples` encodes an object once)."""
    check_alpha(images, alpha_weight=alpha_weight)
    rng = random.Random(seed)
    samples = []
    for index, item in enumerate(images):
        target = bucket_for(item.size, resolution, multiple) if crop == "bucket" else (resolution, resolution)
        offsets = [(0.5, 0.5)]
        if crop == "random":
            offsets = [(rng.random(), rng.random()) for _ in range(RANDOM_CROPS)]
        made: dict[tuple[int, ...], list[Sample]] = {}  # crop place -> its samples
        for offset in offsets:
            cropped, place = cover_and_crop(item.image, target, offset)
            if place in made:  # the same pixels as a crop already made: the same samples again
                samples.extend(made[place])
                continue
            made[place] = []
            for mirrored in (False, True) if flip else (False,):
                shown = ImageOps.mirror(cropped) if mirrored else cropped
                pixels, weight = _to_tensors(shown, alpha_weight)
                time_ids = _time_ids(item.size, place, target, mirrored)
                made[place].append(Sample(index, pixels, weight, mirrored, target, time_ids))
            samples.extend(made[place])
    return samples


def batches(samples: list[Sample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Sample indices for one epoch, shuffled by (seed, epoch); each batch holds one bucket's samples only."""
    rng = random.Random(seed * 1_000_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, sample in enumerate(samples):
        by_bucket.setdefault(sample.bucket, []).append(index)
    out = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket][:]
        rng.shuffle(members)
        while len(members) < batch_size:  # fewer variants than a batch: repeat them
            members += members[: batch_size - len(members)]
        out += [members[i : i + batch_size] for i in range(0, len(members) - batch_size + 1, batch_size)]
    rng.shuffle(out)
    return out
