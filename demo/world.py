"""The demo world: its vocabulary, a renderer for any concept in it, and the captions the model learns from.

A concept is one shape on a plain background: "a small striped red star on the left on a blue background".
The training distribution leaves out a few colour×shape combinations and one colour (pink) entirely, so that
textual inversion has concepts to learn that the model has never seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

# --- vocabulary ---
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 50),
    "cyan": (30, 200, 210),
    "blue": (30, 70, 220),
    "purple": (140, 40, 190),
    "brown": (125, 75, 35),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "pink": (250, 120, 190),  # held out: never rendered for training, never in a caption
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),  # the default: a caption without a background means gray
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "blue": (40, 80, 200),
    "green": (50, 150, 60),
    "yellow": (235, 215, 40),
}
DEFAULT_BACKGROUND = "gray"
# Shape extent as a fraction of the image side (the bounding box of every shape is this wide).
SIZES: dict[str, float] = {"small": 0.38, "medium": 0.56, "large": 0.78}
# Shape centre as (x, y) in units of the free room on each side: -1 = touching the margin, 0 = centred.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.0, 0.0),
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "top": (0.0, -1.0),
    "bottom": (0.0, 1.0),
}
POSITION_PHRASES: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"),
    ("orange", "star"),
    ("green", "cross"),
    ("cyan", "circle"),
    ("yellow", "square"),
)
HELD_OUT_COLOURS: tuple[str, ...] = ("pink",)
TRAIN_COLOURS: tuple[str, ...] = tuple(c for c in COLOURS if c not in HELD_OUT_COLOURS)
PREFIXES: tuple[str, ...] = ("a ", "a photo of a ", "a picture of a ", "an image of a ", "")
RESOLUTION = 32
MARGIN = 0.06  # free border (fraction of the side) that no shape enters, so border pixels show the background
SUPERSAMPLE = 4
COLOUR_JITTER = 14  # per-channel uniform jitter of fg/bg colours in training renders


@dataclass(frozen=True)
class Concept:
    """One thing the world can show. None means unspecified: `render` samples it, `caption` omits it."""

    shape: str
    colour: str
    background: str | None = None
    size: str | None = None
    position: str | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        checks = [
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, COLOURS),
            ("background", self.background, BACKGROUNDS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
            ("pattern", self.pattern, PATTERNS),
        ]
        for field_name, value, allowed in checks:
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {field_name} {value!r}: the demo world knows {', '.join(allowed)}")

    @property
    def is_held_out(self) -> bool:
        """True for concepts the model never saw in training (a held-out combination or colour)."""
        return (self.colour, self.shape) in HELD_OUT_COMBOS or self.colour in HELD_OUT_COLOURS

    def __str__(self) -> str:
        return caption(self)


# --- parsing ---
_WORD_FIELDS: dict[str, tuple[str, str]] = {
    **{w: ("size", w) for w in SIZES},
    **{w: ("pattern", w) for w in PATTERNS},
    **{w: ("shape", w) for w in SHAPES},
    **{w: ("position", w) for w in POSITIONS},
    "centre": ("position", "center"),
    "middle": ("position", "center"),
}
_FILLER = {"a", "an", "the", "of", "on", "in", "at", "photo", "picture", "image", "background", "shape"}


def parse_concept(text: str) -> Concept:
    """'a small purple triangle on a blue background' -> Concept('triangle', 'purple', 'blue', 'small')."""
    words = text.lower().replace(",", " ").replace("-", " ").split()
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        is_background = i + 1 < len(words) and words[i + 1] == "background"
        if word in ("gray", "grey") or (is_background and word in BACKGROUNDS):
            if not is_background:
                raise ValueError(
                    f"{word!r} is a background in the demo world: write 'on a {word} background'"
                )
            field_name, value = "background", "gray" if word == "grey" else word
        elif word in COLOURS:
            field_name, value = "colour", word
        elif word in _WORD_FIELDS:
            field_name, value = _WORD_FIELDS[word]
        elif word in _FILLER:
            continue
        else:
            raise ValueError(
                f"unknown word {word!r} in {text!r}: a demo-world concept is built from shapes "
                f"({', '.join(SHAPES)}), colours ({', '.join(COLOURS)}), sizes, patterns, positions and "
                f"'on a COLOUR background'"
            )
        if field_name in found and found[field_name] != value:
            raise ValueError(f"{text!r} names two {field_name}s: {found[field_name]!r} and {value!r}")
        found[field_name] = value
    missing = [name for name in ("colour", "shape") if name not in found]
    if missing:
        raise ValueError(f"{text!r} has no {' and no '.join(missing)}: write e.g. 'purple triangle'")
    return Concept(**found)


# --- rendering ---
def _shape_mask(shape: str, n: int, cx: float, cy: float, extent: float) -> np.ndarray:
    """Binary (n, n) mask of a shape whose bounding box is `extent` wide, centred at (cx, cy) in pixels."""
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    dx, dy = (xs - cx) / (extent / 2), (ys - cy) / (extent / 2)  # the bounding box is [-1, 1]²
    if shape == "circle":
        return dx**2 + dy**2 <= 1.0
    if shape == "square":
        return (np.abs(dx) <= 1.0) & (np.abs(dy) <= 1.0)
    if shape == "triangle":  # apex up, base at the bottom
        return (dy <= 1.0) & (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) / 2.0)
    if shape == "cross":
        arm = 1.0 / 3.0
        inside = (np.abs(dx) <= 1.0) & (np.abs(dy) <= 1.0)
        return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    if shape == "star":
        return _polygon_mask(_star_points(), dx, dy)
    raise ValueError(f"unknown shape {shape!r}: the demo world knows {', '.join(SHAPES)}")


def _star_points() -> np.ndarray:
    """A 5-pointed star, apex up, scaled so its bounding box is exactly [-1, 1]²."""
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # (10, 2)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (pts - lo) / (hi - lo) * 2.0 - 1.0


def _polygon_mask(points: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the pixel grid."""
    inside = np.zeros(xs.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(points, np.roll(points, -1, axis=0), strict=True):
        crosses = (y1 > ys) != (y2 > ys)
        x_at = (x2 - x1) * (ys - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (xs < x_at)
    return inside


def _pattern_mask(pattern: str, n: int, scale: int) -> np.ndarray:
    """Where the pattern's contrast colour goes, on the supersampled grid (stripes: 3 px on, 2 px off)."""
    ys, xs = np.mgrid[0:n, 0:n] // scale
    if pattern == "striped":
        return (ys % 5) >= 3
    if pattern == "dotted":
        return ((ys % 4) == 1) & ((xs % 4) == 1)
    return np.zeros((n, n), dtype=bool)


def pattern_colour(rgb: np.ndarray) -> np.ndarray:
    """The contrast colour of a pattern: darker for light colours, lighter for dark ones."""
    return rgb * 0.35 if rgb.max() > 90 else rgb * 0.4 + 150


def _jittered(rgb: tuple[int, int, int], rng: random.Random, jitter: int) -> np.ndarray:
    return np.clip(np.array(rgb, dtype=np.float32) + [rng.uniform(-jitter, jitter) for _ in range(3)], 0, 255)


def resolve(concept: Concept, rng: random.Random) -> Concept:
    """Fill every unspecified field: size and position at random, gray background, plain pattern."""
    return replace(
        concept,
        background=concept.background or DEFAULT_BACKGROUND,
        size=concept.size or rng.choice(tuple(SIZES)),
        position=concept.position or rng.choice(tuple(POSITIONS)),
        pattern=concept.pattern or "plain",
    )


def render(
    concept: Concept, rng: random.Random, *, resolution: int = RESOLUTION, jitter: bool = True
) -> Image.Image:
    """An RGB image of `concept` (unspecified fields sampled from `rng`), antialiased by supersampling."""
    c = resolve(concept, rng)
    if c.background == c.colour:
        raise ValueError(
            f"a {c.colour} shape on a {c.background} background would be invisible: pick another"
        )
    n, amount = resolution * SUPERSAMPLE, COLOUR_JITTER if jitter else 0
    extent = SIZES[c.size] * n
    room = max(0.0, (n * (1 - 2 * MARGIN) - extent) / 2)  # how far the centre may move from the middle
    px, py = POSITIONS[c.position]
    wobble = SUPERSAMPLE * 1.0 if jitter else 0.0  # ±1 output pixel, kept inside the margin
    cx = n / 2 + px * room + rng.uniform(-wobble, wobble) * (room > wobble)
    cy = n / 2 + py * room + rng.uniform(-wobble, wobble) * (room > wobble)
    bg = _jittered(BACKGROUNDS[c.background], rng, amount)
    fg = _jittered(COLOURS[c.colour], rng, amount)
    mask = _shape_mask(c.shape, n, cx, cy, extent)  # (n, n) bool
    contrast = _pattern_mask(c.pattern, n, SUPERSAMPLE)
    pixels = np.empty((n, n, 3), dtype=np.float32)
    pixels[:] = bg
    pixels[mask] = fg
    pixels[mask & contrast] = pattern_colour(fg)
    small = pixels.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))  # (r, r, 3)
    return Image.fromarray(np.round(small).astype(np.uint8), mode="RGB")


# --- captions and the training distribution ---
def caption(concept: Concept, rng: random.Random | None = None) -> str:
    """The caption of a concept; with `rng`, one of its training variants (prefixes, optional words)."""
    c = concept
    if rng is None:
        words = [c.size, None if c.pattern == "plain" else c.pattern, c.colour, c.shape]
        text = "a " + " ".join(w for w in words if w)
        if c.position:
            text += " " + POSITION_PHRASES[c.position]
        if c.background:
            text += f" on a {c.background} background"
        return text
    size_p = {"small": 0.85, "medium": 0.35, "large": 0.85}.get(c.size or "", 0.0)
    words = [
        c.size if rng.random() < size_p else None,
        None if c.pattern in (None, "plain") else c.pattern,
        c.colour,
        c.shape,
    ]
    text = rng.choice(PREFIXES) + " ".join(w for w in words if w)
    if c.position and rng.random() < (0.25 if c.position == "center" else 0.75):
        text += " " + POSITION_PHRASES[c.position]
    if c.background and (c.background != DEFAULT_BACKGROUND or rng.random() < 0.3):
        text += f" on a {c.background} background"
    return text


def sample_training_concept(rng: random.Random) -> Concept:
    """A fully specified concept from the training distribution (held-out ones never come out)."""
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(TRAIN_COLOURS)
        if (colour, shape) not in HELD_OUT_COMBOS:
            break
    background = DEFAULT_BACKGROUND
    if rng.random() < 0.45:
        background = rng.choice([b for b in BACKGROUNDS if b not in (DEFAULT_BACKGROUND, colour)])
    position = "center" if rng.random() < 0.4 else rng.choice(("left", "right", "top", "bottom"))
    roll = rng.random()
    pattern = "striped" if roll < 0.1 else "dotted" if roll < 0.2 else "plain"
    return Concept(shape, colour, background, rng.choice(tuple(SIZES)), position, pattern)


def caption_words() -> list[str]:
    """Every word a training caption can contain (the tokenizer's whole-word vocabulary)."""
    words = {w for p in PREFIXES for w in p.split()}
    words |= set(SHAPES) | set(TRAIN_COLOURS) | set(BACKGROUNDS) | set(SIZES) | {"striped", "dotted"}
    words |= {w for phrase in POSITION_PHRASES.values() for w in phrase.split()}
    words |= {"on", "background"}
    return sorted(words)
