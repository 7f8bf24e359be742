"""Image files for the training-data tests: a plain one, and one whose every pixel differs."""

import numpy as np
from PIL import Image


def save_plain(path, size=(32, 32), colour=(200, 30, 40)):
    Image.new("RGB", size, colour).save(path)
    return path


def gradient(size: tuple[int, int]) -> Image.Image:
    """Every pixel differs, so a resize or a crop shows in the samples' pixels."""
    width, height = size
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(
        np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    )
