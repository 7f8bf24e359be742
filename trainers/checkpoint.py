"""Resumable checkpoints: the new rows, AdamW's state and the early stopper, as safetensors + JSON.

Accelerate's `save_state`/`load_state` pickle their custom and RNG state and load it with
`weights_only=False`; a checkpoint folder someone hands you should never run code, so tokensmith writes its
own tensor-only checkpoints. Nothing else is needed to resume exactly: every random draw of a step (batch
order, latent sample, noise, timestep) comes from a generator seeded by (seed, micro-step), and learning
rates are a pure function of the step.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from embeddings.errors import TokensmithError

FORMAT = "tokensmith-train-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed run needs: the completed step, rows per encoder key, optimizer and stopper state."""

    step: int
    rows: dict[str, torch.Tensor]  # key -> (n, D)
    optimizer: dict
    stopper: dict
    fingerprint: str  # the resolved config's identity: resuming a different config is refused


def _optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split torch's optimizer state_dict into flat tensors and JSON-able rest."""
    tensors, per_param = {}, {}
    for index, values in state["state"].items():
        per_param[str(index)] = []
        for name, value in values.items():
            key = f"optim.{index}.{name}"
            tensors[key] = value.detach().cpu().clone() if torch.is_tensor(value) else torch.tensor(value)
            per_param[str(index)].append(name)
    return tensors, {"param_groups": state["param_groups"], "per_param": per_param}


def save(folder: Path, ckpt: Checkpoint) -> Path:
    """Write the checkpoint to a temp folder, fsync, then rename it into place (never half-written)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, optim_meta = _optimizer_tensors(ckpt.optimizer)
    tensors.update({f"rows.{key}": value.detach().cpu().contiguous() for key, value in ckpt.rows.items()})
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {"format": FORMAT, "step": ckpt.step, "optimizer": optim_meta, "stopper": ckpt.stopper}
    meta["fingerprint"] = ckpt.fingerprint
    (tmp / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    for name in ("state.safetensors", "state.json"):
        with open(tmp / name, "rb") as handle:
            os.fsync(handle.fileno())
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load(folder: Path) -> Checkpoint:
    """Read a checkpoint folder written by `save` (tensors through safetensors: no unpickling)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "state.safetensors"))
    except (OSError, ValueError) as exc:
        raise TokensmithError(
            f"checkpoint {folder} is unreadable ({exc}); delete it to resume from the one before"
        ) from None
    if meta.get("format") != FORMAT:
        raise TokensmithError(f"{folder} is not a tokensmith training checkpoint ({meta.get('format')!r})")
    rows = {key[len("rows.") :]: value for key, value in tensors.items() if key.startswith("rows.")}
    optim_meta = meta["optimizer"]
    state = {
        int(index): {name: tensors[f"optim.{index}.{name}"] for name in names}
        for index, names in optim_meta["per_param"].items()
    }
    optimizer = {"state": state, "param_groups": optim_meta["param_groups"]}
    return Checkpoint(
        step=int(meta["step"]),
        rows=rows,
        optimizer=optimizer,
        stopper=meta.get("stopper", {}),
        fingerprint=meta.get("fingerprint", ""),
    )
