"""What the processes of one run share (`accelerate launch` / `torchrun`; a plain run is one process):
joining them, summing numbers over them, and averaging the new rows' gradients before each step.

There is no DDP wrapper: the trainable rows live inside the frozen text encoders, so gradients are averaged
here, explicitly. With one process every function is a plain local operation.
"""

from __future__ import annotations

from datetime import timedelta

import torch

# How long a process waits at a collective for the others. NCCL's default is 10 minutes, and the other
# processes wait that long while the main one alone caches latents (`--refine-latents` on SDXL) or draws
# previews; a launcher ends the rest when one process dies, so a long limit only delays a true deadlock.
WAIT_LIMIT = timedelta(hours=2)


def accelerator_for(*, mixed_precision: str, trackers: list[str], project_dir: str):
    """The run's Accelerator, with the config's precision and trackers.

    Accumulation is the loop's own (each micro-batch's loss is divided by grad_accum): an Accelerator left to
    read `accelerate launch --gradient_accumulation_steps N` (or an accelerate config file) would divide every
    gradient by N again in `accelerator.backward`, and accumulate nothing, so it is told one step outright.
    """
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
        log_with=trackers or None,
        project_dir=project_dir,
    )


def launcher_notes(*, mixed_precision: str, grad_accum: int) -> list[str]:
    """A note for each setting of the launcher (`accelerate launch` flags or an accelerate config file, which
    reach the run as ACCELERATE_* variables) that differs from the run's config, which alone decides: the
    config is what a resume, the printed commands and the model card repeat. The launcher's defaults (no
    mixed precision, one step) say nothing and get no note."""
    import os

    notes = []
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if precision not in ("", "no", mixed_precision):
        notes.append(
            f"the launcher's mixed precision {precision} (accelerate launch --mixed_precision, or an "
            f"accelerate config file) is not used: this run trains with its config's mixed_precision = "
            f'"{mixed_precision}"; set mixed_precision = "{precision}" there (--mixed-precision {precision} '
            "for tokensmith train) to use it"
        )
    steps = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").strip()
    if steps not in ("", "1", str(grad_accum)):
        notes.append(
            f"the launcher's gradient accumulation ({steps} steps: accelerate launch "
            "--gradient_accumulation_steps, or an accelerate config file) is not used: this run accumulates "
            f"its config's grad_accum = {grad_accum}; set grad_accum = {steps} there (--grad-accum {steps} "
            "for tokensmith train) to use it"
        )
    return notes


def joined_as_main() -> bool:
    """Join the other processes of a multi-process launch (none: a plain run) once each has checked the run
    folder, so no process finds a progress.jsonl that the main one has just begun; True in the main one."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # the same process setup the Accelerator makes later (it reads ACCELERATE_USE_CPU; PartialState does not)
    processes = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=WAIT_LIMIT)
    processes.wait_for_everyone()
    return processes.is_main_process


def launch_rank() -> int:
    """This process's rank in a multi-process launch (0 in a plain run), read from the launcher's environment
    as Accelerate reads it, without joining: what a door needs before the trainer sets processes up."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0)


def launch_size() -> int:
    """How many processes this launch has (1 in a plain run), read from the launcher's environment as
    Accelerate reads it, without joining."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def has_gpu() -> bool:
    """A CUDA, XPU or Apple GPU that Accelerate would train on."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


def on_cpu() -> bool:
    """Whether the processes train on the CPU: no GPU, or ACCELERATE_USE_CPU (which a CPU launch needs)."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not has_gpu()


def mean_over_processes(accelerator, value: float) -> float:
    """The mean of one number over the processes (the whole batch's loss from each process's share)."""
    if accelerator.num_processes == 1:
        return value
    return float(_summed(accelerator, value)) / accelerator.num_processes


def any_process(accelerator, flag: bool) -> bool:
    """True in every process when `flag` is true in any (a stop asked of one process ends them all)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(_summed(accelerator, float(flag)) > 0)


def _summed(accelerator, value: float) -> torch.Tensor:
    """`value` summed over the processes: a one-number collective every process must join."""
    local = torch.tensor([value], dtype=torch.float64, device=accelerator.device)  # (1,)
    return accelerator.reduce(local, reduction="sum").cpu()[0]


def apply_update(params, optimizer, accelerator, max_grad_norm: float) -> None:
    """Average gradients over processes (no DDP wrapper: rows live inside the text encoders), clip, step."""
    if accelerator.num_processes > 1:
        for p in params:
            p.grad = accelerator.reduce(p.grad, reduction="mean")
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, max_grad_norm)  # unscales fp16 gradients first
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
