"""bench/train_speed.py times the trainer itself: `trainers.train` runs the steps it reports, a floor step is
timed between every two of them, and the ratios it prints come from those times."""

import pytest

from embeddings.store import Store
from tests.benchload import load_bench
from tests.tinyrun import tiny_model


@pytest.fixture(scope="module")
def train_speed():
    return load_bench("train_speed")


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


def test_measure_gives_the_ratio_over_the_floor_and_the_speed_up(train_speed, tmp_path, capsys, monkeypatch):
    """With known step times the printed numbers are medians and their ratios: floor 10 ms, trainer 12 ms,
    diffusers-style 30 ms (its floor 20 ms, rescaled to the first phase's 10) give 1.2 and 1.25x."""
    model = tiny_model("sd1")
    images = train_speed.write_images(tmp_path / "images", model.resolution)
    phase = {"floor": 0.010}

    def timed(fn, repeats):
        if fn.__name__ == "diffusers_style":
            phase["floor"] = 0.020  # a busier machine in the second phase: rescaled away
            return [0.030] * repeats
        return [phase["floor"]] * repeats

    def trainer_steps(model, batch_size, image_dir, home, steps, warmup, between):
        for _ in range(steps):
            between()
        return [0.012, 0.011, 0.013][:steps], "eager"

    monkeypatch.setattr(train_speed, "timed", timed)
    monkeypatch.setattr(train_speed, "trainer_steps", trainer_steps)
    ratio, speedup = train_speed.measure("tiny", lambda: model, 1, images, steps=3, warmup=1)
    assert ratio == pytest.approx(1.2) and speedup == pytest.approx(1.25)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == (
        "tiny bs1: floor 10.0 ms, tokensmith 12.0 ms, diffusers-style 15.0 ms (text-encoder attention: eager)"
    )
