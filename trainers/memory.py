"""Running out of memory, told in one line with the settings that need less: for training (here) and for
sampling (studio.generation.session), which share the test of what counts as out of memory."""

from __future__ import annotations

import torch

from embeddings.errors import TokensmithError, first_line
from trainers.config import TrainConfig


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says that memory ran out: CUDA's OutOfMemoryError, Python's MemoryError (numpy, PIL),
    MPS's "out of memory" and torch's CPU allocator's "can't allocate memory"."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = first_line(exc)
    return "out of memory" in text.lower() or "can't allocate memory" in text


class OutOfMemory(TokensmithError):
    """A run that ran out of memory, with what ran out (the allocator's first line) and whether the run had
    gradient checkpointing: the run's `failed` event records both (`reason: out_of_memory`), so the studio
    words its own advice from them instead of parsing this message."""

    def __init__(self, message: str, *, ran_out: str, gradient_checkpointing: bool):
        super().__init__(message)
        self.ran_out = ran_out
        self.gradient_checkpointing = gradient_checkpointing

    def event_fields(self) -> dict:
        """The fields the `failed` event adds to its message."""
        return {
            "reason": "out_of_memory",
            "ran_out": self.ran_out,
            "gradient_checkpointing": self.gradient_checkpointing,
        }


def out_of_memory_advice(exc: BaseException, cfg: TrainConfig) -> OutOfMemory | None:
    """A one-line error for a run that ran out of GPU (or CPU) memory, naming the settings that need less;
    None for any other exception. A resume is told only what a resume accepts (gradient checkpointing); the
    settings that change what the run computes need a new run."""
    if not is_out_of_memory(exc):
        return None
    text = first_line(exc)
    checkpointing = [] if cfg.gradient_checkpointing else ["--gradient-checkpointing"]
    batch = [f"--batch-size 1 --grad-accum {cfg.batch_size * cfg.grad_accum} (the same batch)"]
    options = batch if cfg.batch_size > 1 else []
    if cfg.mixed_precision == "no":
        options.append("--mixed-precision bf16 (or fp16 on GPUs without bf16)")
    if cfg.preview_images > 1:
        options.append("fewer --preview-images")
    said = f"training ran out of memory ({text[:160]})"
    if cfg.resume:
        hint = _resume_memory_hint(checkpointing, options)
    else:
        options[int(cfg.batch_size > 1) : 0] = checkpointing  # after the batch size, as before
        hint = "; try " + ", ".join(options) if options else "; use a smaller --resolution or a larger GPU"
    return OutOfMemory(said + hint, ran_out=text[:160], gradient_checkpointing=cfg.gradient_checkpointing)


def _resume_memory_hint(checkpointing: list[str], options: list[str]) -> str:
    """The advice for a resume that ran out of memory: it may add gradient checkpointing (which computes the
    same numbers), and any other saving changes what the run computes, so it needs a new run folder."""
    hint = f"; resume with {checkpointing[0]} (a resume accepts it)" if checkpointing else ""
    if options:
        shown = ", ".join(options)
        hint += f"; a new run (--run-dir NEW_DIR) may also use {shown} (a resume refuses them: "
        hint += "they change its config)"
    return hint or "; use a larger GPU, or start a new run with a smaller --resolution (--run-dir NEW_DIR)"
