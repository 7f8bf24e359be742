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


def out_of_memory_advice(exc: BaseException, cfg: TrainConfig) -> TokensmithError | None:
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
        return TokensmithError(said + _resume_memory_hint(checkpointing, options))
    options[int(cfg.batch_size > 1) : 0] = checkpointing  # after the batch size, as before
    hint = "; try " + ", ".join(options) if options else "; use a smaller --resolution or a larger GPU"
    return TokensmithError(said + hint)


def _resume_memory_hint(checkpointing: list[str], options: list[str]) -> str:
    """The advice for a resume that ran out of memory: it may add gradient checkpointing (which computes the
    same numbers), and any other saving changes what the run computes, so it needs a new run folder."""
    hint = f"; resume with {checkpointing[0]} (a resume accepts it)" if checkpointing else ""
    if options:
        shown = ", ".join(options)
        hint += f"; a new run (--run-dir NEW_DIR) may also use {shown} (a resume refuses them: "
        hint += "they change its config)"
    return hint or "; use a larger GPU, or start a new run with a smaller --resolution (--run-dir NEW_DIR)"
