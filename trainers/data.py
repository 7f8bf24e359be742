"""Training data: images (EXIF-rotated), captions and prompt templates; trainers/samples.py makes the crops,
buckets, flips and alpha weights from them.

Everything here runs before any model loads, so a bad folder fails in a second with a message naming the
file. Once checked, an image is kept only as large as its crops need (`fit_for_training`), not at a photo's
full size for the whole run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from embeddings.errors import TokensmithError
from embeddings.files import read_user_text
from trainers.pictures import PictureError, read_picture

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
OTHER_IMAGE_SUFFIXES = (".bmp", ".gif", ".tif", ".tiff", ".heic", ".avif", ".jfif")  # named as skipped
MIN_SIDE = 16  # smaller images carry no concept worth learning
KEEP_SCALE = 2  # kept images' shorter side: at most twice the training resolution (the crops' shorter side)
IGNORED_CAPTION_SUFFIX = ".caption"  # kohya's and BLIP's caption files: named in a note, not read

# The ImageNet template sets of the textual-inversion paper (as in diffusers' and kohya's scripts).
OBJECT_TEMPLATES = (
    "a photo of a [name]", "a rendering of a [name]", "a cropped photo of the [name]",
    "the photo of a [name]",
    "a photo of a clean [name]", "a photo of a dirty [name]", "a dark photo of the [name]",
    "a photo of my [name]", "a photo of the cool [name]", "a close-up photo of a [name]",
    "a bright photo of the [name]", "a cropped photo of a [name]", "a photo of the [name]",
    "a good photo of the [name]", "a photo of one [name]", "a close-up photo of the [name]",
    "a rendition of the [name]", "a photo of the clean [name]", "a rendition of a [name]",
    "a photo of a nice [name]", "a good photo of a [name]", "a photo of the nice [name]",
    "a photo of the small [name]", "a photo of the weird [name]", "a photo of the large [name]",
    "a photo of a cool [name]", "a photo of a small [name]",
)  # fmt: skip
STYLE_TEMPLATES = (
    "a painting in the style of [name]", "a rendering in the style of [name]",
    "a cropped painting in the style of [name]", "the painting in the style of [name]",
    "a clean painting in the style of [name]", "a dirty painting in the style of [name]",
    "a dark painting in the style of [name]", "a picture in the style of [name]",
    "a cool painting in the style of [name]", "a close-up painting in the style of [name]",
    "a bright painting in the style of [name]", "a good painting in the style of [name]",
    "a close-up painting in the style of [name]", "a rendition in the style of [name]",
    "a nice painting in the style of [name]", "a small painting in the style of [name]",
    "a weird painting in the style of [name]", "a large painting in the style of [name]",
)  # fmt: skip
CAPTION_TEMPLATES = ("[name], [filewords]",)
# Appended to the object and style sets, as A1111's subject_filewords/style_filewords do: an image's NAME.txt
# caption joins its prompts ('a photo of a <cat>, on a sofa'), and an image without one keeps the paper's own
# prompt ('a photo of a <cat>': fill_template tidies the empty part away), so uncaptioned runs are unchanged.
FILEWORDS_TAIL = ", [filewords]"


class DataError(TokensmithError, ValueError):
    """The training images or templates cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class TrainImage:
    """One training image, upright (EXIF applied), with its caption text ('' when it has none)."""

    path: Path
    image: Image.Image  # RGB or RGBA; after `fit_for_training`, no larger than the crops need
    caption: str
    source_size: tuple[int, int] | None = None  # the file's own (width, height); None: image.size

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the picture as the file shows it, whatever `image` was downscaled to: its
        aspect picks the bucket, and SDXL's time ids name it."""
        return self.source_size or self.image.size


# --- images and captions ---


def caption_files(folder: Path) -> dict[str, list[Path]]:
    """The folder's .txt files by lower-cased name: 'IMG_1.TXT' captions 'IMG_1.JPG' as it does on Windows
    and macOS, whose file systems ignore case (a folder copied from one must caption the same here). A link
    whose caption is gone is kept: `_caption_for` names it, as `image_paths` names an image's."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        broken = path.is_symlink() and not path.exists()
        if path.suffix.lower() == ".txt" and not path.name.startswith(".") and (path.is_file() or broken):
            found.setdefault(path.name.lower(), []).append(path)
    return found


def _caption_for(path: Path, text_files: dict[str, list[Path]]) -> str:
    """The caption of the image at `path` from its NAME.txt ('' when it has none); an exact-case NAME.txt
    wins over others that differ only in case, and two of those alone are an error naming both."""
    candidates = text_files.get(path.with_suffix(".txt").name.lower(), [])
    exact = [c for c in candidates if c.name == path.with_suffix(".txt").name]
    if len(candidates) > 1 and not exact:
        names = " and ".join(c.name for c in candidates)
        raise DataError(f"{names} both caption {path.name}; keep one of them")
    if not candidates:
        return ""
    text_file = (exact or candidates)[0]
    if text_file.is_symlink() and not text_file.exists():
        raise DataError(
            f"caption {text_file} is a broken link: {os.readlink(text_file)} does not exist; restore the "
            "caption it points to, or remove the link"
        )
    return read_user_text(text_file, "caption", DataError).strip()


def image_paths(folder: Path) -> list[Path]:
    """The training images in `folder`, sorted by name; hidden files (macOS `._x.png` forks) are skipped. A
    link to an image that is gone is an error naming it: a missing image, not a file to pass over."""
    found = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    for path in found:
        if path.is_symlink() and not path.exists():
            raise DataError(
                f"image {path} is a broken link: {os.readlink(path)} does not exist; restore the image it "
                "points to, or remove the link"
            )
    return [p for p in found if p.is_file()]


def few(names: list[str], shown: int = 3) -> str:
    """'a.gif, b.gif, c.gif, ...': the first few names, for a message that should stay one line."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def other_images(folder: Path) -> list[str]:
    """Names of the image files in `folder` that are not read (GIF, BMP, TIFF, ...): what a user converts."""
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in OTHER_IMAGE_SUFFIXES)


def image_subfolders(folder: Path) -> list[tuple[str, int]]:
    """(name, image count) of the subfolders that hold training images, most images first: a folder of
    class folders is not searched. Counted as `image_paths` counts (macOS `._x.png` forks are no images),
    and a Mac zip's `__MACOSX/` (nothing but such forks) is no suggestion."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name == "__MACOSX":
            continue
        try:
            count = len(image_paths(sub))
        except (OSError, DataError):  # an unreadable subfolder, or one with a broken link: no hint from it
            continue
        if count:
            found.append((sub.name, count))
    return sorted(found, key=lambda named: -named[1])  # stable: by name among equal counts


def _too_few(folder: Path, count: int, min_images: int) -> DataError:
    """The error for a folder with fewer than `min_images` images, with what the user probably meant."""
    hint = ""
    if others := other_images(folder):
        hint += f"; convert {few(others)} to PNG"
    if subfolders := image_subfolders(folder):
        shown = few([f"{name}/" for name, _count in subfolders])
        hint += (
            f"; its subfolders {shown} hold images, but subfolders are not searched: pass one of them "
            f"(--images {folder / subfolders[0][0]}) or move the images up into {folder}"
        )
    return DataError(
        f"{folder} holds {count} image(s) (PNG/JPEG/WebP) but at least {min_images} are needed; "
        f"add more images (3-10 varied ones work best){hint}"
    )


def load_images(folder: str | Path, *, min_images: int = 1, fit_to: int = 0) -> list[TrainImage]:
    """Every image in `folder` (sorted by name), EXIF-rotated; clear errors for unreadable, tiny or fully
    transparent files. With `fit_to` (a training resolution) each image is kept as `fit_for_training` keeps
    it as soon as it is checked, so a folder of large photos never sits in memory at full size."""
    if not str(folder).strip():  # Path("") is ".": the current folder, not what was meant
        raise DataError('no image folder given; pass --images DIR (images = "DIR" in a config file)')
    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"{folder} is a file; pass --images DIR, the folder that holds your training images")
    if not folder.is_dir():
        raise DataError(
            f"image folder {str(folder)!r} does not exist; pass --images DIR with your training images"
        )
    paths = image_paths(folder)
    if len(paths) < min_images:
        raise _too_few(folder, len(paths), min_images)
    text_files = caption_files(folder)
    images = []
    for path in paths:
        image = _read(path)
        if min(image.size) < MIN_SIDE:
            raise DataError(
                f"image {path} is {image.size[0]}x{image.size[1]} pixels, smaller than {MIN_SIDE}; "
                "remove it or use a larger image"
            )
        if image.mode == "RGBA" and image.getchannel("A").getextrema() == (0, 0):
            # it would train as a flat gray square (and with --alpha-weight its steps would teach nothing)
            raise DataError(
                f"image {path} is fully transparent (every pixel has alpha 0), so it shows nothing to learn; "
                "remove it or re-export it with its visible layer"
            )
        caption = _caption_for(path, text_files)
        item = TrainImage(path=path, image=image, caption=caption, source_size=image.size)
        images.extend(fit_for_training([item], resolution=fit_to) if fit_to else [item])
    return images


def fit_for_training(images: list[TrainImage], *, resolution: int) -> list[TrainImage]:
    """The images with each one's shorter side at most KEEP_SCALE × `resolution` (aspect and alpha kept,
    never upscaled): every crop scales an image's shorter side to about `resolution` or less, so a 24 MP
    photo need not stay in memory at 72 MB for the whole run. An image already that small is kept as it is
    (its crops are the same pixels); `size` stays the file's own."""
    keep = KEEP_SCALE * resolution
    fitted = []
    for item in images:
        width, height = item.image.size
        if min(width, height) <= keep:
            fitted.append(item)
            continue
        scale = keep / min(width, height)
        size = (max(keep, round(width * scale)), max(keep, round(height * scale)))
        smaller = item.image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)  # RGBA: premultiplied
        fitted.append(replace(item, image=smaller, source_size=item.size))
    return fitted


def check_alpha(images: list[TrainImage], *, alpha_weight: bool) -> None:
    """Refuse alpha_weight for images that have no alpha channel (before any model loads: `train` checks it
    with the images)."""
    if alpha_weight and not any(item.image.mode == "RGBA" for item in images):
        raise DataError(
            "alpha_weight is on but no training image has an alpha channel; save them as RGBA PNG, or drop "
            "--alpha-weight"
        )


def _read(path: Path) -> Image.Image:
    """The image at `path` upright and 8-bit (trainers.pictures), RGBA when it has transparency; any way PIL
    can fail on a file is an error naming it."""
    try:
        return read_picture(path, alpha=True)
    except PictureError as exc:
        raise DataError(str(exc)) from None


# --- templates ---


def template_set(
    templates: str, *, family_object_templates: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    """The prompt templates named by a config value: object, style, captions, or lines of a .txt file. The
    object and style sets end in [filewords], so an image's NAME.txt caption joins its prompts."""
    if templates == "object":
        return tuple(line + FILEWORDS_TAIL for line in family_object_templates or OBJECT_TEMPLATES)
    if templates == "style":
        return tuple(line + FILEWORDS_TAIL for line in STYLE_TEMPLATES)
    if templates == "captions":
        return CAPTION_TEMPLATES
    path = Path(templates)
    if not path.is_file():
        raise DataError(f"template file {path} does not exist; use object, style, captions or a .txt file")
    text = read_user_text(path, "template file", DataError)
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(
            f"template file {path} is empty; write one prompt per line, each must contain [name] (and may "
            "use [filewords]), e.g. 'a photo of [name], [filewords]'"
        )
    for number, line in lines:
        if "[name]" not in line:
            raise DataError(
                f"template file {path}: line {number} {line!r} has no [name]; every line must contain [name] "
                "(and may use [filewords])"
            )
    return tuple(line for _number, line in lines)


def fill_template(template: str, token_text: str, caption: str) -> str:
    """'a photo of a [name], [filewords]' -> 'a photo of a <cat>, on a sofa' (empty parts tidied away)."""
    text = template.replace("[name]", token_text).replace("[filewords]", caption)
    text = re.sub(r"\s*,\s*(,\s*)*", ", ", text)  # collapse empty comma-separated parts
    return re.sub(r"\s+", " ", text).strip(" ,")
