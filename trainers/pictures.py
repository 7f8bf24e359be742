"""Pictures as the user sees them: one reader for training images, init images and guide images.

A file on disk is not what a viewer shows: a phone photo is stored sideways with an EXIF orientation, a
16-bit PNG holds values up to 65535 that PIL's own `convert` clips to white, and a photo tagged with a colour
profile (Adobe RGB, Display P3, a press CMYK) shows its colours through that profile. `read_picture` applies
all three, so every door (the trainer, img2img, `match=` guides, the studio's uploads) reads the same pixels,
and every way PIL can fail on a file becomes one error that names the file and says what to do.
`profile=False` reads a file as tokensmith did before it applied profiles, so an image made then from it
(img2img, `match=`) replays from the pixels it was made from.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embeddings.errors import TokensmithError

HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # one channel, more than 8 bits
ALPHA_MODES = ("RGBA", "LA", "PA")
GRAY = 0.5  # what transparent pixels show, in [0, 1]: the gray training images are composited onto
PROFILE_MODES = {"RGB": "RGB", "CMYK": "CMYK", "GRAY": "L"}  # an ICC profile's colour space -> PIL's mode


class PictureError(TokensmithError, ValueError):
    """A picture that cannot be read; the message names the file and what to do."""


def read_picture(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    role: str = "image",
    alpha: bool = False,
    profile: bool = True,
) -> Image.Image:
    """The picture at `source` (a path, or a file's bytes called `name`) upright and 8-bit, as RGB; as RGBA
    when `alpha` is set and the picture has transparency.

    `role` names it in errors ("init image" -> "cannot read init image in.png: ..."). PictureError for a
    missing file, a folder, an empty file, a file that is not an image or is cut short, and one too large to
    open safely. An embedded colour profile is applied (the pixels become sRGB, as a viewer shows them, and
    the result carries no profile); `profile=False` keeps the pixels as stored, as tokensmith read them
    before it applied profiles, so an image made then from such a file replays from the same pixels.
    """
    # a path as the user wrote it (as the trainer's other messages do); an upload by its quoted file name
    label = f"'{name}'" if name else str(source) if not isinstance(source, bytes) else "(an upload)"
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        if path.is_dir():
            raise PictureError(f"{role} {label} is a folder: give an image file (PNG or JPEG)")
        if not path.exists():
            raise PictureError(f"{role} {label} does not exist: check the path")
    if (len(source) if isinstance(source, bytes) else path.stat().st_size) == 0:
        raise PictureError(f"{role} {label} is empty (0 bytes): give a PNG or JPEG file")
    try:
        with warnings.catch_warnings():
            # PIL warns (without the file's name) above MAX_IMAGE_PIXELS; such a photo is read, and the
            # trainer names it in a note (trainers.datanotes.data_notes). Twice the limit is refused below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else path) as opened:
                image = _eight_bit(ImageOps.exif_transpose(opened))
                image = _to_srgb(image) if profile else image
                mode = "RGBA" if alpha and _has_alpha(image) else "RGB"
                return image.convert(mode)
    except Image.DecompressionBombError as exc:  # PIL's guard against huge images: not an OSError
        raise PictureError(_too_large(role, label, exc)) from None
    except UnidentifiedImageError:
        raise PictureError(
            f"cannot read {role} {label}: it is not an image (PNG, JPEG, WebP or another format PIL knows); "
            "give a PNG or JPEG file"
        ) from None
    # ValueError: PIL's text-chunk limits (a PNG stuffed with metadata); struct.error: a cut header field
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        reason = str(exc).split(" <_io.")[0] or type(exc).__name__  # not the in-memory buffer's repr
        raise PictureError(
            f"cannot read {role} {label} ({reason}): is the file complete? re-save it as PNG"
        ) from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """A one-channel picture of more than 8 bits scaled to 8-bit 'L' (PIL's own convert clips it to white
    instead): integers as 0..65535, floats as 0..1 when they lie there (else as integers)."""
    if image.mode not in HIGH_DEPTH_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)  # (H, W)
    finite = values[np.isfinite(values)]
    if image.mode == "F" and finite.size and finite.min() >= 0 and finite.max() <= 1:
        values = values * 255.0
    else:
        values = values / 257.0  # 65535 -> 255
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _to_srgb(image: Image.Image) -> Image.Image:
    """`image` through its embedded ICC profile into sRGB, alpha kept (RGB or RGBA); as it is when it has no
    profile, or one that LittleCMS cannot read or that describes no RGB, CMYK or gray colours."""
    icc = image.info.get("icc_profile")
    if not icc:
        return image
    try:
        from PIL import ImageCms  # LittleCMS: in every Pillow wheel; a Pillow built without it reads on
    except ImportError:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        base_mode = PROFILE_MODES.get(source.profile.xcolor_space.strip())
        if base_mode is None:  # a Lab or device-link profile: no sRGB picture to be had from it
            return image
        alpha = image.convert("RGBA").getchannel("A") if _has_alpha(image) else None
        base = image if image.mode == base_mode else image.convert(base_mode)
        shown = ImageCms.profileToProfile(base, source, _srgb(), outputMode="RGB")
    except (OSError, ValueError, ImageCms.PyCMSError):  # a broken profile: pixels as stored
        return image
    if alpha is not None:
        shown.putalpha(alpha)  # a profile describes colours only: alpha stays as stored
    # the pixels are sRGB now: a copy saved from them (the studio's kept init image) must not carry the
    # source's profile, or a reader that applies it would convert them a second time
    shown.info.pop("icc_profile", None)
    return shown


@functools.cache
def _srgb():
    """LittleCMS's sRGB profile (ImageCms.ImageCmsProfile), built once."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or "transparency" in image.info


def _too_large(role: str, label: str, exc: Image.DecompressionBombError) -> str:
    """'init image a.png is too large (196 megapixels, ...)' (PIL's message has the pixel count only)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = _pixels(int(found.group(1))) if found else "too many pixels"
    limit = _pixels(2 * (Image.MAX_IMAGE_PIXELS or 0))  # PIL refuses above twice its warning limit
    return (
        f"{role} {label} is too large ({size}, more than the {limit} that are safe to open); downscale it "
        "(a few thousand pixels a side is plenty)"
    )


def _pixels(count: int) -> str:
    return f"{count / 1e6:.0f} megapixels" if count >= 10**6 else f"{count} pixels"


def flatten_alpha(image: Image.Image) -> Image.Image:
    """An RGB image as its transparent parts show on GRAY, not as the colour stored under alpha 0 (usually
    black); an image without transparency as it is. The one rule for every door: init images (img2img,
    the studio's uploads), and what the demo judge reads of a training image (trainers.worldcaptions)."""
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
    alpha = rgba[..., 3:]  # (H, W, 1)
    rgb = rgba[..., :3] * alpha + (1.0 - alpha) * GRAY  # (H, W, 3) in [0, 1]
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")
