"""Image guidance (img2img): start sampling from a noised copy of an init image instead of pure noise.

`strength` is the fraction of the schedule that is re-run: 0.2 keeps the image nearly as it is, 1.0 keeps
only its layout's faint trace (the same as text-to-image with that image's colours as a hint).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from embeddings.errors import TokensmithError
from trainers.pictures import PictureError, flatten_alpha, read_picture

# How init image files are read: 1 as PIL's convert gives them, 2 upright and 8-bit (trainers.pictures, its
# colour profile not applied), 3 as 2 with the colour profile applied and transparency composited onto gray
# (flatten_alpha). Provenance records it, so an image made by an older reader replays from the pixels it was
# made from.
INIT_READER = 3
STRENGTHLESS = ("pndm",)  # schedulers whose img2img does not honour strength (check_img2img_scheduler)


class InitImageError(TokensmithError, ValueError):
    """An init image or strength that cannot be used."""


def load_init_image(
    source: str | Path | Image.Image, size: tuple[int, int], *, reader: int = INIT_READER
) -> tuple[Image.Image, str]:
    """The init image as RGB at `size` (width, height), and the sha256 of its pixels (for provenance).

    A file is read as a viewer shows it (EXIF orientation, 16-bit scaled, colour profile applied;
    trainers.pictures), transparent parts on gray as training sees them (flatten_alpha); `reader=1` or `2`
    reads it as tokensmith did before, so an image made then can be replayed with the pixels it was made from.
    """
    if isinstance(source, Image.Image):
        image = flatten_alpha(source) if reader >= 3 else source.convert("RGB")
    elif reader == 1:
        image = _first_reader(Path(source).expanduser())
    else:
        try:
            image = read_picture(source, role="init image", alpha=reader >= 3, profile=reader >= 3)
        except PictureError as exc:
            raise InitImageError(str(exc)) from None
        # reader 2 kept a palette's transparent colour as stored (RGB with a `transparency` key, which
        # flatten_alpha would put on gray)
        image = flatten_alpha(image) if reader >= 3 else image
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image, image_sha256(image)


def _first_reader(path: Path) -> Image.Image:
    """The init image as reader 1 read it: the stored pixels as PIL converts them (stored orientation,
    16-bit clipped), which an image made before reader 2 was made from."""
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InitImageError(f"cannot read init image {path}: {exc}; give a PNG or JPEG file") from exc


def image_sha256(image: Image.Image) -> str:
    """sha256 over size and RGB pixels (not the file bytes, so a re-saved PNG matches)."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}\n".encode())
    digest.update(np.asarray(rgb, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def encode_image(vae: Any, image: Image.Image) -> torch.Tensor:
    """RGB image -> scaled latent (1, C, H/f, W/f); the posterior mean, so it is deterministic."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # (H, W, 3) in [-1, 1]
    pixels = pixels.permute(2, 0, 1).unsqueeze(0).to(device=vae.device, dtype=vae.dtype)  # (1, 3, H, W)
    with torch.no_grad():
        latent = vae.encode(pixels).latent_dist.mean  # (1, C, H/f, W/f)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latent - shift) * vae.config.scaling_factor


def check_img2img_scheduler(scheduler: str) -> None:
    """Refuse a scheduler whose img2img ignores strength (before any model loads, in the doors).

    diffusers trims an img2img schedule by model evaluations (`trimmed_timesteps`); PNDM's warm-up makes 12
    of its 29 evaluations at 20 steps, so the cut lands far too early and starts PLMS with no history: at
    strength 0.1 the image changes more than at 0.8. diffusers' own img2img pipeline does the same.
    """
    from studio.generation.schedule import SCHEDULERS

    key = scheduler.strip().lower().replace("_", "-")
    if key in STRENGTHLESS:
        honour = ", ".join(name for name in SCHEDULERS if name not in STRENGTHLESS)
        raise InitImageError(
            f"scheduler {key} cannot start from an init image: its warm-up steps break strength (a low "
            f"strength would change the image most); choose one that honours strength: {honour}"
        )


def check_strength(strength: float) -> float:
    """An img2img strength in (0, 1] (how much of the schedule re-runs), or InitImageError saying so."""
    if not 0.0 < strength <= 1.0:
        raise InitImageError(f"--strength must be above 0 and at most 1, not {strength}")
    return float(strength)


def trimmed_timesteps(scheduler: Any, steps: int, strength: float) -> torch.Tensor:
    """The last `strength` of the schedule (diffusers' img2img rule); the scheduler starts from there."""
    run = min(int(steps * strength), steps)
    if run < 1:
        raise InitImageError(
            f"strength {strength} with {steps} steps runs no step: raise --strength or --steps "
            f"(at least {1 / steps:.3g} for {steps} steps)"
        )
    start = (steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]
