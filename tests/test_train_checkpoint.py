"""Checkpoints and the run folder: exact round trips, atomic writes, the newest complete checkpoint wins."""

import json

import pytest
import torch

from embeddings.errors import TokensmithError
from trainers import checkpoint
from trainers.runfolder import RunFolder, progress_line


def _trained_optimizer():
    """A parameter and its Accelerate-prepared AdamW after three steps."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    param = torch.nn.Parameter(torch.randn(2, 8))
    optimizer = accelerator.prepare(torch.optim.AdamW([param], lr=0.02))
    for _ in range(3):
        param.grad = torch.randn(2, 8)
        optimizer.step()
    return param, optimizer, accelerator


def test_checkpoint_round_trip_restores_rows_and_adamw_state_exactly(tmp_path):
    param, optimizer, accelerator = _trained_optimizer()
    saved = checkpoint.Checkpoint(7, {"0": param.detach()}, {"history": [1.0]}, {"steps": 40, "seed": 3})
    folder = checkpoint.save(tmp_path / "step-000007", saved, accelerator)
    assert {"optimizer.bin", "random_states_0.pkl", "state.safetensors", "state.json"} <= {
        p.name for p in folder.iterdir()
    }  # Accelerate's save_state files beside ours
    expected_rng = torch.get_rng_state()
    torch.rand(5)  # move the global RNG on: load_state puts it back
    fresh_param, fresh_opt, fresh_acc = _trained_optimizer()
    for group in fresh_opt.param_groups:
        group["lr"] = 0.5
    loaded = checkpoint.load(folder, fresh_acc)
    assert (loaded.step, loaded.config, loaded.stopper) == (7, {"steps": 40, "seed": 3}, {"history": [1.0]})
    assert torch.equal(loaded.rows["0"], param.detach())
    assert torch.equal(torch.get_rng_state(), expected_rng)
    with torch.no_grad():
        fresh_param.copy_(loaded.rows["0"])
    grad = torch.randn(2, 8)
    param.grad, fresh_param.grad = grad.clone(), grad.clone()
    optimizer.step()
    fresh_opt.step()
    assert torch.equal(
        param, fresh_param
    )  # AdamW's moments, step count and lr restored: bit-identical update


def test_unreadable_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    param, _, accelerator = _trained_optimizer()
    (tmp_path / "broken").mkdir()
    with pytest.raises(TokensmithError, match="unreadable"):
        checkpoint.load(tmp_path / "broken", accelerator)
    folder = checkpoint.save(tmp_path / "ok", checkpoint.Checkpoint(1, {"0": param}, {}, {}), accelerator)
    meta = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(TokensmithError, match="not a tokensmith training checkpoint"):
        checkpoint.load(folder, accelerator)
    (folder / "state.json").write_text(json.dumps(meta))
    (folder / "optimizer.bin").write_bytes(b"truncated")
    with pytest.raises(TokensmithError, match="could not be restored"):
        checkpoint.load(folder, accelerator)


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_with_a_code_running_pickle_is_refused_and_runs_nothing(tmp_path):
    param, _, accelerator = _trained_optimizer()
    folder = checkpoint.save(
        tmp_path / "step-000001", checkpoint.Checkpoint(1, {"0": param}, {}, {}), accelerator
    )
    marker = tmp_path / "pwned"
    original = (folder / "optimizer.bin").read_bytes()
    torch.save({"state": _Payload(marker)}, folder / "optimizer.bin")
    with pytest.raises(TokensmithError, match="anything but tensors"):
        checkpoint.load(folder, accelerator)
    assert not marker.exists()
    (folder / "optimizer.bin").write_bytes(original)
    # Accelerate skips an RNG file it cannot read (with weights_only): no code runs, and resume stays exact
    # because every random draw of a step comes from its own seeded generator.
    torch.save({"random_state": _Payload(marker)}, folder / "random_states_0.pkl")
    checkpoint.load(folder, accelerator)
    assert not marker.exists()
    checkpoint.load(folder, accelerator)  # restored files load again


def test_latest_checkpoint_ignores_half_written_ones_and_prune_keeps_two(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create(resume=False)
    for step in (5, 10, 15):
        run.checkpoint_dir(step).mkdir()
    (run.checkpoints / ".step-000020.tmp-123").mkdir()  # a kill during a save leaves this
    assert run.latest_checkpoint() == run.checkpoint_dir(15)
    run.prune_checkpoints(keep=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-000010", "step-000015"]


def test_progress_log_skips_torn_lines_and_truncates_on_resume(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create(resume=False)
    for step in range(4):
        run.log({"step": step, "loss": float("nan") if step == 2 else 0.5})
    with open(run.progress_path, "a") as handle:
        handle.write('{"step": 4, "lo')  # a SIGKILL mid-write
    records = run.read_progress()
    assert [r["step"] for r in records] == [0, 1, 2, 3] and records[2]["loss"] is None
    run.truncate_progress_after(1)
    assert [r["step"] for r in run.read_progress()] == [0, 1]
    with pytest.raises(TokensmithError, match="--resume"):
        RunFolder(tmp_path / "run").create(resume=False)


def test_a_progress_record_reads_as_one_line():
    assert progress_line(25, 150, loss=0.28584, val_loss=0.29331, metric=20.3112, eta=31.4) == (
        "step 25/150 · loss 0.2858 · val 0.2933 · metric 20.31 · ETA 31 s"
    )
    assert progress_line(0, 150, val_loss=0.45) == "step 0/150 · val 0.4500"
    assert progress_line(150, 150, loss=0.2, elapsed=95.2) == "step 150/150 · loss 0.2000 · 95 s"
    assert progress_line(3, None) == "step 3"
