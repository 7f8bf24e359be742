"""`tokensmith train`: learn a concept token from images (the demo command is studio/cli_demo.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from studio.cli import UsageError, bar_options
from studio.cli_options import add_command

TRAIN_EXAMPLE = """Examples:
  tokensmith train --images shots/ --name my-cat --init cat
  tokensmith train --images shots/ --name my-style --style --vectors 4 --steps 500 --model /models/sd15
  tokensmith train --config run.toml --steps 300          # a file, with flags on top
  tokensmith train --name my-cat --resume                 # continue HOME/runs/my-cat after a crash
  tokensmith train --name my-cat --resume --steps 300 --overwrite   # train a finished run further
Every flag is also a config key (--batch-size 4 <-> batch_size = 4). The run folder holds config.toml,
command.txt, progress.jsonl, previews/, snapshots/ and checkpoints/; SIGTERM stops cleanly."""

# Other spellings of a config key's flag: every other command that replaces a stored embedding of the same
# name calls that --force. The config key (and the equivalent command printed) keeps the key's own name.
ALIASES = {"overwrite": ("--force",)}


def register(subparsers, common) -> None:
    from trainers.commands import flag_name
    from trainers.config import FIELDS

    train = add_command(
        subparsers,
        common,
        "train",
        "learn a concept token from a folder of images",
        TRAIN_EXAMPLE,
        description="Train a textual-inversion embedding and put it in the store.",
    )
    train.add_argument("--config", metavar="FILE", help="a TOML or YAML config (flags override its values)")
    train.add_argument("--style", action="store_true", help="learn a style: same as --templates style")
    train.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    for name, f in FIELDS.items():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = option_help(f.metadata["help"], default)
        if isinstance(default, bool):
            flags = (flag_name(name), *ALIASES.get(name, ()))
            train.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            train.add_argument(
                flag_name(name),
                dest=name,
                default=None,
                metavar=f.metadata.get("metavar") or name.split("_")[-1].upper(),
                type=_flag_value(name),
                choices=f.metadata.get("choices"),
                help=help_text,
            )
    train.set_defaults(run=run_train)


def _flag_value(name: str):
    """argparse's `type` for the flag of config key `name`: a value of the wrong kind (`--vectors two`) is a
    usage error (exit 2) worded as the config file's would be."""
    from trainers.config import ConfigError
    from trainers.configfile import coerce

    def convert(text: str):
        try:
            return coerce(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def config_from_args(args):
    """The TrainConfig of `tokensmith train` flags (on top of --config FILE when given)."""
    from trainers.config import FIELDS
    from trainers.configfile import load

    overrides = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    if args.style:
        if overrides.get("templates", "style") != "style":  # which one was meant cannot be guessed
            raise UsageError(
                f"--style is --templates style; it cannot go with --templates {overrides['templates']}: "
                "drop one of them"
            )
        overrides["templates"] = "style"
    config_file = args.config
    if overrides.get("resume") and not config_file:
        config_file = _run_config(overrides, args.home)
    cfg = load(config_file, overrides=overrides)
    missing = [flag for flag, value in (("--images", cfg.images), ("--name", cfg.name)) if not value]
    if missing:
        are, them = ("are", "them") if len(missing) > 1 else ("is", "it")
        raise UsageError(
            f"{' and '.join(missing)} {are} required (or a --config file that sets {them}); see --help"
        )
    return cfg


def _run_config(overrides: dict, home) -> str:
    """`--resume` without --config: the config.toml of the run being resumed (by --run-dir or --name)."""
    from pathlib import Path

    from trainers.config import TrainConfig
    from trainers.session import resolve_run_dir

    if not overrides.get("run_dir") and not overrides.get("name"):
        raise UsageError("--resume needs --run-dir DIR or --name NAME (or --config FILE) to find the run")
    probe = TrainConfig(name=overrides.get("name", ""), run_dir=overrides.get("run_dir", ""), resume=True)
    config_path = Path(resolve_run_dir(probe, home)) / "config.toml"
    if not config_path.is_file():
        raise ValueError(f"no run to resume: {config_path} does not exist")
    return str(config_path)


def set_cpu_threads() -> None:
    """Half the cores for torch on CPU (1 on a 2-core machine) unless OMP_NUM_THREADS says otherwise.

    A CPU shared with other work runs these small models several times slower with every core in use
    (thread oversubscription); on a GPU this only affects the few CPU-side tensors.
    """
    import os

    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


# what the bar shows after the step count: (label, progress-record key, format)
POSTFIX = (
    ("loss", "loss", ".4f"),
    ("val", "val_loss", ".4f"),
    ("metric", "metric", ".4g"),  # judge RGB distance (e.g. 29.41) or CLIP similarity (0.8123)
    ("shape", "shape_match", ".0%"),  # demo world: share of preview samples with the training images' shape
    ("clip_text", "clip_text", ".3f"),
)


def option_help(text: str, default) -> str:
    """A config key's help line with its default, unless the text names it already or it is empty."""
    if "(default:" in text or default in ("", [], ()):
        return text
    return f"{text} (default: {default!r})"


class ProgressBar:
    """A tqdm bar on stderr: step, ETA, the step's loss and the latest validation loss and preview scores.

    The bar starts at the run's first progress record (step 0, or the step a resume continues from), after
    the model has loaded and the latents are cached, so its rate and ETA count training steps only. Values
    logged every N steps (validation loss, preview scores) stay on show until the next ones.
    """

    def __init__(self, total: int, *, disable: bool = False):
        self.total, self.disable = total, disable
        self.bar = None
        self.shown: dict[str, str] = {}

    def __call__(self, record: dict) -> None:
        step = record["step"]
        if self.bar is None:
            self.bar = self._start(step if step == 0 else step - 1)  # a resume's first record: a new step
        for label, key, style in POSTFIX:
            if record.get(key) is not None:
                self.shown[label] = format(record[key], style)
        if self.shown:  # before the update, which draws the line: the step shows its own values
            ordered = {label: self.shown[label] for label, _, _ in POSTFIX if label in self.shown}
            self.bar.set_postfix(ordered, refresh=False)
        if self.bar.n < step:
            self.bar.update(step - self.bar.n)

    def _start(self, initial: int):
        """The tqdm bar, its clock starting now, at step `initial`."""
        from tqdm import tqdm

        return tqdm(
            total=self.total,
            initial=initial,
            unit="step",
            desc="training",
            disable=self.disable,
            smoothing=0,  # the average rate since the first record: preview steps would swing tqdm's EMA
            **bar_options(),
        )

    def write(self, line: str) -> None:
        from tqdm import tqdm

        if not self.disable:
            tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_train(args) -> int:
    """Train, then say how the run ended as `python -m trainers` says it (trainers/outcome.py): the result
    on stdout (--json: as JSON), notes on stderr; under a multi-process launch the main process alone."""
    from trainers.hub import UploadError
    from trainers.outcome import finish, stopped_early
    from trainers.processes import launch_rank
    from trainers.trainer import RunStopped, train

    set_cpu_threads()
    cfg = config_from_args(args)
    # under `accelerate launch` or torchrun, the main process alone shows the bar and the result
    quiet = launch_rank() != 0
    bar = ProgressBar(cfg.steps, disable=quiet)
    failed_upload = None
    try:
        emb = train(cfg, home=args.home, on_progress=bar, echo=bar.write)
    except RunStopped as exc:  # a SIGTERM or Ctrl-C while the model loaded: asked for, not an error
        bar.close()
        return report(stopped_early(exc), quiet=quiet)
    except UploadError as exc:  # the run is done and stored: its result is shown, then the upload's error
        if exc.embedding is None:
            raise
        emb, failed_upload = exc.embedding, exc
    finally:
        bar.close()
    outcome = finish(emb, home=args.home, push_to_hub=cfg.push_to_hub, failed_upload=failed_upload)
    return report(outcome, quiet=quiet, as_json=args.json)


def report(outcome, *, quiet: bool = False, as_json: bool = False) -> int:
    """Print a run's Outcome as `tokensmith train` does, and return its exit status: the result on stdout
    (--json: the result object, when there is one), each note on stderr; nothing when `quiet`."""
    if quiet:
        return outcome.exit_code
    if as_json and outcome.result:
        print(json.dumps(outcome.result, indent=2))
    else:
        for line in outcome.said:
            print(line)
    for note in outcome.notes:
        print(f"tokensmith train: {note}", file=sys.stderr)
    return outcome.exit_code
