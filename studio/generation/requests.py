"""What a generation is asked and what it gives back: GenerateRequest, StepInfo (each sampling step, for a
progress bar) and Result (an image with its provenance); and the swap checks the doors make before rendering.
The engine that fulfils them is session.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from embeddings.errors import TokensmithError
from studio.generation.img2img import INIT_READER
from studio.generation.prompt import parse
from studio.generation.schedule import DEFAULT_SCHEDULER
from studio.generation.swaps import parse_swap, unmatched_swaps

DEFAULT_STEPS = 20


@dataclass
class GenerateRequest:
    """Everything one generation needs; `num_images` images use seeds seed, seed+1, ..."""

    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance: float | None = None  # None: the model family's usual value (demo 4, SDXL 5, else 7.5)
    scheduler: str = DEFAULT_SCHEDULER
    width: int | None = None  # None: the model's native size
    height: int | None = None
    num_images: int = 1
    swaps: dict[str, str] = field(default_factory=dict)  # word -> "<name>" (or a word)
    init_image: str | Path | Image.Image | None = None
    strength: float = 0.6
    guides: tuple[str, ...] = ()  # guidance.py specs: "color=green", "module=pkg.mod:fn,scale=0.5"
    trace_steps: tuple[int, ...] = ()  # sampling steps to trace (0-based); empty: no trace
    # What times prompt editing ([a:b:0.5]) and every=K guides: sampling steps; "evaluations" (each model
    # evaluation, which Heun and PNDM make more of than steps) is how images made before step counting were
    # timed, so their replays come out identical.
    step_clock: str = "steps"
    # How an init image file is read (img2img.INIT_READER): an image made by an older reader replays with it.
    init_reader: int = INIT_READER
    # DDIM/DDPM clipping of x̂0 to [-1, 1] (schedule.make_scheduler): off for latents; None keeps the model
    # config's own setting (diffusers' default: on), as images made before it was turned off were sampled.
    clip_sample: bool | None = False


def check_swaps(requests: list[GenerateRequest]) -> None:
    """Refuse a swap word that occurs in no prompt or negative prompt of `requests` (one run's: a grid's rows,
    variations' prompts), which would silently do nothing. The doors call it before rendering; the session
    does not, so an image made before this check still replays."""
    swaps = {word: target for req in requests for word, target in req.swaps.items()}
    prompts = [parse(text) for req in requests for text in (req.prompt, req.negative)]
    unmatched = unmatched_swaps(swaps, *prompts)
    if unmatched:
        raise TokensmithError(
            f"swap {', '.join(map(repr, unmatched))} matches no word of the prompt or the negative prompt: "
            "check the spelling (a swap replaces a whole word, in any case)"
        )


@dataclass
class StepInfo:
    """What `on_step` receives after every sampling step (a Heun step evaluates the model twice: one call)."""

    image_index: int
    num_images: int
    step: int  # 1-based count of steps done for this image
    total_steps: int  # the steps this image runs (img2img: fewer than req.steps)
    timestep: int  # where the step started


@dataclass
class Result:
    image: Image.Image
    provenance: dict
    trace: Image.Image | None = None  # the labelled strip, when trace_steps were asked for

    @property
    def seed(self) -> int:
        return int(self.provenance["seed"])


def swaps_from_specs(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['puppy=<cat>', ...] (the CLI's --swap) -> {'puppy': '<cat>'}."""
    return dict(parse_swap(spec) for spec in specs)
