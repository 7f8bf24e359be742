"""The demo world's training captions: a background that varies across the training images is named, in the
world's own words, so a 2-vector token does not spend itself on it (trainers/steps.py uses them on the demo
world only; a NAME.txt caption always wins). The judge reads each image `as_trained`, as does the preview
metric's target (trainers/validation.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from trainers.data import TrainImage


def as_trained(image: Image.Image) -> Image.Image:
    """What the demo model trains on of a training image, for the judge to read: the trainer's centre crop
    at the demo model's own size (demo.world.RESOLUTION), transparency over the world's gray. A run at
    another --resolution or --crop is judged from this crop too: the judge reads a background and a colour,
    which a crop's size and place hardly change.

    The judge reads a picture's border as its background, and a photo's border is not the crop's; and read
    at full size, a 6000 px photo cost it minutes and GB (its templates are rendered at the side it reads)."""
    from demo.world import RESOLUTION
    from trainers.pictures import flatten_alpha
    from trainers.samples import cover_and_crop

    cropped, _ = cover_and_crop(image, (RESOLUTION, RESOLUTION), (0.5, 0.5))  # as build_samples' centre crop
    return flatten_alpha(cropped)  # on the gray _to_tensors composites onto


def _judged_backgrounds(images: list[TrainImage]) -> list[str]:
    """The demo judge's background of each image as it is trained (as_trained), or [] when every image has a
    NAME.txt caption, which wins over anything the pixels say."""
    from demo.judge import judge

    if all(item.caption for item in images):
        return []
    return [judge(as_trained(item.image)).background for item in images]


def world_captions(images: list[TrainImage]) -> list[str]:
    """The demo world's training captions: an image's NAME.txt caption, else, when the images' backgrounds
    are not all the same, its background in the world's own words ('on a blue background'; none for the
    default gray, which the world's captions leave out too).

    A background that varies is not part of the concept, but with no word for it a 2-vector token has to
    hold each image's background besides its colour and shape, and drops the shape (measured: green crosses
    on blue, white, yellow and black came out as other shapes on gray, 0/8 crosses; captioned, 8/8). One
    shared background may be part of the concept, so such a set keeps its captions as they are. Derived
    from the pixels of the centre crop that trains (as_trained), so a resumed run computes the same
    prompts.
    """
    return _captions(images, _judged_backgrounds(images))


def _captions(images: list[TrainImage], names: list[str]) -> list[str]:
    """world_captions, given the images' judged background `names` (judging is the costly part)."""
    from demo.world import DEFAULT_BACKGROUND

    if len(set(names)) < 2:
        return [image.caption for image in images]
    return [
        image.caption or ("" if name == DEFAULT_BACKGROUND else f"on a {name} background")
        for image, name in zip(images, names, strict=True)
    ]


def background_note(images: list[TrainImage]) -> str:
    """What world_captions adds to a demo-world run's images ('' when it adds nothing)."""
    judged = _judged_backgrounds(images)  # once: each image goes through the judge
    captions = zip(images, _captions(images, judged), strict=True)
    added = [caption for image, caption in captions if caption != image.caption]
    if not added:
        return ""
    said, seen = ", ".join(dict.fromkeys(added)), ", ".join(dict.fromkeys(judged))
    return (
        f"the backgrounds vary ({seen}): {len(added)} image(s) without a NAME.txt caption are "
        f"captioned with their background ({said}; gray is left unsaid, as in the world's own captions); "
        "write NAME.txt captions to choose otherwise"
    )
