"""Training images from the browser or a folder path: checked before any job starts, with messages that say
what is wrong with which file and what to do."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from trainers.pictures import PictureError, read_picture

IMAGE_TYPES = ("png", "jpg", "jpeg", "webp")
MIN_IMAGES = 2
MAX_IMAGES = 200
MAX_FILE_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 6000 * 6000
MIN_SIDE = 32


@dataclass(frozen=True)
class TrainingImage:
    """One checked image: its (safe) file name, bytes as uploaded, and size in pixels."""

    name: str
    data: bytes
    size: tuple[int, int]


def _safe_name(name: str, index: int) -> str:
    stem = Path(name).stem
    suffix = Path(name).suffix.lower()
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:60] or "image"
    return f"{index:03d}-{clean}{suffix}"


def check_image(name: str, data: bytes) -> tuple[int, int]:
    """The size of one uploaded image, or a ValueError naming the file and the problem."""
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in IMAGE_TYPES:
        raise ValueError(f"'{name}' is not a PNG, JPEG or WebP image: remove it or convert it")
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(
            f"'{name}' is {len(data) / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit: "
            "resize it (training uses a few hundred pixels per side anyway)"
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if size[0] * size[1] > MAX_PIXELS:
                raise ValueError(
                    f"'{name}' is {size[0]}×{size[1]} pixels, too large to train on: resize it below "
                    f"{int(MAX_PIXELS**0.5)} pixels per side"
                )
            image.verify()
    except UnidentifiedImageError:
        raise ValueError(
            f"'{name}' could not be read as an image (not a format PIL knows, or cut short): remove it, or "
            "re-save it as PNG"
        ) from None
    except (OSError, SyntaxError) as exc:
        reason = str(exc).split(" <_io.")[0] or type(exc).__name__  # not the in-memory buffer's repr
        raise ValueError(
            f"'{name}' could not be read as an image ({reason}): is the file complete?"
        ) from None
    except Image.DecompressionBombError:  # so large that PIL refuses to open it (and not an OSError)
        raise ValueError(
            f"'{name}' is too large to train on (too many pixels to open safely): resize it below "
            f"{int(MAX_PIXELS**0.5)} pixels per side"
        ) from None
    if min(size) < MIN_SIDE:
        raise ValueError(
            f"'{name}' is only {size[0]}×{size[1]} pixels: use images at least {MIN_SIDE} px a side"
        )
    return size


def check_images(files: list[tuple[str, bytes]]) -> list[TrainingImage]:
    """All uploaded images checked, or one ValueError listing every bad file and what to do."""
    if len(files) < MIN_IMAGES:
        raise ValueError(
            f"{len(files)} image{'s' if len(files) != 1 else ''} given: textual inversion needs at least "
            f"{MIN_IMAGES} (3–10 views of the concept work best)"
        )
    if len(files) > MAX_IMAGES:
        raise ValueError(f"{len(files)} images given: use at most {MAX_IMAGES} (a few good views are enough)")
    images, problems = [], []
    for index, (name, data) in enumerate(files):
        try:
            images.append(TrainingImage(_safe_name(name, index), data, check_image(name, data)))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return images


def read_folder(folder: str | Path) -> list[tuple[str, bytes]]:
    """The images (and nothing else) in a folder on this machine, as (name, bytes) pairs."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"folder '{folder}' does not exist on the machine running the studio: check the path"
        )
    files = [f for f in sorted(path.iterdir()) if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_TYPES]
    if not files:
        raise ValueError(f"folder '{folder}' holds no PNG, JPEG or WebP images")
    return [(f.name, f.read_bytes()) for f in files]


def save_images(images: list[TrainingImage], folder: Path) -> Path:
    """Write the checked images into `folder` (created if missing) and return it. A write that fails (a full
    disk) removes what this call wrote: the folders it made, else the images."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for image in images:
            path = folder / image.name
            written.append(path)
            path.write_bytes(image.data)
    except BaseException:
        if made:
            shutil.rmtree(made[0], ignore_errors=True)
            for parent in made[1:]:  # only while empty: another writer may have put something there
                with contextlib.suppress(OSError):
                    parent.rmdir()
        else:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
        raise
    return folder


def thumbnail(data: bytes, side: int = 160) -> Image.Image:
    """A small copy of an image for the page, as the trainer reads it (upright, 16-bit scaled); OSError
    saying why when it cannot be read (too large included: check_image names the problem in full)."""
    try:
        small = read_picture(data)
    except PictureError as exc:
        raise OSError(str(exc)) from None
    small.thumbnail((side, side))
    return small
