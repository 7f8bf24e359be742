"""Reading a training config: a TOML or YAML file and CLI flag values into a TrainConfig (trainers/config.py),
each value converted to its key's type, and unknown keys refused with the valid ones (and the one meant)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tomllib

from trainers.config import FIELDS, TYPES, ConfigError, TrainConfig, default_of


def coerce(name: str, value):
    """Convert a file or flag value to the field's type, or say what was expected."""
    kind = TYPES[name]
    if value is None:  # YAML's `name:` with nothing after it (or `~`): never the text "None"
        default = default_of(name)
        shown = f" ({default!r})" if default not in ("", []) else ""
        raise ConfigError(f"{name} is empty; give it a value, or delete the line for its default{shown}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if kind == list[str]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        return [str(item).strip() for item in items if str(item).strip()]
    if isinstance(value, dict | list):
        raise ConfigError(f"{name} must be a single value, got {value!r}")
    if isinstance(value, bool):  # YAML reads a bare yes/no/on/off as a boolean
        raise ConfigError(f'{name} must be text, got {value!r}; quote it in YAML ({name}: "yes")')
    if isinstance(value, int | float):  # YAML reads 0123 as 83 (octal) and 1_000 as 1000: not what was typed
        raise ConfigError(
            f'{name} must be text, got the number {value!r}; quote it ({name}: "...") so the file keeps '
            "it as written"
        )
    return str(value)


def from_mapping(values: dict, *, base: TrainConfig | None = None) -> TrainConfig:
    """Build a config from a {key: value} mapping; unknown keys are an error listing the valid ones."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown training config key(s) {', '.join(unknown)}{_did_you_mean(unknown)}; valid keys: "
            f"{', '.join(sorted(FIELDS))}"
        )
    changes = {key: coerce(key, value) for key, value in values.items()}
    return dataclasses.replace(base or TrainConfig(), **changes)


def _did_you_mean(unknown: list[str]) -> str:
    """' (did you mean batch_size?)' for keys that are near a valid one: a flag's spelling (batch-size), a
    typo (learning_rat)."""
    import difflib

    guesses = []
    for key in unknown:
        spelled = str(key).strip().lstrip("-").replace("-", "_").lower()
        close = difflib.get_close_matches(spelled, FIELDS, n=1, cutoff=0.8)  # an exact match first
        guesses += [f"{key} -> {close[0]}"] if close else []
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def read_file(path: str | Path) -> dict:
    """The {key: value} mapping of a TOML (.toml) or YAML (.yaml/.yml) config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a .toml or .yaml file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    suffix = path.suffix.lower()  # RUN.TOML, saved by a tool that upper-cases names
    if suffix == ".toml":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    else:
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold key = value pairs at the top level")
    if set(values) == {"train"}:  # a [train] table holding the keys
        values = values["train"]
        if not isinstance(values, dict):
            raise ConfigError(
                f"config file {path}: train = {values!r} is not a table; put the keys at the top level or "
                "under a [train] table (TOML) or train: mapping (YAML)"
            )
    return values


def load(path: str | Path | None = None, *, overrides: dict | None = None) -> TrainConfig:
    """The config from a file (if any) with `overrides` (e.g. CLI flags) applied on top.

    The values are checked once merged, so a flag can mend a value the file holds that is no longer valid
    (an old run's config.toml, resumed with `--hub-license other`); an error that the file's own values
    cause names the file."""
    values = read_file(path) if path else {}
    try:
        return from_mapping({**values, **(overrides or {})})
    except ConfigError as exc:
        if not path:
            raise
        try:
            from_mapping(values)
        except ConfigError:  # the file's own values: say where they are
            raise ConfigError(f"config file {path}: {exc}") from None
        raise
