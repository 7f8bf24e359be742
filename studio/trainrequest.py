"""What a studio training job runs: the Train page's request, as `tokensmith train` flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainRequest:
    """A training job as the Train page fills it; `None` leaves the trainer's default in place."""

    name: str
    images: Path
    init: str | None = None
    vectors: int | None = None
    style: bool = False
    steps: int | None = None
    learning_rate: float | None = None
    model: str | None = None
    model_config: str | None = None  # configs of a single-file model, offline
    extra_args: tuple[str, ...] = ()

    def to_args(self) -> list[str]:
        """The `tokensmith train` flags, e.g. ['--images', 'DIR', '--name', 'cat', '--steps', '100']."""
        args = ["--images", str(self.images), "--name", self.name]
        if self.init:
            args += ["--init", self.init]
        if self.vectors is not None:
            args += ["--vectors", str(self.vectors)]
        if self.style:
            args += ["--templates", "style"]
        if self.steps is not None:
            args += ["--steps", str(self.steps)]
        if self.learning_rate is not None:
            args += ["--learning-rate", repr(self.learning_rate)]
        if self.model:
            args += ["--model", self.model]
        if self.model_config:
            args += ["--model-config", self.model_config]
        return args + list(self.extra_args)
