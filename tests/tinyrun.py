"""Helpers for tests that train on a tiny random pipeline: square images, the model, a quick config."""

from pathlib import Path

from PIL import Image

from trainers import TrainConfig
from trainers.models import LoadedModel, detect_family
from trainers.tiny import tiny_pipeline


def square_images(folder: Path, count: int = 3) -> Path:
    """`count` 16 px images of a reddish square on dark gray, each a little different."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (16, 16), (40, 40, 40))
        image.paste((220, 40 * i, 30), (4, 4, 12, 12))
        image.save(folder / f"{i}.png")
    return folder


def tiny_model(family: str) -> LoadedModel:
    pipe = tiny_pipeline(family)
    return LoadedModel(pipe=pipe, family=detect_family(pipe), source=f"tiny-{family}")


def quick_config(images: Path, folder: Path | str, **changes) -> TrainConfig:
    """6 steps at batch 2 with a one-image, two-step preview: seconds on a CPU (`changes` win)."""
    values = dict(
        images=str(images),
        name="thing",
        steps=6,
        batch_size=2,
        validate_every=3,
        save_every=3,
        preview_images=1,
        preview_steps=2,
        run_dir=str(folder),
        init="a",
    )
    return TrainConfig(**{**values, **changes})
