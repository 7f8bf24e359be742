"""bench/train_speed.py times the trainer itself: `trainers.train` runs the steps it reports, a floor step is
timed between every two of them, and the ratios it prints come from those times."""

import importlib.util
import math
from pathlib import Path

import pytest

from embeddings.store import Store
from tests.tinyrun import tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "bench" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_steps_times_the_trainers_own_steps_with_a_floor_between_each(train_speed, tmp_path):
    model = tiny_model("sd1")
    images = train_speed.write_images(tmp_path / "images", model.resolution)
    calls = []
    times, attention = train_speed.trainer_steps(
        model, 2, images, tmp_path / "home", steps=3, warmup=1, between=lambda: calls.append(1)
    )
    assert len(times) == 3 and len(calls) == 3
    assert all(t > 0 for t in times)
    assert attention == "eager"  # the trainer's choice on a CPU, read from its step-0 record
    # it really trained: the embedding is in the bench's store
    assert Store.for_home(tmp_path / "home").get("speed-bs2").vectors["emb_params"].shape[0] >= 1


def test_measure_gives_the_ratio_over_the_floor_and_the_speed_up(train_speed, tmp_path, capsys):
    model = tiny_model("sd1")
    images = train_speed.write_images(tmp_path / "images", model.resolution)
    ratio, speedup = train_speed.measure("tiny", lambda: model, 1, images, steps=3, warmup=1)
    assert math.isfinite(ratio) and ratio > 0
    assert math.isfinite(speedup) and speedup > 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("tiny bs1: floor ") and "tokensmith" in line and "diffusers-style" in line
