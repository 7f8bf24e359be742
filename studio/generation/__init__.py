"""The generation engine both the CLI and the studio call (see session.py for the entry point)."""

from studio.generation.conditioning import PromptEncoder, load_stored
from studio.generation.grid import compose, parse_seeds, parse_sweep, render_grid
from studio.generation.guidance import Guide, GuideError, parse_guide
from studio.generation.img2img import InitImageError
from studio.generation.prompt import PromptError, parse
from studio.generation.provenance import ReplayError, read_provenance, save_png
from studio.generation.replaying import replay
from studio.generation.requests import GenerateRequest, Result, StepInfo, check_swaps, swaps_from_specs
from studio.generation.schedule import SCHEDULERS, make_scheduler, plot_schedule, schedule_curves
from studio.generation.session import Session
from studio.generation.swaps import parse_swap

__all__ = [
    "SCHEDULERS",
    "GenerateRequest",
    "Guide",
    "GuideError",
    "InitImageError",
    "PromptEncoder",
    "PromptError",
    "ReplayError",
    "Result",
    "Session",
    "StepInfo",
    "check_swaps",
    "compose",
    "load_stored",
    "make_scheduler",
    "parse",
    "parse_guide",
    "parse_seeds",
    "parse_swap",
    "parse_sweep",
    "plot_schedule",
    "read_provenance",
    "render_grid",
    "replay",
    "save_png",
    "schedule_curves",
    "swaps_from_specs",
]
