"""Loss guidance: steer sampling with the gradient of a differentiable loss on the predicted clean image.

At every `every`-th step the sampler decodes the predicted clean latent x̂0 and takes a few gradient steps on
it (`ITERATIONS`), each sized to remove `scale` of the loss by its linear estimate (a Polyak step: Δ =
−scale · L · ∇L / ‖∇L‖², capped at the size of x̂0 itself). Sizing steps by the loss, not by a raw learning
rate, makes one `scale` work on any model and any loss. The noisy latent is then moved so it matches the
corrected x̂0 with the same noise (fast.ai's "blue loss" lesson, done for any scheduler and prediction type).

Specs (`--guide`, repeatable): `color=green`, `color=#00ff00`, `brightness=0.8`, `contrast=0.3`,
`match=PATH`, each optionally followed by `,scale=S` (0 < S ≤ 1, default 0.5) and `,every=K`. Your own loss:
`--guide-module package.module:function[,scale=S][,every=K]` where

    def function(image: torch.Tensor) -> torch.Tensor:
        # image: (B, 3, H, W) float in [0, 1], differentiable; return a scalar >= 0 that is 0 when satisfied
        return (image[:, 2] - 0.9).abs().mean()   # e.g. "more blue"
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.generation.guide_modules import (  # noqa: F401  (GuideError and SIGNATURE: guidance's API)
    SIGNATURE,
    GuideError,
    Loss,
    import_root,
    importable_from,
    module_loss,
    module_source,
    ran_sha256,
    users_code,
)
from studio.generation.img2img import image_sha256

KINDS = ("color", "brightness", "contrast", "match", "module")
DEFAULT_SCALE = 0.5  # the fraction of the loss each gradient step aims to remove
DEFAULT_EVERY = 1
ITERATIONS = 4  # gradient steps on x̂0 per guided sampling step
# How match images are read: 1 upright and 8-bit (trainers.pictures, the colour profile not applied), 2 as 1
# with the profile applied. The guide's record keeps it (absent: 1), so an image made by reader 1 replays
# from the pixels it was made from.
MATCH_READER = 2
MAX_STEP = 0.5  # a step's RMS is at most this times the RMS of x̂0 (flat losses would otherwise jump)
# Colour names beyond the demo world's own (which take precedence, so "green" means the demo's green).
EXTRA_COLOURS = {
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "brown": (139, 69, 19),
    "navy": (0, 0, 128),
    "teal": (0, 128, 128),
    "lime": (0, 255, 0),
}


@dataclass(frozen=True)
class GuideFile:
    """The file a guide's loss reads (match's image, a module's source): a replay checks it is unchanged."""

    path: str  # resolved
    sha256: str  # match: of the image's pixels (image_sha256); module: of the source file's bytes
    reader: int | None = None  # match: how the image was read (MATCH_READER)


@dataclass(frozen=True)
class Guide:
    spec: str  # as the user wrote it (error messages)
    kind: str  # color | brightness | contrast | match | module
    loss: Loss
    scale: float
    every: int  # in sampling steps
    run_spec: str = ""  # what provenance keeps: the spec with match's path resolved
    file: GuideFile | None = None

    def active(self, step: int) -> bool:
        return step % self.every == 0

    def record(self) -> dict:
        """The provenance entry of a guide that reads a file ({} for the others)."""
        if self.file is None:
            return {}
        entry = {
            "guide": self.run_spec,
            "kind": self.kind,
            "path": self.file.path,
            "sha256": self.file.sha256,
        }
        return entry if self.file.reader is None else entry | {"reader": self.file.reader}


def colour_rgb(text: str) -> tuple[float, float, float]:
    """'green' | '#00ff00' | '#0f0' -> RGB in [0, 1]."""
    value = text.strip().lower()
    if value.startswith("#") and len(value) in (4, 7):
        digits = value[1:] if len(value) == 7 else "".join(c * 2 for c in value[1:])
        try:
            return tuple(int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]
        except ValueError:
            pass
    table = {**EXTRA_COLOURS, **_world_colours()}
    if value in table:
        return tuple(c / 255 for c in table[value])  # type: ignore[return-value]
    raise GuideError(
        f"unknown colour {text!r}: use a name ({', '.join(sorted(table))}) or a hex value like #22aa44"
    )


def _world_colours() -> dict[str, tuple[int, int, int]]:
    try:
        from demo.world import COLOURS
    except ImportError:  # a tokensmith install without the demo world's sources
        return {}
    return dict(COLOURS)


def _luminance(image: torch.Tensor) -> torch.Tensor:
    return 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]  # (B, H, W)


def color_loss(rgb: tuple[float, float, float]) -> Loss:
    target = torch.tensor(rgb).view(1, 3, 1, 1)
    return lambda image: ((image - target.to(image)) ** 2).mean()


def brightness_loss(level: float) -> Loss:
    return lambda image: (_luminance(image).mean() - level) ** 2


def contrast_loss(level: float) -> Loss:
    return lambda image: (_luminance(image).std() - level) ** 2


def reference_image(path: Path, reader: int = MATCH_READER):
    """match's image as RGB, as a viewer shows it (trainers.pictures; `reader=1`: its colour profile not
    applied, as images made before MATCH_READER 2 read it), or GuideError saying what to give."""
    from trainers.pictures import PictureError, read_picture

    try:
        return read_picture(path, role="match image", profile=reader >= 2)
    except PictureError as exc:
        raise GuideError(str(exc)) from None


# While a replay runs (importable_guides): each recorded match image's resolved path -> the reader it was
# read with, so parse_guide reads it as it was read when the image was made
_REPLAY_READERS: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "match_readers", default=None
)


def match_reader(entry: dict) -> int:
    """How a match guide's recorded image was read: its record's `reader`, 1 for images made before it was
    recorded."""
    return int(entry.get("reader", 1))


def _match_loss(image) -> Loss:
    reference = torch.from_numpy(_rgb_array(image))  # (H, W, 3) float in [0, 1]
    reference = reference.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)

    def loss(image: torch.Tensor) -> torch.Tensor:
        target = torch.nn.functional.interpolate(
            reference, size=image.shape[-2:], mode="bilinear", antialias=True
        )
        return ((image - target.to(image)) ** 2).mean()

    return loss


def _rgb_array(img):
    import numpy as np

    return np.asarray(img, dtype=np.float32) / 255.0


def guide_kind(spec: str) -> str:
    """The kind a guide spec names, as parse_guide reads it: 'Colour = red,scale=1' -> 'color'."""
    kind = spec.split(",")[0].partition("=")[0].strip().lower()
    return "color" if kind == "colour" else kind


def guide_module(spec: str) -> str:
    """The module a `module=` guide imports: 'module=pkg.losses:blue,scale=0.8' -> 'pkg.losses'."""
    return spec.split(",")[0].partition("=")[2].strip().partition(":")[0]


def recorded_root(entry: dict) -> Path | None:
    """The folder from which a module guide's recorded file imports under its name, if it fits the name."""
    return import_root(guide_module(entry["guide"]), Path(entry["path"]))


@contextlib.contextmanager
def importable_guides(records: list[dict]) -> Iterator[None]:
    """While a replay runs: the guide modules that do not import by name from here import from the folders
    their provenance records (changed_files has checked that the files found there are unchanged), and
    match images are read by the reader their records name."""
    modules = [entry for entry in records if entry["kind"] == "module"]
    roots = [recorded_root(entry) for entry in modules if module_source(guide_module(entry["guide"])) is None]
    readers = {entry["path"]: match_reader(entry) for entry in records if entry["kind"] == "match"}
    token = _REPLAY_READERS.set(readers)
    try:
        with importable_from([root for root in roots if root is not None]):
            yield
    finally:
        _REPLAY_READERS.reset(token)


def parse_guide(spec: str) -> Guide:
    """'color=green,scale=0.8,every=2' -> Guide; `module=pkg.mod:fn` is what --guide-module adds."""
    head, *options = [part.strip() for part in spec.split(",")]
    _kind, sep, value = head.partition("=")
    kind, value = guide_kind(spec), value.strip()
    if not sep or kind not in KINDS or not value:
        raise GuideError(
            f"unknown guide {spec!r}: use color=NAME_OR_HEX, brightness=F, contrast=F, match=PATH or "
            "module=package.module:function (optionally ,scale=S ,every=K)"
        )
    scale, every = DEFAULT_SCALE, DEFAULT_EVERY
    for option in options:
        key, _eq, raw = option.partition("=")
        try:
            if key.strip() == "scale":
                scale = float(raw)
            elif key.strip() == "every":
                every = int(raw)
            else:
                raise ValueError(key)
        except ValueError as exc:
            raise GuideError(
                f"guide {spec!r}: bad option {option!r}; options are scale=FLOAT and every=INT"
            ) from exc
    if every < 1:
        raise GuideError(f"guide {spec!r}: every must be 1 or more")
    if not 0 < scale <= 1:
        raise GuideError(
            f"guide {spec!r}: scale is the share of the loss removed per step: above 0, at most 1"
        )
    if kind == "match":
        path = Path(value).expanduser().resolve()
        reader = (_REPLAY_READERS.get() or {}).get(str(path), MATCH_READER)  # a replay: as it was read
        image = reference_image(path, reader)
        return Guide(
            spec=spec, kind=kind, loss=_match_loss(image), scale=scale, every=every,
            run_spec=",".join([f"match={path}", *options]),
            file=GuideFile(str(path), image_sha256(image), reader),
        )  # fmt: skip
    if kind == "module":
        loss = module_loss(value)
        module_name = value.partition(":")[0]
        source = module_source(module_name)  # the hash is the one of the source module_loss just ran
        record = GuideFile(str(source), ran_sha256(module_name)) if source is not None else None
        return Guide(spec=spec, kind=kind, loss=loss, scale=scale, every=every, run_spec=spec, file=record)
    loss = _build_loss(kind, value, spec)
    return Guide(spec=spec, kind=kind, loss=loss, scale=scale, every=every, run_spec=spec)


def _build_loss(kind: str, value: str, spec: str) -> Loss:
    if kind == "color":
        return color_loss(colour_rgb(value))
    try:
        level = float(value)
    except ValueError as exc:
        raise GuideError(f"guide {spec!r}: {kind} takes a number between 0 and 1") from exc
    if not 0.0 <= level <= 1.0:
        raise GuideError(f"guide {spec!r}: {kind} takes a number between 0 and 1")
    return brightness_loss(level) if kind == "brightness" else contrast_loss(level)


def guided_x0(
    x0: torch.Tensor, guides: list[Guide], step: int, decode: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """x̂0 after ITERATIONS Polyak steps on the active guides' losses (x̂0 itself when none is active).

    `decode` maps a latent (B, C, h, w) to an image (B, 3, H, W) in [0, 1], differentiably.
    """
    active = [g for g in guides if g.active(step)]
    if not active:
        return x0
    x = x0.detach()
    for _ in range(ITERATIONS):
        x = x + sum(_polyak_step(x, guide, decode) for guide in active)  # (B, C, h, w)
    return x


def _polyak_step(
    x0: torch.Tensor, guide: Guide, decode: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The step that removes `guide.scale` of its loss by the linear estimate, capped at MAX_STEP × |x̂0|."""
    with torch.enable_grad():
        x = x0.detach().requires_grad_(True)  # (B, C, h, w)
        image = decode(x)  # (B, 3, H, W) in [0, 1]
        source = guide.file.path if guide.file is not None else None
        with users_code(guide.spec, source):  # the loss and its backward pass run the user's code
            loss = _scalar(guide, guide.loss(image))
            (grad,) = torch.autograd.grad(loss, x)
    value = float(loss.detach())
    if not math.isfinite(value):  # NaN passes every test below and would blacken the image
        raise GuideError(
            f"guide {guide.spec!r}: the loss is {value}, not a finite number: it must be >= 0 and finite "
            "(look for a log of 0, a square root of a negative number or a division by 0)"
        )
    if value <= 0:
        return torch.zeros_like(x0)  # satisfied
    if not torch.isfinite(grad).all():
        raise GuideError(
            f"guide {guide.spec!r}: the loss is {value:g} but its gradient is not finite (nan or inf): make "
            "the loss smooth where the image is (no square root or log of 0, for example)"
        )
    norm_sq = float((grad**2).sum())
    if norm_sq == 0:
        return torch.zeros_like(x0)  # nothing to follow
    delta = -guide.scale * value * grad / norm_sq  # (B, C, h, w)
    rms, limit = delta.pow(2).mean().sqrt(), MAX_STEP * x0.pow(2).mean().sqrt().clamp_min(1e-6)
    return delta * (limit / rms) if rms > limit else delta


def _scalar(guide: Guide, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise GuideError(
            f"guide {guide.spec!r}: the loss must return a scalar tensor, got {type(value).__name__}"
        )
    if value.numel() != 1:
        raise GuideError(
            f"guide {guide.spec!r}: the loss must return a scalar tensor, got one of shape "
            f"{tuple(value.shape)} (reduce it, e.g. with .mean())"
        )
    if not value.requires_grad:
        raise GuideError(f"guide {guide.spec!r}: the loss is not differentiable in the image (no gradient)")
    return value.reshape(())
