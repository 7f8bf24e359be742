"""The trainer's advanced options where a review found them wrong: gradient checkpointing on a resume (and
the out-of-memory advice a resume gets), min-SNR at zero terminal SNR, a launcher's own precision and
accumulation, the stop line under several processes, the earliest early stop, and A1111's `rate:-1`."""

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from embeddings import Embedding
from studio.cli import main
from trainers.config import TrainConfig
from trainers.tiny import tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent


# --- 1: gradient checkpointing may change on a resume ---


def test_a_resume_may_turn_gradient_checkpointing_on_or_off_also_from_an_older_checkpoint():
    from trainers.resume import computed_values, config_changes

    cfg = TrainConfig(name="kitty")
    assert "gradient_checkpointing" not in computed_values(cfg), "it computes the same numbers"
    assert config_changes(computed_values(cfg), cfg.replace(gradient_checkpointing=True)) == []
    older = {**computed_values(cfg), "gradient_checkpointing": False}  # a checkpoint written before the fix
    assert config_changes(older, cfg.replace(gradient_checkpointing=True)) == []
    assert config_changes(older, cfg.replace(mixed_precision="bf16")) == ["mixed_precision: 'no' -> 'bf16'"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("options-review")
    tiny_pipeline("sd1").save_pretrained(base / "model")
    (base / "images").mkdir()
    for i in range(3):
        image = Image.new("RGB", (16, 16), (30, 30, 30))
        image.paste((230, 70 * i, 40), (3, 3, 13, 13))
        image.save(base / "images" / f"{i}.png")
    return base


def test_a_stopped_run_resumes_with_gradient_checkpointing_added(world, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    home, run = str(tmp_path / "home"), tmp_path / "run"
    quick = ["--save-every", "2", "--validate-every", "2", "--batch-size", "1", "--preview-images", "0"]
    args = ["train", "--images", str(world / "images"), "--model", str(world / "model"), "--name", "gc"]
    args += [*quick, "--init", "a", "--run-dir", str(run), "--home", home]
    assert main([*args, "--steps", "2"]) == 0
    further = ["train", "--run-dir", str(run), "--resume", "--overwrite", "--home", home, "--steps", "4"]
    assert main([*further, "--gradient-checkpointing"]) == 0
    done = json.loads((run / "progress.jsonl").read_text().splitlines()[-1])
    assert (done["event"], done["steps"]) == ("done", 4)


def _oom(cfg: TrainConfig) -> str:
    from trainers.memory import out_of_memory_advice

    return str(out_of_memory_advice(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), cfg))


def test_out_of_memory_advice_for_a_resume_names_only_what_a_resume_accepts():
    resumed = TrainConfig(name="kitty", resume=True, batch_size=2, preview_images=0)
    advice = _oom(resumed)
    assert "; resume with --gradient-checkpointing (a resume accepts it)" in advice
    assert (
        "; a new run (--run-dir NEW_DIR) may also use --batch-size 1 --grad-accum 2 (the same batch), "
        in advice
    )
    assert "--mixed-precision bf16 (or fp16 on GPUs without bf16) (a resume refuses them" in advice
    assert "try" not in advice
    checkpointed = resumed.replace(gradient_checkpointing=True, mixed_precision="bf16", batch_size=1)
    assert _oom(checkpointed).endswith(
        "; use a larger GPU, or start a new run with a smaller --resolution (--run-dir NEW_DIR)"
    )
    # a new run is told every setting, as before
    assert _oom(resumed.replace(resume=False)).endswith(
        "; try --batch-size 1 --grad-accum 2 (the same batch), --gradient-checkpointing, "
        "--mixed-precision bf16 (or fp16 on GPUs without bf16)"
    )


# --- 5: min-SNR at a timestep whose SNR is 0 ---


@pytest.mark.parametrize(("prediction", "at_zero"), [("epsilon", 1.0), ("v_prediction", 0.0)])
def test_min_snr_weights_are_their_limit_at_zero_terminal_snr(prediction, at_zero):
    from diffusers import DDPMScheduler

    from trainers.loop import DiffusionMath

    scheduler = DDPMScheduler(rescale_betas_zero_snr=True, prediction_type=prediction)
    maths = DiffusionMath.from_scheduler(scheduler)
    assert maths.alphas_cumprod[-1] == 0  # the last timestep is pure noise: SNR 0
    t = torch.arange(maths.num_timesteps)  # (T,)
    weights = maths.min_snr_weights(t, 5.0)  # (T,)
    assert weights[-1].item() == at_zero
    ab = maths.alphas_cumprod  # elsewhere: Hang et al.'s formula, bit for bit (a resume replays it exactly)
    snr = ab[:-1] / (1 - ab[:-1])
    hang = snr.clamp(max=5.0) / (snr if prediction == "epsilon" else snr + 1)
    assert torch.equal(weights[:-1], hang)


# --- 2: a launcher's precision and accumulation ---


def test_the_accelerator_never_divides_gradients_by_a_launchers_accumulation(monkeypatch):
    from accelerate.state import AcceleratorState

    from trainers.processes import accelerator_for

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        accelerator = accelerator_for(mixed_precision="no", trackers=[], project_dir="unused")
        assert (accelerator.gradient_accumulation_steps, accelerator.mixed_precision) == (1, "no")
        w = torch.nn.Parameter(torch.ones(1))
        accelerator.backward((w * 2).sum())
        assert w.grad.item() == 2.0  # not 0.5: the loop divides by grad_accum itself
    finally:
        AcceleratorState._reset_state(reset_partial_state=False)


def test_a_launchers_precision_or_accumulation_unlike_the_configs_gets_a_note(monkeypatch):
    from trainers.processes import launcher_notes

    assert launcher_notes(mixed_precision="no", grad_accum=1) == []  # a plain run
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` sets unless told
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    assert launcher_notes(mixed_precision="bf16", grad_accum=4) == []
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    assert launcher_notes(mixed_precision="bf16", grad_accum=4) == []  # the same: nothing to say
    precision, accumulation = launcher_notes(mixed_precision="no", grad_accum=1)
    assert precision.startswith("the launcher's mixed precision bf16 (accelerate launch --mixed_precision")
    assert 'is not used: this run trains with its config\'s mixed_precision = "no"' in precision
    assert 'set mixed_precision = "bf16" there' in precision
    assert accumulation.startswith("the launcher's gradient accumulation (4 steps")
    assert "set grad_accum = 4 there (--grad-accum 4 for tokensmith train)" in accumulation


# --- 6: the stop line under several processes ---


@pytest.mark.parametrize(("rank", "lines"), [("0", 1), ("1", 0)])
def test_only_the_main_process_says_the_run_stopped(rank, lines, tmp_path, monkeypatch, capsys):
    import trainers.trainer
    from trainers.__main__ import main as trainers_main
    from trainers.trainer import RunStopped

    config = tmp_path / "run.toml"
    config.write_text('name = "cat"\n')

    def stopped(cfg, *, home, on_progress, echo):
        trainer = {"end": "stopped", "trained_steps": 15, "config": {"run_dir": "run"}}
        meta = {"trainer": json.dumps(trainer), "steps": "15"}
        return Embedding(cfg.name, {"emb_params": torch.zeros(1, 8)}, meta)

    def stopped_preparing(cfg, *, home, on_progress, echo):
        raise RunStopped("stopped while preparing; --resume starts it again")

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(trainers.trainer, "train", stopped)
    assert trainers_main(["--config", str(config)]) == 1
    stop = "python -m trainers: stopped at step 15; continue with: tokensmith train --run-dir run"  # as train
    said = capsys.readouterr().err.count(stop)
    assert said == lines
    monkeypatch.setattr(trainers.trainer, "train", stopped_preparing)
    assert trainers_main(["--config", str(config)]) == 1
    assert capsys.readouterr().err.count("python -m trainers: stopped while preparing") == lines


# --- 3: the earliest early stop ---


def _first_stop(*, validate_every: int, window: int, min_steps: int, steps: int = 1000) -> int | None:
    """The step at which a run whose validation loss falls steadily stops, with a threshold that lets the
    variance test pass as soon as the rule allows it."""
    from trainers.validation import EarlyStopper

    stopper = EarlyStopper(window=window, threshold=1000.0, min_steps=min_steps)
    for step in range(validate_every, steps + 1, validate_every):
        if stopper.update(step, 1.0 / step):
            return step
    return None


@pytest.mark.parametrize(
    ("validate_every", "window", "min_steps", "earliest"),
    [
        (1, 3, 2, 6),  # the review's run: 2 × window validations, not --min-steps
        (10, 6, 60, 120),  # the defaults: --min-steps 60 never binds
        (10, 6, 125, 130),  # --min-steps binds above 2 × window × validate-every, at the next validation
        (4, 2, 0, 16),  # test_train_resume's run that stops early at its 4th check
    ],
)
def test_the_earliest_early_stop_is_the_later_of_min_steps_and_two_windows(
    validate_every, window, min_steps, earliest
):
    assert _first_stop(validate_every=validate_every, window=window, min_steps=min_steps) == earliest


def test_the_readme_states_the_earliest_early_stop_with_the_defaults():
    defaults = TrainConfig()
    earliest = _first_stop(
        validate_every=defaults.validate_every, window=defaults.dvar_window, min_steps=defaults.min_steps
    )
    paragraph = (ROOT / "README.md").read_text().split("**Knowing when it has learned.**")[1].split("\n\n")[0]
    text = " ".join(paragraph.split())
    assert "never before 2 × `--dvar-window` validation losses exist" in text
    assert f"step {earliest} with the defaults" in text


# --- 4: A1111's piecewise strings ---


def test_a1111s_minus_one_holds_the_last_rate_until_the_end():
    from trainers.schedules import ScheduleError, parse_piecewise, schedule_for

    assert parse_piecewise("0.005:100, 1e-3:-1") == [(0.005, 100), (1e-3, None)]
    lr = schedule_for("0.005:100, 1e-3:-1", 0.02, total_steps=3000)
    assert [lr(99), lr(100), lr(2999)] == [0.005, 1e-3, 1e-3]
    with pytest.raises(ScheduleError, match=re.escape("only the last piece may omit its step")):
        parse_piecewise("1e-3:-1, 1e-4")
    with pytest.raises(ScheduleError, match=re.escape("or with A1111's :-1")):
        parse_piecewise("1e-3:-2")
