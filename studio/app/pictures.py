"""Small images as the pages draw them: a browser enlarges a 32 px image by smoothing it into a blur, so the
pages enlarge it first, by a whole number with nearest-neighbour, as the grids and trace strips
(studio.generation.grid) already are; the same picture then looks as sharp on every page."""

from __future__ import annotations

from PIL import Image


def enlarged(image: Image.Image, at_most: int = 384) -> Image.Image:
    """`image` scaled up by the largest whole number that keeps both sides within `at_most` px, each pixel
    a square block (nearest-neighbour); an image already that large or larger comes back as it is:
    32×32, at_most=384 -> 384×384; 48×32 -> 384×256; 512×512 -> 512×512."""
    scale = at_most // max(image.size)
    if scale <= 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def first_tile(image: Image.Image) -> Image.Image:
    """The first square picture of a strip of them laid side by side (a preview strip of 8 samples,
    256×32 -> the left 32×32); an image no wider than tall is its own first tile."""
    if image.width <= image.height:
        return image
    return image.crop((0, 0, image.height, image.height))
