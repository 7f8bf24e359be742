"""Resumable checkpoints: Accelerate's `save_state` for the optimizer, loss scaler and RNG, plus our rows.

A checkpoint folder holds what `Accelerator.save_state` writes (`optimizer.bin`, `random_states_N.pkl`, and
`scaler.pt` under fp16) and two files of ours: `state.safetensors` (the new rows per encoder) and
`state.json` (step, early-stopper state, the config values that decide what the run computes). Accelerate's
loader reads its files with `torch.load(weights_only=True)` (numpy's RNG types allow-listed), so a checkpoint
someone hands you cannot run code; we register no custom objects, the one path Accelerate unpickles in full.
Resuming is exact even without the RNG files: every random draw of a step comes from a generator seeded by
(seed, micro-step), and learning rates are a pure function of the step.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from embeddings.errors import TokensmithError, first_line
from trainers.writes import writing

FORMAT = "tokensmith-train-checkpoint/3"  # /3: the config's values instead of a hash of them
ROWS_FILE, META_FILE = "state.safetensors", "state.json"  # ours, beside Accelerate's files


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed run needs besides Accelerate's state: the completed step, rows and stopper state."""

    step: int
    rows: dict[str, torch.Tensor]  # key -> (n, D)
    stopper: dict
    config: dict  # the run's config values that decide what it computes: a resume is compared key by key


def save(folder: Path, ckpt: Checkpoint, accelerator) -> Path:
    """Write Accelerate's state and ours into a temp folder, fsync, then rename it into place.

    Every process calls this (Accelerate writes one RNG file per process); the main one writes our files and
    renames. A kill at any moment leaves either the previous checkpoints or a `.tmp` folder that is ignored.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    main = accelerator.is_main_process
    # a failed write (a full disk) removes the half-written folder: it would only take more of the space
    with writing(f"the checkpoint of step {ckpt.step}", folder, temp=tmp if main else None):
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if main:
            rows = {f"rows.{key}": value.detach().cpu().contiguous() for key, value in ckpt.rows.items()}
            save_file(rows, str(tmp / ROWS_FILE))
            meta = {"format": FORMAT, "step": ckpt.step, "stopper": ckpt.stopper, "config": ckpt.config}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            for path in tmp.iterdir():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
    accelerator.wait_for_everyone()
    return folder


def read_meta(folder: Path) -> dict:
    """`state.json` of a checkpoint (step, stopper, config), checked for this version's format."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokensmithError(
            f"checkpoint {folder} is unreadable ({exc}); delete it to resume from the one before"
        ) from None
    if meta.get("format") != FORMAT:
        raise TokensmithError(
            f"{folder} is not a tokensmith training checkpoint this version reads ({meta.get('format')!r}); "
            "start the run again without --resume"
        )
    return meta


def load(folder: Path, accelerator) -> Checkpoint:
    """Read our files, then restore the accelerator's prepared optimizer (and scaler, RNG) from the folder."""
    folder = Path(folder)
    meta = read_meta(folder)
    try:
        tensors = load_file(str(folder / ROWS_FILE))
    except (OSError, ValueError) as exc:
        raise TokensmithError(
            f"checkpoint {folder} is unreadable ({exc}); delete it to resume from the one before"
        ) from None
    try:
        accelerator.load_state(str(folder))
    except Exception as exc:  # a pickle refused by weights_only, a missing or truncated file
        reason = f"{type(exc).__name__}: {first_line(exc)[:200]}"
        raise TokensmithError(
            f"checkpoint {folder} could not be restored ({reason}); files holding anything but tensors are "
            "refused. Delete the folder to resume from the one before"
        ) from None
    rows = {key[len("rows.") :]: value for key, value in tensors.items() if key.startswith("rows.")}
    return Checkpoint(
        step=int(meta["step"]),
        rows=rows,
        stopper=meta.get("stopper", {}),
        config=meta.get("config", {}),
    )
