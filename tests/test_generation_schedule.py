"""studio/generation/schedule.py: schedulers by name, ᾱ/σ curves, visited timesteps, the plot."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from embeddings.errors import TokensmithError
from studio.cli_options import DEFAULT_SCHEDULER as CLI_DEFAULT
from studio.cli_options import SCHEDULERS as CLI_NAMES
from studio.generation.schedule import (
    DEFAULT_SCHEDULER,
    SCHEDULERS,
    make_scheduler,
    plot_schedule,
    schedule_curves,
)
from trainers.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def config():
    return tiny_pipeline("sd1").scheduler.config


def test_cli_lists_the_same_schedulers():
    assert sorted(CLI_NAMES) == sorted(SCHEDULERS) and CLI_DEFAULT == DEFAULT_SCHEDULER


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_keeps_the_models_betas(config, name):
    scheduler = make_scheduler(name, config)
    assert torch.allclose(scheduler.alphas_cumprod, make_scheduler("ddim", config).alphas_cumprod)


def test_unknown_scheduler_lists_the_known(config):
    with pytest.raises(TokensmithError, match="choose one of dpm, ddim"):
        make_scheduler("k_lms_turbo", config)


def test_curves_are_the_textbook_quantities(config):
    curves = schedule_curves(make_scheduler("ddim", config), 10)
    ab = curves.alphas_cumprod
    assert len(ab) == 1000 and (ab[1:] < ab[:-1]).all()  # signal only ever decreases
    assert torch.allclose(curves.sigmas**2 + ab, torch.ones_like(ab))  # ᾱ + σ² = 1
    assert len(curves.visited) == 10 and curves.visited == sorted(curves.visited, reverse=True)
    row = curves.table()[0]
    assert row["alpha_bar"] == pytest.approx(float(ab[row["timestep"]]))
    assert row["k_sigma"] == pytest.approx((1 - row["alpha_bar"]) ** 0.5 / row["alpha_bar"] ** 0.5)


def test_plot_is_written_as_a_png(config, tmp_path):
    curves = schedule_curves(make_scheduler("euler", config), 8)
    out = plot_schedule(curves, tmp_path / "sub" / "schedule.png", title="tiny")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 600
    assert [p.name for p in out.parent.iterdir()] == ["schedule.png"]  # no temp file left behind


def test_a_plot_that_fails_midway_leaves_the_earlier_file_and_no_temp(config, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    out = tmp_path / "schedule.png"
    out.write_bytes(b"the earlier plot")

    def half_then_fail(self, target, **kwargs):
        Path(target).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with pytest.raises(OSError):
        plot_schedule(schedule_curves(make_scheduler("euler", config), 4), out, title="tiny")
    assert out.read_bytes() == b"the earlier plot"
    assert [p.name for p in tmp_path.iterdir()] == ["schedule.png"]  # the temp file is gone


def test_heun_lists_each_step_once_with_the_timesteps_it_evaluates(config):
    curves = schedule_curves(make_scheduler("heun", config), 5)
    assert curves.visited == [999, 749, 500, 250, 0]
    assert curves.evaluated == [[999, 749], [749, 500], [500, 250], [250, 0], [0]]
    assert curves.evaluations == 9 and len(curves.table()) == 5
    assert "5 sampling steps take 9 model evaluations" in curves.explanation()


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_shows_one_row_per_step(config, name):
    scheduler = make_scheduler(name, config)
    curves = schedule_curves(scheduler, 6)
    assert len(curves.visited) == len(curves.table()) == 6
    assert curves.evaluations == len(scheduler.timesteps)  # every model evaluation belongs to one step


def test_more_steps_than_training_timesteps_are_refused(config):
    with pytest.raises(TokensmithError, match="at most 1000"):
        schedule_curves(make_scheduler("ddim", config), 5000)
