"""The demo world: a small text-to-image model trained in this repo on synthetic captioned images."""

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "model"

__all__ = ["DEMO_MODEL_DIR"]
