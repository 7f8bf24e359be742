"""A TrainConfig as text: the run's `config.toml` and the commands that repeat the run (one process, or the
launch of several), naming the run's home where a bare command would store elsewhere."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from embeddings.errors import TokensmithError
from trainers.config import FIELDS, TrainConfig


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON strings are valid TOML basic strings


def to_toml(cfg: TrainConfig, *, home: str | Path | None = None) -> str:
    """The resolved config as TOML text, every key written (a run folder's `config.toml`); its header says
    how to run it (`home`: the run's tokensmith home, named when it is not the default)."""
    run = shlex.join(["tokensmith", "train", "--config", "THIS_FILE", *home_flags(home)])
    lines = [f"# tokensmith training config (resolved); run it with: {run}"]
    if cfg.run_dir:  # its run folder refuses a second run
        lines.append(f"# once its run has begun, continue it with: {run} --resume")
        lines.append(f"# or run it again in a new folder with: {run} --run-dir NEW_DIR")
    for name, f in FIELDS.items():
        lines.append(f"# {f.metadata['help']}")
        lines.append(f"{name} = {_toml_value(getattr(cfg, name))}")
    return "\n".join(lines) + "\n"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def to_flags(cfg: TrainConfig) -> list[str]:
    """CLI flags for every value that differs from the default (`--steps 300 --no-flip ...`)."""
    default = TrainConfig()
    flags: list[str] = []
    for name in FIELDS:
        value = getattr(cfg, name)
        if value == getattr(default, name):
            continue
        if isinstance(value, bool):
            flags.append(flag_name(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            flags += [flag_name(name), ",".join(value)]
        else:
            flags += [flag_name(name), str(value)]
    return flags


DEFAULT_HOME = "~/.tokensmith"


def home_from_environment() -> Path:
    """$TOKENSMITH_HOME, else ~/.tokensmith. Set but empty, it is refused (TokensmithError):
    `TOKENSMITH_HOME="$PROJECT_HOME"` with the variable unset must not store into the user's own home."""
    env = os.environ.get("TOKENSMITH_HOME")
    if env is not None and not env.strip():
        raise TokensmithError(
            "TOKENSMITH_HOME is set but empty: give it a folder, or unset it for ~/.tokensmith "
            '(is the variable in TOKENSMITH_HOME="$VAR" unset?)'
        )
    return Path(env or DEFAULT_HOME).expanduser()


def home_flags(home: str | Path | None) -> list[str]:
    """[] when `home` is ~/.tokensmith and $TOKENSMITH_HOME (if set) names it too, else ['--home', HOME]: a
    printed command stores where its run did, in this shell and in one without $TOKENSMITH_HOME."""
    if home is None:
        return []
    home = Path(home).expanduser().resolve()
    defaults = {Path(DEFAULT_HOME).expanduser().resolve()}
    if os.environ.get("TOKENSMITH_HOME"):  # where the command would run in this shell
        defaults.add(Path(os.environ["TOKENSMITH_HOME"]).expanduser().resolve())
    return [] if defaults == {home} else ["--home", str(home)]


def launch_command(config_path: str | Path, *, processes: int = 1, cpu: bool = False, extra=()) -> str:
    """The command that runs a config file on `processes` processes: `accelerate launch`, or on a CPU
    torchrun (Accelerate's launcher starts one CPU process, whatever --num_processes says)."""
    tail = ["-m", "trainers", "--config", str(config_path), *extra]
    if processes > 1 and cpu:
        torchrun = ["torchrun", "--standalone", "--nproc_per_node", str(processes), *tail]
        return "ACCELERATE_USE_CPU=1 " + shlex.join(torchrun)
    count = ["--num_processes", str(processes)] if processes > 1 else []
    return shlex.join(["accelerate", "launch", *count, *tail])


def equivalent_commands(
    cfg: TrainConfig,
    config_path: str | Path,
    *,
    home: str | Path | None = None,
    processes: int = 1,
    cpu: bool = False,
) -> list[str]:
    """The single-process command and the `accelerate launch` form of this run (of its `processes`).

    P processes compute what one process computes with P times the gradient accumulation, so the single-
    process command accumulates grad_accum × P; the launch keeps the config's per-process values.
    """
    where = home_flags(home)
    alone = cfg.replace(grad_accum=cfg.grad_accum * processes) if processes > 1 else cfg
    single = shlex.join(["tokensmith", "train", *to_flags(alone), *where])
    return [single, launch_command(config_path, processes=processes, cpu=cpu, extra=where)]


# How the note on continuing a run from its printed commands begins: advice for the CLI alone (the studio and
# `tokensmith demo` continue runs their own way, and leave it out).
RESUME_NOTE = "once this run has begun"


def command_notes(cfg: TrainConfig, *, processes: int = 1) -> list[str]:
    """What to know about the equivalent commands (command.txt's comment lines; the CLI prints them)."""
    notes = []
    if processes > 1:
        notes.append(
            f"the single-process command has --grad-accum {cfg.grad_accum * processes}: one process "
            f"accumulating {processes}x the micro-batches computes what this run's {processes} processes "
            f"at --grad-accum {cfg.grad_accum} compute"
        )
    if cfg.run_dir:  # both name the run folder, which refuses a second run
        again = "--run-dir NEW_DIR (and --overwrite once it is stored) to run it again"
        notes.append(
            f"{RESUME_NOTE}, add --resume to the launch command to continue it (on the same "
            f"{processes} processes), or to either command {again}"
            if processes > 1
            else f"{RESUME_NOTE}, add --resume to either command to continue it, or {again}"
        )
    return notes


def resume_command(run_dir: Path, home: str | Path | None) -> str:
    """`tokensmith train --run-dir RUN [--home HOME] --resume`: what continues the run in `run_dir`."""
    return shlex.join(["tokensmith", "train", "--run-dir", str(run_dir), *home_flags(home), "--resume"])
