"""Learning-rate schedules: constant, linear warm-up, cosine, and A1111's piecewise string.

A schedule is a plain function step -> learning rate, so it is exact on resume (no scheduler state to restore)
and testable as data: `schedule_for("0.005:100, 1e-3:1000", 2e-2, ...)(150) == 1e-3`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from embeddings.errors import TokensmithError

Schedule = Callable[[int], float]


class ScheduleError(TokensmithError, ValueError):
    """A learning-rate schedule string cannot be read."""


# A1111's step for a rate that holds until the end (the same as a last piece without a step)
OPEN_END = -1


def parse_piecewise(text: str) -> list[tuple[float, int | None]]:
    """'0.005:100, 1e-3:1000, 1e-5' -> [(0.005, 100), (0.001, 1000), (1e-05, None)] (A1111's syntax).

    Each `rate:step` pair holds `rate` until (excluding) `step`; a last rate without a step (or with A1111's
    `:-1`, "until the end") holds forever. Unlike A1111, the last piece's step does not end training (the
    run ends at --steps): past it the last rate holds. '1e-3:-1' -> [(0.001, None)].
    """
    pieces: list[tuple[float, int | None]] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        rate_text, _, step_text = part.partition(":")
        try:
            rate = float(rate_text)
            until = int(step_text) if step_text.strip() else None
            until = None if until == OPEN_END else until
        except ValueError:
            raise ScheduleError(
                f"cannot read learning-rate piece {part!r}; "
                "write rate:until_step pairs like '0.005:100, 1e-3:1000'"
            ) from None
        if not math.isfinite(rate) or rate <= 0:
            raise ScheduleError(f"learning rate {rate} in {text!r} must be a positive number")
        if until is not None and until < 1:  # it would hold for no step at all
            raise ScheduleError(
                f"the step {until} in {part!r} must be 1 or more: a rate holds until (before) its step "
                f"(a last rate holds until the end without a step, or with A1111's :{OPEN_END})"
            )
        if pieces and (pieces[-1][1] is None or (until is not None and until <= pieces[-1][1])):
            raise ScheduleError(
                f"the steps in {text!r} must increase and only the last piece may omit its step"
            )
        pieces.append((rate, until))
    if not pieces:
        raise ScheduleError(f"learning-rate schedule {text!r} is empty")
    return pieces


def is_piecewise(name: str) -> bool:
    return any(ch.isdigit() for ch in name)


def schedule_for(name: str, peak: float, *, total_steps: int, warmup_steps: int = 0) -> Schedule:
    """The function step (0-based) -> learning rate for a schedule name or a piecewise string."""
    if is_piecewise(name):
        pieces = parse_piecewise(name)

        def piecewise(step: int) -> float:
            for rate, until in pieces:
                if until is None or step < until:
                    return rate
            return pieces[-1][0]  # past the last step: keep the last rate

        return piecewise

    def warm(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    if name == "constant":
        return lambda step: peak
    if name == "warmup":
        return lambda step: peak * warm(step)
    if name == "cosine":
        span = max(1, total_steps - warmup_steps)

        def cosine(step: int) -> float:
            if step < warmup_steps:
                return peak * warm(step)
            progress = min(1.0, (step - warmup_steps) / span)
            return peak * 0.5 * (1.0 + math.cos(math.pi * progress))

        return cosine
    raise ScheduleError(
        f"unknown learning-rate schedule {name!r}; "
        "use constant, warmup, cosine or a string like '0.005:100, 1e-3:1000'"
    )
