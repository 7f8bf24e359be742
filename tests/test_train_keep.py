"""keep = best: the stored embedding is the snapshot whose previews scored best, kept across a resume."""

import json
import os
import signal

import pytest
import torch
from PIL import Image
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Store, load_canonical
from trainers import steps as steps_module
from trainers import train
from trainers.runfolder import RunFolder
from trainers.validation import SHAPE_MISS_COST, DemoJudgeMetric


class ScriptedMetric:
    """Scores previews from a list, one value per preview in order (lower ranks better)."""

    name = "scripted"

    def __init__(self, values):
        self.values = list(values)

    def score(self, images) -> dict:
        return {"metric": self.values.pop(0)}

    def rank(self, scores) -> float:
        return scores["metric"]

    def doubt(self, scores) -> str:
        return "scored above 5" if scores["metric"] > 5 else ""


@pytest.fixture
def images(tmp_path):
    return square_images(tmp_path / "images")


def _model():
    return tiny_model("sd1")


def _config(images, tmp_path, **changes):
    values = dict(name="kept", validate_every=0, save_every=2)
    return quick_config(images, tmp_path / "run", **{**values, **changes})


def _script(monkeypatch, values) -> None:
    metric = ScriptedMetric(values)
    monkeypatch.setattr(steps_module, "preview_metric", lambda *args: metric)


def _snapshot(tmp_path, step: int) -> torch.Tensor:
    return load_canonical(RunFolder(tmp_path / "run").snapshot_path(step)).vectors["emb_params"]


def test_the_best_scored_snapshot_is_stored_with_provenance(images, tmp_path, tokensmith_home, monkeypatch):
    _script(monkeypatch, [9.0, 5.0, 1.0, 7.0])  # previews at steps 0, 2, 4, 6: step 4 is best
    emb = train(_config(images, tmp_path), home=tokensmith_home, model=_model())
    stored = Store.for_home(tokensmith_home).get("kept")
    assert torch.equal(stored.vectors["emb_params"], _snapshot(tmp_path, 4))
    assert not torch.equal(stored.vectors["emb_params"], _snapshot(tmp_path, 6))
    assert torch.equal(emb.vectors["emb_params"], stored.vectors["emb_params"])
    trainer = json.loads(stored.meta["trainer"])
    metrics = json.loads(stored.meta["metrics"])
    assert stored.meta["steps"] == "4" and trainer["trained_steps"] == 6 and trainer["kept"] == "best"
    assert metrics["after"] == {"metric": 1.0} and metrics["last"] == {"metric": 7.0}
    done = RunFolder(tmp_path / "run").read_progress()[-1]
    assert done["event"] == "done" and done["kept"] == 4 and "kept step 4 of 6," in done["message"]
    preview = Store.for_home(tokensmith_home).preview_path("kept")
    with Image.open(preview) as a, Image.open(tmp_path / "run" / "previews" / "step-000004.png") as b:
        assert a.tobytes() == b.tobytes()  # the stored preview shows the kept step


def test_a_stored_step_whose_previews_doubt_the_concept_says_so(
    images, tmp_path, tokensmith_home, monkeypatch
):
    _script(monkeypatch, [9.0, 8.0, 6.0, 7.0])  # the best (step 4, 6.0) still doubts
    train(_config(images, tmp_path), home=tokensmith_home, model=_model())
    stored = Store.for_home(tokensmith_home).get("kept")
    assert json.loads(stored.meta["trainer"])["warning"] == "scored above 5"
    done = RunFolder(tmp_path / "run").read_progress()[-1]
    assert done["warning"] == "scored above 5" and done["message"].endswith("; warning: scored above 5")
    _script(monkeypatch, [9.0, 8.0, 1.0, 7.0])  # the best says learned: no warning anywhere
    train(
        _config(images, tmp_path, name="fine", run_dir=str(tmp_path / "fine")),
        home=tokensmith_home,
        model=_model(),
    )
    assert "warning" not in json.loads(Store.for_home(tokensmith_home).get("fine").meta["trainer"])


def test_keep_last_stores_the_final_step(images, tmp_path, tokensmith_home, monkeypatch):
    _script(monkeypatch, [9.0, 5.0, 1.0, 7.0])
    train(_config(images, tmp_path, keep="last"), home=tokensmith_home, model=_model())
    stored = Store.for_home(tokensmith_home).get("kept")
    assert torch.equal(stored.vectors["emb_params"], _snapshot(tmp_path, 6))
    assert stored.meta["steps"] == "6" and json.loads(stored.meta["trainer"])["kept"] == "last"


def test_without_a_metric_the_last_step_is_stored(images, tmp_path, tokensmith_home):
    train(_config(images, tmp_path), home=tokensmith_home, model=_model())  # tiny SD1: no judge, no CLIP
    stored = Store.for_home(tokensmith_home).get("kept")
    assert torch.equal(stored.vectors["emb_params"], _snapshot(tmp_path, 6))
    assert stored.meta["steps"] == "6"


@pytest.mark.parametrize(("keep", "stored_step"), [("best", 2), ("last", 6)])
def test_the_best_so_far_survives_a_stop_and_resume(
    images, tmp_path, tokensmith_home, monkeypatch, keep, stored_step
):
    _script(monkeypatch, [9.0, 1.0])  # steps 0 and 2; the run is stopped at step 3

    def stop_at_three(record):
        if record.get("step") == 3 and "event" not in record:
            os.kill(os.getpid(), signal.SIGTERM)  # the UI's Cancel: checkpoint, then stop

    train(_config(images, tmp_path), home=tokensmith_home, model=_model(), on_progress=stop_at_three)
    assert not Store.for_home(tokensmith_home).exists("kept")
    _script(monkeypatch, [5.0, 7.0])  # steps 4 and 6 after the resume: worse than step 2
    # keep may change on resume: it picks what is stored, not what is computed
    train(_config(images, tmp_path, resume=True, keep=keep), home=tokensmith_home, model=_model())
    stored = Store.for_home(tokensmith_home).get("kept")
    assert torch.equal(stored.vectors["emb_params"], _snapshot(tmp_path, stored_step))
    assert stored.meta["steps"] == str(stored_step)


def test_the_demo_judge_doubts_a_wrong_shape_or_a_far_colour():
    judge = DemoJudgeMetric(target_rgb=(128.0, 0.0, 128.0), target_shape="triangle")
    assert judge.doubt({"metric": 12.0, "shape_match": 0.75}) == ""
    assert judge.doubt({}) == ""  # previews off
    shape = judge.doubt({"metric": 12.0, "shape_match": 0.25})
    assert shape.startswith(
        "only 25% of the stored step's previews have the training images' shape (triangle)"
    )
    assert "--vectors 4" in shape
    colour = judge.doubt({"metric": 55.0, "shape_match": 1.0})
    assert colour.startswith("the stored step's previews are 55 RGB units off") and "--vectors 4" in colour
    shapeless = DemoJudgeMetric(target_rgb=(128.0, 0.0, 128.0), target_shape=None)
    assert shapeless.doubt({"metric": 12.0, "shape_match": 0.0}) == ""


def test_the_demo_judge_ranks_a_wrong_shape_as_a_colour_distance():
    metric = DemoJudgeMetric(target_rgb=(250.0, 120.0, 190.0), target_shape="star")
    right = metric.rank({"metric": 60.0, "shape_match": 1.0})
    half = metric.rank({"metric": 40.0, "shape_match": 0.5})
    assert right == 60.0 and half == 40.0 + SHAPE_MISS_COST / 2
    shapeless = DemoJudgeMetric(target_rgb=(250.0, 120.0, 190.0), target_shape=None)
    assert shapeless.rank({"metric": 40.0, "shape_match": 0.0}) == 40.0
