"""The run's steps: a run whose loss stays non-finite fails with advice and stores nothing."""

import pytest
import torch
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Store
from embeddings.errors import TokensmithError
from trainers import steps as steps_module
from trainers import train
from trainers.loop import step_loss
from trainers.runfolder import RunFolder
from trainers.steps import MAX_BAD_LOSSES, count_bad_losses


def test_bad_losses_are_counted_in_a_row_and_fail_the_run_at_the_limit():
    assert count_bad_losses(0.3, 2, step=10) == 0  # a finite loss resets the count
    assert count_bad_losses(float("nan"), 0, step=11) == 1
    assert count_bad_losses(float("inf"), 1, step=12) == 2
    with pytest.raises(TokensmithError, match=r"not finite for 3 steps in a row \(step 13\).*bf16"):
        count_bad_losses(float("nan"), MAX_BAD_LOSSES - 1, step=13)


def test_a_run_whose_loss_is_nan_fails_says_why_and_stores_nothing(tmp_path, monkeypatch):
    def nan_loss(*args, **kwargs):
        return step_loss(*args, **kwargs) * torch.tensor(float("nan"))

    monkeypatch.setattr(steps_module, "step_loss", nan_loss)
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", validate_every=0, early_stopping=False)
    with pytest.raises(TokensmithError, match="not finite for 3 steps in a row"):
        train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))
    assert not Store.for_home(tmp_path / "home").exists("thing")
    *steps, last = RunFolder(tmp_path / "run").read_progress()
    assert last["event"] == "failed" and "not finite" in last["message"]
    assert [record["step"] for record in steps] == [0, 1, 2]  # step 3 failed before it was logged
