"""Pins found by mutation testing (round 3) of the training config (its checks, files and flags), the
learning-rate schedules and the training data (images, captions, templates): each test holds one behaviour
that a small change to the code broke while every other test still passed."""

import pytest

from trainers.config import MAX_RESOLUTION, ConfigError, TrainConfig

# --- the config's checks ---


def test_resolution_is_allowed_up_to_the_largest_and_refused_past_it():
    """MAX_RESOLUTION itself is a resolution a run may use; one pixel more is refused."""
    assert TrainConfig(resolution=MAX_RESOLUTION).resolution == MAX_RESOLUTION
    with pytest.raises(ConfigError, match=f"at most {MAX_RESOLUTION}"):
        TrainConfig(resolution=MAX_RESOLUTION + 1)


def test_a_learning_rate_of_zero_is_refused():
    """A rate of 0 would train for every step and learn nothing: refused before any model loads."""
    with pytest.raises(ConfigError, match="learning_rate must be positive, got 0"):
        TrainConfig(learning_rate=0.0)


def test_min_images_below_one_is_refused():
    """min_images = 0 would let an empty folder through to a run with nothing to learn from."""
    with pytest.raises(ConfigError, match="min_images must be at least 1, got 0"):
        TrainConfig(min_images=0)


def test_a_template_file_may_end_in_upper_case_txt():
    """A template file saved as 'MY.TXT' (a tool that upper-cases names) is a template file, not an
    unknown template set."""
    assert TrainConfig(templates="/prompts/MY.TXT").templates == "/prompts/MY.TXT"
    with pytest.raises(ConfigError, match=r"use object, style, captions, or a path to a \.txt"):
        TrainConfig(templates="/prompts/my.text")


# --- config files and flags ---


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("YES", True), ("1", True), ("no", False)])
def test_a_switch_given_as_text_reads_yes_and_no(text, value):
    """A switch written as text ('flip = "yes"' in a file, a form's value) reads yes/no like true/false."""
    from trainers.configfile import coerce

    assert coerce("flip", text) is value
    with pytest.raises(ConfigError, match="flip must be true or false"):
        coerce("flip", "maybe")


def test_a_list_key_given_as_text_is_split_and_trimmed():
    """trackers = "tensorboard, wandb" (or a list with blank items) is the two tracker names, so the
    space after the comma is not part of a name the check then refuses."""
    from trainers.configfile import from_mapping

    assert from_mapping({"trackers": "tensorboard, wandb"}).trackers == ["tensorboard", "wandb"]
    assert from_mapping({"trackers": [" wandb ", "", "  "]}).trackers == ["wandb"]


def test_a_config_file_saved_with_a_byte_order_mark_reads(tmp_path):
    """Windows editors start UTF-8 files with a byte-order mark; the file still reads as its keys."""
    from trainers.configfile import load

    path = tmp_path / "run.toml"
    path.write_bytes("\ufeffsteps = 7\nname = 'cat'\n".encode())
    cfg = load(path)
    assert (cfg.steps, cfg.name) == (7, "cat")


# --- learning-rate schedules ---


def test_a_piecewise_step_repeated_is_refused():
    """'0.005:100, 1e-3:100': the second rate would hold for no step at all; steps must increase."""
    from trainers.schedules import ScheduleError, parse_piecewise

    with pytest.raises(ScheduleError, match="must increase"):
        parse_piecewise("0.005:100, 1e-3:100")
    assert parse_piecewise("0.005:100, 1e-3:101") == [(0.005, 100), (1e-3, 101)]
