"""A pixel-statistics judge for demo-world images: what colour, shape, background, size and place it shows.

Background = median of the border pixels (no shape enters the margin). Foreground = pixels far from it; its
colour is the larger of two colour clusters there (so pattern stripes and antialiased edges do not pull
it). Shape = best soft-IoU match of the foreground mask, cropped to its bounding box and resized to a square,
against templates rendered by the world's own renderer, upright and tilted by up to TILTS (the renderer never
tilts a shape, but a user's drawing of one may: a square tilted by 10 degrees, cropped to its bounding box, is
rounder than an upright one and would otherwise read as a circle). Size = the bounding box's extent.

An image larger than MAX_SIDE is read shrunk to it: the templates are rendered at the side an image is read
at (4x supersampled), so a 6000 px photo would otherwise cost a 24000 px canvas per template (minutes, GB).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from demo.world import BACKGROUNDS, COLOURS, MARGIN, POSITIONS, SHAPES, SIZES, Concept, parse_concept, render

TEMPLATE_SIDE = 16
TILTS = (-15.0, -10.0, -5.0, 5.0, 10.0, 15.0)  # degrees; circles need none, they look the same at any tilt
MIN_FOREGROUND = 4.0  # pixels of foreground (soft) below which an image counts as empty
MAX_SIDE = 128  # px: the largest the world renders (bench/learn_concepts.py); larger images are shrunk to it


@dataclass(frozen=True)
class Verdict:
    """What an image shows. `colour_distance` is the RGB distance from the foreground to its named colour."""

    colour: str | None
    colour_rgb: tuple[int, int, int] | None
    colour_distance: float
    shape: str | None
    shape_score: float  # soft IoU with the best template, 0..1
    background: str
    background_rgb: tuple[int, int, int]
    size: str | None
    extent: float  # bounding-box side / image side
    area: float  # foreground fraction of the image
    position: str | None


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    names = list(table)
    dists = np.linalg.norm(np.array([table[n] for n in names], dtype=np.float32) - rgb, axis=1)
    return names[int(dists.argmin())], float(dists.min())


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float32)  # (H, W, 3) in 0..255


def judged_size(size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) the judge reads an image of `size` at: its own up to MAX_SIDE on the longer side,
    else shrunk to that, aspect kept: judged_size((2000, 1500)) == (128, 96)."""
    width, height = size
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _judged_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as the judge reads it, (H, W, 3) in 0..255: shrunk to judged_size by averaging (as the world
    averages its supersampled canvas) when larger than MAX_SIDE."""
    if not isinstance(image, Image.Image):
        arr = np.asarray(image, dtype=np.float32)
        if max(arr.shape[:2]) <= MAX_SIDE:
            return arr
        image = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        image = image.resize(judged_size(image.size), Image.Resampling.BOX)
    return _as_array(image)


def _crop_normalised(mask: np.ndarray) -> np.ndarray:
    """The soft mask cropped to the bounding box of its confident part, resized to a TEMPLATE_SIDE square."""
    ys, xs = np.nonzero(mask > 0.5)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    img = Image.fromarray((crop * 255).astype(np.uint8), mode="L")
    img = img.resize((TEMPLATE_SIDE, TEMPLATE_SIDE), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=8)
def _templates(resolution: int) -> dict[str, np.ndarray]:
    """Normalised masks of every shape at every size, upright and tilted by TILTS, rendered clean (white on
    black) at `resolution`: shape -> (T, TEMPLATE_SIDE, TEMPLATE_SIDE)."""
    rng = random.Random(0)
    out: dict[str, np.ndarray] = {}
    for shape in SHAPES:
        masks = []
        for size in SIZES:
            img = render(
                Concept(shape, "white", "black", size, "center", "plain"), rng, resolution=resolution
            )
            arr = _as_array(img)
            mask = (arr.mean(axis=2) - BACKGROUNDS["black"][0]) / (
                COLOURS["white"][0] - BACKGROUNDS["black"][0]
            )
            mask = np.clip(mask, 0, 1)  # (R, R)
            masks.append(_crop_normalised(mask))
            masks += [_crop_normalised(_tilted(mask, tilt)) for tilt in TILTS if shape != "circle"]
        out[shape] = np.stack(masks)  # (T, S, S)
    return out


def _tilted(mask: np.ndarray, degrees: float) -> np.ndarray:
    """A soft mask turned by `degrees` about its centre (bicubic, so edges stay soft as drawn), on a canvas
    padded so that no corner of a large shape is cut off."""
    padded = np.pad(mask, mask.shape[0] // 4)
    img = Image.fromarray((padded * 255).astype(np.uint8), mode="L")
    turned = img.rotate(degrees, resample=Image.BICUBIC, fillcolor=0)
    return np.asarray(turned, dtype=np.float32) / 255.0


def _shape_scores(norm: np.ndarray, resolution: int) -> dict[str, float]:
    """Soft IoU of a normalised mask with each shape's best template, upright or tilted."""
    scores = {}
    for shape, templates in _templates(resolution).items():  # (T, S, S)
        overlap = np.minimum(norm, templates).sum(axis=(1, 2)) / np.maximum(norm, templates).sum(axis=(1, 2))
        scores[shape] = float(overlap.max())
    return scores


def judge(image: Image.Image | np.ndarray) -> Verdict:
    """Read an image of the demo world back into words. Any size: one larger than MAX_SIDE is read shrunk
    (judged_size); a non-square one is measured against its shorter side, which the trainer's centre crop
    keeps whole."""
    arr = _judged_array(image)
    h, w, _ = arr.shape
    side = min(h, w)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])  # (2H+2W, 3)
    bg = np.median(border, axis=0)
    background, _ = _nearest(bg, BACKGROUNDS)
    dist = np.linalg.norm(arr - bg, axis=2)  # (H, W)
    core = dist > max(35.0, 0.25 * float(np.percentile(dist, 99)))  # a percentile, so specks cannot set it
    if core.sum() < 2:
        return _empty(bg, background)
    fg = _dominant_colour(arr[core])
    colour, colour_distance = _nearest(fg, COLOURS)
    # soft mask: 0 at the background colour, 1 at the foreground colour
    span = max(float(np.linalg.norm(fg - bg)), 1.0)
    mask = np.clip(dist / span, 0.0, 1.0)
    mask = np.where(mask > 0.25, mask, 0.0)
    mask = mask * _grow(_without_specks(mask > 0.5))  # stray specks of a noisy sample do not count
    if mask.sum() < MIN_FOREGROUND * (h * w) / 1024 or not (mask > 0.5).any():
        return _empty(bg, background)
    norm = _crop_normalised(mask)
    scores = _shape_scores(norm, max(side, TEMPLATE_SIDE))  # a sliver of a strip still renders templates
    shape = max(scores, key=scores.get)
    ys, xs = np.nonzero(mask > 0.5)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / side
    size = min(SIZES, key=lambda s: abs(SIZES[s] - extent))
    return Verdict(
        colour=colour,
        colour_rgb=tuple(round(float(v)) for v in fg),
        colour_distance=colour_distance,
        shape=shape,
        shape_score=scores[shape],
        background=background,
        background_rgb=tuple(round(float(v)) for v in bg),
        size=size,
        extent=float(extent),
        area=float(mask.sum() / (h * w)),
        position=_position(mask, extent),
    )


def _components(binary: np.ndarray) -> list[np.ndarray]:
    """The 8-connected regions of a boolean mask, each as an (N, 2) array of (y, x) (a plain flood fill)."""
    seen = np.zeros_like(binary, dtype=bool)
    h, w = binary.shape
    regions = []
    for start in zip(*np.nonzero(binary), strict=True):
        if seen[start]:
            continue
        region, stack = [], [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        regions.append(np.array(region))
    return regions


def _without_specks(binary: np.ndarray) -> np.ndarray:
    """Drop regions far smaller than the biggest (a noisy sample's specks); keep a striped shape's bands."""
    regions = _components(binary)
    out = np.zeros_like(binary, dtype=bool)
    if not regions:
        return out
    floor = max(3 * (min(binary.shape) / 32) ** 2, 0.1 * max(len(r) for r in regions))
    for region in regions:
        if len(region) >= floor:
            out[region[:, 0], region[:, 1]] = True
    return out


def _grow(binary: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel in every direction (keeps a shape's soft antialiased rim)."""
    padded = np.pad(binary, 1)
    h, w = binary.shape
    return np.logical_or.reduce([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])


def _dominant_colour(pixels: np.ndarray) -> np.ndarray:
    """Median of the larger of two RGB clusters: the shape's own colour, not its pattern or blended edges."""
    brightness = pixels.max(axis=1)  # (N,)
    centres = np.stack([pixels[brightness.argmax()], pixels[brightness.argmin()]])  # (2, 3)
    for _ in range(6):
        labels = np.linalg.norm(pixels[:, None] - centres[None], axis=2).argmin(axis=1)  # (N,)
        centres = np.stack(
            [pixels[labels == k].mean(axis=0) if (labels == k).any() else centres[k] for k in (0, 1)]
        )
    biggest = np.bincount(labels, minlength=2).argmax()
    return np.median(pixels[labels == biggest], axis=0)


def _position(mask: np.ndarray, extent: float) -> str:
    """Nearest named position of the bounding box's centre, in units of the room the shape had to move."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask > 0.5)
    cx, cy = (xs.min() + xs.max() + 1) / 2 / w - 0.5, (ys.min() + ys.max() + 1) / 2 / h - 0.5
    room = max((1 - 2 * MARGIN - extent) / 2, 0.05)
    return min(
        POSITIONS, key=lambda p: (POSITIONS[p][0] - cx / room) ** 2 + (POSITIONS[p][1] - cy / room) ** 2
    )


def _empty(bg: np.ndarray, background: str) -> Verdict:
    return Verdict(
        None, None, float("inf"), None, 0.0, background, tuple(int(v) for v in bg), None, 0.0, 0.0, None
    )


def distance_to(image: Image.Image | np.ndarray, concept: Concept | str) -> float:
    """RGB distance from an image's foreground colour to the concept's colour (inf for an empty image)."""
    concept = parse_concept(concept) if isinstance(concept, str) else concept
    verdict = judge(image)
    if verdict.colour_rgb is None:
        return float("inf")
    return float(np.linalg.norm(np.array(verdict.colour_rgb, dtype=np.float32) - COLOURS[concept.colour]))


def matches(verdict: Verdict, concept: Concept) -> dict[str, bool]:
    """Which of the concept's specified fields the verdict agrees with."""
    fields = {"colour": concept.colour, "shape": concept.shape, "background": concept.background or "gray"}
    if concept.size:
        fields["size"] = concept.size
    if concept.position and concept.size != "large":  # a large shape has almost no room to move
        fields["position"] = concept.position
    return {name: getattr(verdict, name) == want for name, want in fields.items()}
