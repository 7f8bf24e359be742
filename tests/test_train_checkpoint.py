"""Checkpoints and the run folder: exact round trips, atomic writes, the newest complete checkpoint wins."""

import json

import pytest
import torch

from embeddings.errors import TokensmithError
from trainers import checkpoint
from trainers.runfolder import RunFolder


def _trained_optimizer():
    param = torch.nn.Parameter(torch.randn(2, 8))
    optimizer = torch.optim.AdamW([param], lr=0.02)
    for _ in range(3):
        param.grad = torch.randn(2, 8)
        optimizer.step()
    return param, optimizer


def test_checkpoint_round_trip_restores_rows_and_adamw_state_exactly(tmp_path):
    param, optimizer = _trained_optimizer()
    saved = checkpoint.Checkpoint(7, {"0": param.detach()}, optimizer.state_dict(), {"history": [1.0]}, "abc")
    checkpoint.save(tmp_path / "step-000007", saved)
    loaded = checkpoint.load(tmp_path / "step-000007")
    assert loaded.step == 7 and loaded.fingerprint == "abc" and loaded.stopper == {"history": [1.0]}
    assert torch.equal(loaded.rows["0"], param.detach())
    fresh = torch.nn.Parameter(loaded.rows["0"].clone())
    restored = torch.optim.AdamW([fresh], lr=0.5)
    restored.load_state_dict(loaded.optimizer)
    grad = torch.randn(2, 8)
    param.grad, fresh.grad = grad.clone(), grad.clone()
    optimizer.step()
    restored.step()
    assert torch.equal(param, fresh)  # the next update is bit-identical


def test_unreadable_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(TokensmithError, match="unreadable"):
        checkpoint.load(tmp_path / "broken")
    param, optimizer = _trained_optimizer()
    folder = checkpoint.save(
        tmp_path / "ok", checkpoint.Checkpoint(1, {"0": param}, optimizer.state_dict(), {}, "")
    )
    meta = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(TokensmithError, match="not a tokensmith training checkpoint"):
        checkpoint.load(folder)


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
