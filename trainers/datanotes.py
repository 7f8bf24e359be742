"""What to know about the training data before training, printed as notes: how many images, the files
that are not read (other formats, subfolders, `.caption` files), captions that the templates leave out or
`[filewords]` that no caption fills, huge photos and panoramas, and the demo world's background captions.

Notes never stop a run: what would is an error in `trainers.data`.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from trainers.data import (
    IGNORED_CAPTION_SUFFIX,
    TrainImage,
    caption_files,
    few,
    image_subfolders,
    other_images,
    template_set,
)
from trainers.samples import MAX_ASPECT


def data_notes(
    folder: str | Path,
    images: list[TrainImage],
    templates: str,
    *,
    demo_world: bool = False,
    crop: str = "center",
) -> list[str]:
    """What to know about the training data before training: how many images (and which image files were
    skipped, or left in subfolders), captions that the templates leave out, or [filewords] that no caption
    fills, huge photos, panoramas cropped to a bucket (`crop`), and on the demo world (`demo_world`) the
    background captions that trainers.worldcaptions gives the images."""
    from trainers.worldcaptions import background_note

    folder = Path(folder)
    captioned = [image for image in images if image.caption]
    with_captions = f" ({len(captioned)} with NAME.txt captions)" if captioned else ""
    found = f"training on {len(images)} image(s) from {folder}{with_captions}"
    if others := other_images(folder):
        found += f"; skipped {few(others)}: only PNG/JPEG/WebP are read, convert them to PNG to use them"
    notes = [found, *_folder_notes(folder), *_size_notes(images, crop)]
    paper = templates in ("object", "style")  # they end in [filewords]
    uses_captions = paper or any("[filewords]" in line for line in template_set(templates))
    if demo_world and uses_captions and (note := background_note(images)):
        notes.append(note)
    if paper:  # the caption joins each prompt where there is one: nothing to add
        return notes
    if captioned and not uses_captions:
        notes.append(
            f"{len(captioned)} of {len(images)} images have NAME.txt captions, but the templates in "
            f"{templates} have no [filewords], so the captions are not used; add [filewords] to the template "
            "lines (or use --templates object, style or captions) to train with them"
        )
    elif uses_captions and not captioned:
        _missing, empty = _uncaptioned(folder, images)
        blank = f" ({few(empty)} {'is' if len(empty) == 1 else 'are'} empty)" if empty else ""
        notes.append(
            f"the templates use [filewords] but no image in {folder} has a NAME.txt caption{blank}, so it "
            "stays empty in every prompt; write a caption next to each image (IMAGE.txt), or use --templates "
            "object or style"
        )
    elif uses_captions and len(captioned) < len(images):
        missing, empty = _uncaptioned(folder, images)
        said = f"{len(missing)} of {len(images)} images have no NAME.txt caption ({few(missing)})"
        if empty and missing:
            said += f", {len(empty)} an empty one ({few(empty)})"
        elif empty:
            said = f"{len(empty)} of {len(images)} images have an empty NAME.txt caption ({few(empty)})"
        notes.append(f"{said}: [filewords] stays empty in their prompts")
    return notes


def _uncaptioned(folder: Path, images: list[TrainImage]) -> tuple[list[str], list[str]]:
    """The names of the images without a NAME.txt, and of the NAME.txt files that are empty."""
    text_files = caption_files(folder)
    missing, empty = [], []
    for image in images:
        if image.caption:
            continue
        if files := text_files.get(image.path.with_suffix(".txt").name.lower()):
            empty.append(files[0].name)
        else:
            missing.append(image.path.name)
    return missing, empty


def _folder_notes(folder: Path) -> list[str]:
    """Files beside the images that are not read: images in subfolders, kohya's and BLIP's .caption files."""
    notes = []
    if subfolders := image_subfolders(folder):
        count = sum(n for _name, n in subfolders)
        shown = few([f"{name}/" for name, _count in subfolders])
        notes.append(
            f"{count} image(s) in the subfolders {shown} are not trained on (subfolders are not searched); "
            f"move them up into {folder} to train on them"
        )
    ignored = sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix.lower() == IGNORED_CAPTION_SUFFIX and not p.name.startswith(".")
    )
    if ignored:
        notes.append(
            f"found {len(ignored)} .caption file(s) ({few(ignored)}), but only NAME.txt captions are read; "
            "rename them to NAME.txt to train with them"
        )
    return notes


def _size_notes(images: list[TrainImage], crop: str) -> list[str]:
    """Photos past PIL's size warning (read, then kept downscaled), and panoramas a bucket crops."""
    notes = []
    limit = Image.MAX_IMAGE_PIXELS
    if large := [item for item in images if limit and item.size[0] * item.size[1] > limit]:
        shown = few([f"{item.path.name} ({_pixel_count(item.size[0] * item.size[1])})" for item in large])
        notes.append(
            f"{shown}: larger than {_pixel_count(limit)}; read, then kept downscaled to what training needs "
            "(a copy a few thousand pixels a side loads faster)"
        )
    if crop == "bucket" and (wide := [item.path.name for item in images if _aspect(item.size) > MAX_ASPECT]):
        notes.append(
            f"{len(wide)} image(s) are wider or taller than {MAX_ASPECT:g}:1 ({few(wide)}): their buckets "
            f"are {MAX_ASPECT:g}:1 (or 1:{MAX_ASPECT:g}), and the image is cropped to it at the centre"
        )
    return notes


def _pixel_count(count: int) -> str:
    return f"{count / 1e6:.0f} megapixels" if count >= 10**6 else f"{count} pixels"


def _aspect(size: tuple[int, int]) -> float:
    """How elongated a (width, height) is, 1 for a square: 4 for 400x100 and for 100x400."""
    return max(size) / min(size)
