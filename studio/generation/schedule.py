"""Schedulers by name, and the noise schedule made visible: ᾱ_t, σ_t and the timesteps a scheduler visits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embeddings.errors import TokensmithError
from embeddings.files import atomic_write

# name -> diffusers class name (and the A1111 sampler name written into `parameters`)
SCHEDULERS = {
    "dpm": ("DPMSolverMultistepScheduler", "DPM++ 2M"),
    "ddim": ("DDIMScheduler", "DDIM"),
    "euler": ("EulerDiscreteScheduler", "Euler"),
    "euler-a": ("EulerAncestralDiscreteScheduler", "Euler a"),
    "heun": ("HeunDiscreteScheduler", "Heun"),
    "pndm": ("PNDMScheduler", "PLMS"),
    "unipc": ("UniPCMultistepScheduler", "UniPC"),
    "ddpm": ("DDPMScheduler", "DDPM"),
}
DEFAULT_SCHEDULER = "dpm"
MIN_STEPS = {"pndm": 4}  # diffusers' PNDM cannot lay out fewer (its warm-up takes 3 steps)
MAX_STEPS = 1000  # a model's training timesteps: more sampling steps than that visit nothing new


def make_scheduler(name: str, base_config: Any, *, clip_sample: bool | None = False) -> Any:
    """A fresh scheduler of kind `name` built from a model's scheduler config (its betas, prediction type).

    DDIM and DDPM clip their predicted x̂0 to [-1, 1] unless told not to (`clip_sample`, True by default in
    diffusers), which is right for pixels and wrong for a latent: "a red circle" comes out a faint purple
    blob on the demo world. diffusers' StableDiffusionPipeline turns it off for every latent model, and so
    do we; `clip_sample=None` keeps what the config (or the class default) says, as images made before
    this were sampled, so their replays come out identical.
    """
    import diffusers

    key = name.strip().lower().replace("_", "-")
    if key not in SCHEDULERS:
        raise TokensmithError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    scheduler = getattr(diffusers, SCHEDULERS[key][0]).from_config(base_config)
    if clip_sample is not None and scheduler.config.get("clip_sample", clip_sample) != clip_sample:
        scheduler.register_to_config(clip_sample=clip_sample)
    return scheduler


def check_steps(name: str, steps: int) -> None:
    """Steps a scheduler can run, or TokensmithError saying the minimum."""
    key = name.strip().lower().replace("_", "-")
    low = MIN_STEPS.get(key, 1)
    if steps < low:
        raise TokensmithError(f"scheduler {name} needs at least {low} steps, not {steps}: raise --steps")
    if steps > MAX_STEPS:
        raise TokensmithError(f"steps must be at most {MAX_STEPS}, not {steps}: lower --steps")


def evaluations_per_step(scheduler: Any, steps: int) -> list[int]:
    """How many model evaluations each of the `steps` sampling steps takes, after `set_timesteps(steps)`.

    Most schedulers evaluate the model once per step. Second-order ones (Heun) evaluate it twice, except in
    their last step: 5 steps are 9 entries of `scheduler.timesteps`, [2, 2, 2, 2, 1]. PNDM warms up with
    Runge-Kutta steps of 4 evaluations ([4, 4, 4, 1, 1]) or, when it skips them, evaluates its first step
    twice ([2, 1, 1, 1, 1]).
    """
    total = len(scheduler.timesteps)
    order = int(getattr(scheduler, "order", 1))
    prk = getattr(scheduler, "prk_timesteps", None)
    prk = 0 if prk is None else len(prk)
    if order > 1:
        counts = [order] * (steps - 1) + [1]
    elif prk:
        counts = [4] * (prk // 4) + [1] * (total - prk)
    else:
        counts = [1 + total - steps] + [1] * (steps - 1)
    if len(counts) != steps or sum(counts) != total:  # a layout not listed above: spread them evenly
        counts = [(k + 1) * total // steps - k * total // steps for k in range(steps)]
    return counts


def step_starts(counts: list[int], skip: int = 0) -> list[int]:
    """The evaluation indices that begin each step, after the first `skip` evaluations were dropped (img2img
    starts part-way; a step it enters in the middle still counts): [2, 2, 1] -> [0, 2, 4]."""
    starts, at = [], 0
    for count in counts:
        if at + count > skip:
            starts.append(max(at - skip, 0))
        at += count
    return starts


def _scheduler_key(scheduler: Any) -> str:
    names = {cls: key for key, (cls, _title) in SCHEDULERS.items()}
    return names.get(type(scheduler).__name__, type(scheduler).__name__)


def sampler_title(name: str) -> str:
    return SCHEDULERS.get(name, (name, name))[1]


@dataclass
class ScheduleCurves:
    """The schedule of a model's training noise and what one sampling run visits."""

    alphas_cumprod: torch.Tensor  # (T,) ᾱ_t for t = 0..T-1
    visited: list[int]  # the timestep each sampling step starts from, in order
    evaluated: list[list[int]] = field(default_factory=list)  # per step: the timesteps the model sees
    # What the table reports where the scheduler has it, rather than the training table at the rounded t
    # the plot indexes by: per step, the exact timesteps the model sees (Euler's are fractional) and the
    # scheduler's own σ in k-diffusion scale where the step starts.
    exact: list[list[float]] = field(default_factory=list)
    step_k_sigmas: list[float] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        """Model evaluations in one run (more than the steps for Heun and PNDM: see evaluations_per_step)."""
        return sum(len(e) for e in self.evaluated) or len(self.visited)

    @property
    def sigmas(self) -> torch.Tensor:
        """σ_t = √(1 − ᾱ_t), the std of the noise in x_t = √ᾱ_t·x0 + σ_t·ε."""
        return (1 - self.alphas_cumprod).sqrt()  # (T,)

    @property
    def k_sigmas(self) -> torch.Tensor:
        """σ_t/√ᾱ_t, the noise level in k-diffusion's (Euler/Karras) scale."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # (T,)

    def table(self) -> list[dict[str, float]]:
        """One row per sampling step: its timestep (fractional where the scheduler's is), ᾱ, σ and k-σ (from
        the scheduler's own σ where it has them: Euler, Heun, DPM, UniPC; else the training table's)."""
        rows = []
        for i, t in enumerate(self.visited):
            if self.step_k_sigmas:
                k_sigma = self.step_k_sigmas[i]
                alpha_bar = 1.0 / (1.0 + k_sigma**2)
            else:
                k_sigma, alpha_bar = float(self.k_sigmas[t]), float(self.alphas_cumprod[t])
            rows.append(
                {
                    "step": i,
                    "timestep": self.exact[i][0] if self.exact else int(t),
                    "alpha_bar": alpha_bar,
                    "sigma": (1.0 - alpha_bar) ** 0.5,
                    "k_sigma": k_sigma,
                    "evaluated_at": self.exact[i] if self.exact else self.evaluated[i] or [int(t)],
                }
            )
        return rows

    def explanation(self) -> str:
        """One sentence for when steps and model evaluations differ (else '')."""
        if self.evaluations == len(self.visited):
            return ""
        return (
            f"{len(self.visited)} sampling steps take {self.evaluations} model evaluations: this scheduler "
            "evaluates the model more than once in some steps (a higher-order or warm-up step); each step is "
            "listed at the timestep it starts from"
        )


def schedule_curves(scheduler: Any, steps: int) -> ScheduleCurves:
    """ᾱ_t over all training timesteps, and the timesteps `scheduler` visits in `steps` steps."""
    if steps < 1:
        raise TokensmithError(f"steps must be 1 or more, not {steps}")
    check_steps(_scheduler_key(scheduler), steps)
    scheduler.set_timesteps(steps)
    exact = [_number(float(t)) for t in scheduler.timesteps]
    counts = evaluations_per_step(scheduler, steps)
    starts = step_starts(counts)
    per_step = [exact[start : start + count] for start, count in zip(starts, counts, strict=True)]
    own = getattr(scheduler, "sigmas", None)  # aligned with timesteps (one more: the final σ)
    own = [float(own[start]) for start in starts] if own is not None and len(own) >= len(exact) else []
    return ScheduleCurves(
        alphas_cumprod=scheduler.alphas_cumprod.float().clone(),
        visited=[round(ts[0]) for ts in per_step],
        evaluated=[[round(t) for t in ts] for ts in per_step],
        exact=per_step,
        step_k_sigmas=own,
    )


def _number(t: float) -> float | int:
    """A timestep as it is: 749.25 stays fractional, 749.0 is 749."""
    return int(t) if float(t).is_integer() else t


def plot_schedule(curves: ScheduleCurves, out: Path, *, title: str) -> Path:
    """Write a two-panel PNG: ᾱ_t and σ_t against t (visited steps marked), and k-diffusion σ (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t = torch.arange(len(curves.alphas_cumprod))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(t, curves.alphas_cumprod, label="ᾱ_t (signal kept)", color="tab:blue")
    left.plot(t, curves.sigmas, label="σ_t = √(1−ᾱ_t) (noise std)", color="tab:orange")
    visited = curves.visited
    left.scatter(visited, curves.alphas_cumprod[visited], s=14, color="tab:blue", zorder=3)
    left.scatter(
        visited, curves.sigmas[visited], s=14, color="tab:orange", zorder=3, label="a step starts here"
    )
    extra = sorted({t for ts in curves.evaluated for t in ts[1:]})
    if extra:  # the second evaluations of Heun's steps (or PNDM's warm-up)
        left.scatter(
            extra, curves.sigmas[extra], s=22, facecolors="none", edgecolors="tab:red", zorder=4,
            label="also evaluated within a step",
        )  # fmt: skip
    for v in visited:
        left.axvline(v, color="gray", lw=0.4, alpha=0.5)
    left.set(xlabel="timestep t", ylabel="value", title="training schedule and the steps sampled")
    left.legend(loc="center right", fontsize=8)
    right.semilogy(range(len(visited)), curves.k_sigmas[visited], marker="o", color="tab:green")
    right.set(xlabel="sampling step", ylabel="σ_t / √ᾱ_t (log)", title="noise level per sampling step")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves.evaluations != len(visited):
        title += f" ({len(visited)} steps, {curves.evaluations} model evaluations)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, out)


def _save_figure(fig: Any, out: Path) -> Path:
    """Written completely or not at all (embeddings.files.atomic_write: a hidden temp file, then rename)."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
