"""Two processes (torchrun on the CPU, gloo: the same code path as several GPUs) train what one process trains
with twice the gradient accumulation; they write one run folder and one stored file, stop together on a
SIGTERM to the main process, and resume from their shared checkpoint to the same result."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tinyrun import quick_config, square_images, tiny_model
from torch.optim.optimizer import register_optimizer_step_pre_hook

from embeddings import Store
from embeddings.errors import TokensmithError
from studio.cli import build_parser
from studio.cli_train import config_from_args
from trainers import TrainConfig
from trainers.card import model_card
from trainers.commands import to_toml
from trainers.storing import summary
from trainers.tiny import tiny_pipeline
from trainers.trainer import train

ROOT = Path(__file__).resolve().parent.parent
STEPS = 40


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiprocess")
    tiny_pipeline("sd1").save_pretrained(folder / "model")
    square_images(folder / "images", count=4)
    return folder


def _config(base: Path, run_dir: Path, **changes) -> TrainConfig:
    values = dict(
        images=str(base / "images"),
        name="duo",
        model=str(base / "model"),
        steps=STEPS,
        batch_size=1,
        save_every=4,
        validate_every=4,
        preview_images=0,
        seed=5,
        init="a",
        run_dir=str(run_dir),
    )
    return TrainConfig(**{**values, **changes})


def _launch(cfg: TrainConfig, home: Path, *extra: str) -> subprocess.Popen:
    path = Path(cfg.run_dir).with_suffix(".toml")
    path.write_text(to_toml(cfg), encoding="utf-8")
    env = {
        **os.environ,
        "TOKENSMITH_HOME": str(home),
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.Popen(
        [*command, "-m", "trainers", "--config", str(path), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _shell(command: str) -> subprocess.Popen:
    """A printed command, run as a user would paste it (the venv's scripts first on the PATH)."""
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    return subprocess.Popen(
        ["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen, timeout: float = 240.0) -> str:
    _, err = proc.communicate(timeout=timeout)
    return err


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(base):
    """The reference: one process, batch 1, gradients of 2 micro-batches accumulated per step."""
    home = base / "home-one"
    emb = train(_config(base, base / "run-one", grad_accum=2), home=home)
    return emb, _records(base / "run-one")


def test_two_processes_stop_together_resume_and_train_what_one_process_accumulates(base, one_process):
    home, run = base / "home-two", base / "run-two"
    cfg = _config(base, run)

    # 1. SIGTERM to the main process (what the studio's Cancel does) mid-run: both stop at the same step.
    proc = _launch(cfg, home)
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "step-000004").is_dir():
        assert proc.poll() is None, _finish(proc)[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(int((run / "pid").read_text()), signal.SIGTERM)
    err = _finish(proc)
    last = _records(run)[-1]
    assert last["event"] == "stopped", err[-3000:]
    stopped_at = last["step"]
    assert 4 <= stopped_at < STEPS, "the stop came too late to test a resume; the run finished first"
    assert err.count(f"stopped at step {stopped_at}") == 1, "the main process alone says so"
    assert not Store.for_home(home).exists("duo")
    # both processes' RNG states are in the checkpoint
    newest = max((run / "checkpoints").iterdir())
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in newest.iterdir()}

    # 2. One process cannot continue two processes' run: its steps would be half the size. The advice is the
    # launch that can: on a CPU the README's torchrun recipe (Accelerate's launcher would start one process
    # and be refused again), with the run's home.
    with pytest.raises(TokensmithError, match="made by 2 process") as refused:
        train(cfg.replace(resume=True), home=home)
    advice = str(refused.value).split("Resume with the same number of processes: ")[1]
    recipe = "ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 -m trainers --config"
    assert advice == f"{recipe} {run / 'config.toml'} --home {home} --resume"

    # 3. Resume with both processes, by that very command: one report, one run log, one stored file.
    resumed = _shell(advice)
    err = _finish(resumed)
    assert resumed.returncode == 0, err[-3000:]
    assert err.count("run folder:") == 1 and err.count("learned <duo>") == 1, "only the main process reports"
    result = Store.for_home(home).get("duo")
    assert summary(result)["end"] == "finished"
    assert Store.for_home(home).names() == ["duo"]
    records = _records(run)
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == list(range(STEPS + 1)), "each step is logged once, by the main process"
    assert [r["event"] for r in records if "event" in r] == ["done"]

    # 4. The same embedding, losses and validation losses as one process with 2 accumulated micro-batches:
    # what the run's printed single-process command runs, and what its stored file and card record.
    reference, reference_records = one_process
    single = (run / "command.txt").read_text().splitlines()[0]
    alone = config_from_args(build_parser().parse_args(shlex.split(single)[1:]))
    assert alone.grad_accum == 2 and alone.batch_size == 1
    assert {**alone.to_dict(), "run_dir": ""} == {**summary(reference)["config"], "run_dir": ""}
    assert summary(result)["processes"] == 2 and summary(reference)["processes"] == 1
    assert "- processes: 2, each with the batch_size and grad_accum above" in model_card(result, "me/duo")
    difference = (result.vectors["emb_params"] - reference.vectors["emb_params"]).abs().max()
    assert float(difference) <= 1e-6
    for ours, theirs in zip(records, reference_records, strict=True):
        for key in ("loss", "val_loss"):
            if theirs.get(key) is not None:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5), (ours["step"], key)


def _step_gradients(cfg: TrainConfig, home: Path) -> list[torch.Tensor]:
    """The new rows' gradient as each optimizer step sees it."""
    seen = []

    def record(optimizer, args, kwargs):
        seen.append(optimizer.param_groups[0]["params"][0].grad.detach().clone())

    hook = register_optimizer_step_pre_hook(record)
    try:
        train(cfg, home=home, model=tiny_model("sd1"))
    finally:
        hook.remove()
    return seen


def test_accumulated_gradient_is_the_mean_of_the_micro_batch_gradients(tmp_path):
    """grad_accum = 2 steps on the mean of two micro-batches' gradients (not on half of it, as it would if
    Accelerate divided the loss again). With a learning rate too small to move the rows, two plain steps see
    the gradients of the same two micro-batches at the same rows."""
    images = square_images(tmp_path / "images", count=4)
    quiet = dict(batch_size=1, learning_rate=1e-30, weight_decay=0.0, validate_every=0, save_every=0)
    quiet.update(preview_images=0, early_stopping=False)
    plain = _step_gradients(quick_config(images, tmp_path / "plain", steps=2, **quiet), tmp_path / "a")
    accumulated = _step_gradients(
        quick_config(images, tmp_path / "accum", steps=1, grad_accum=2, **quiet), tmp_path / "b"
    )
    assert len(plain) == 2 and len(accumulated) == 1
    assert float(plain[0].sub(plain[1]).abs().max()) > 0, (
        "two micro-batches with the same gradient test nothing"
    )
    torch.testing.assert_close(accumulated[0], (plain[0] + plain[1]) / 2, rtol=1e-5, atol=1e-8)
