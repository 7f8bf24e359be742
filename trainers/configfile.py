"""Reading a training config: a TOML or YAML file and CLI flag values into a TrainConfig (trainers/config.py),
each value converted to its key's type, and unknown keys refused with the valid ones (and the one meant)."""

from __future__ import annotations

import dataclasses
import reprlib
import tomllib
from pathlib import Path

from embeddings.files import read_user_text
from trainers.config import FIELDS, TYPES, ConfigError, TrainConfig, default_of

# How a refused value shows in a message: a few items and characters of it, never all of a 10 MB string or
# of a list nested a thousand deep. Within 80 characters however it is nested.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 4, 4, 60, 60
SHOWN_CHARS = 80
MAX_KEYS_SHOWN = 10  # unknown keys named in one message


def _short_repr(value) -> str:
    """`value`'s repr as a config message shows it: 'lol' stays 'lol'; a long one is cut to about 80
    characters, ending '...' ("['lol', 'lol', 'lol', 'lol', ...]")."""
    try:
        return _cut(_SHORT.repr(value))
    except ValueError:  # an int of more than 4300 digits (TOML's 0x... reads any length), which repr refuses
        return "a whole number too long to show"


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


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
        raise ConfigError(f"{name} must be true or false, got {_short_repr(value)}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} must be a whole number, got {_short_repr(value)}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a whole number, got {_short_repr(value)}") from None
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {_short_repr(value)}") from None
    if kind == list[str]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{name} must be a list of strings, got {_short_repr(value)}")
        return [str(item).strip() for item in items if str(item).strip()]
    if isinstance(value, dict | list):
        raise ConfigError(f"{name} must be a single value, got {_short_repr(value)}")
    if isinstance(value, bool):  # YAML reads a bare yes/no/on/off as a boolean
        raise ConfigError(f'{name} must be text, got {_short_repr(value)}; quote it in YAML ({name}: "yes")')
    if isinstance(value, int | float):  # YAML reads 0123 as 83 (octal) and 1_000 as 1000: not what was typed
        raise ConfigError(
            f"{name} must be text, got the number {_short_repr(value)}; quote it "
            f'({name}: "...") so the file keeps it as written'
        )
    return str(value)


def from_mapping(values: dict, *, base: TrainConfig | None = None) -> TrainConfig:
    """Build a config from a {key: value} mapping; unknown keys are an error listing the valid ones."""
    # YAML keys may be numbers (`1: 2`), and any key may be long: each is shown as short text
    unknown = sorted({_key_text(key) for key in values if key not in FIELDS})
    if unknown:
        listed = ", ".join(unknown[:MAX_KEYS_SHOWN]) + (
            f" and {len(unknown) - MAX_KEYS_SHOWN} more" if len(unknown) > MAX_KEYS_SHOWN else ""
        )
        raise ConfigError(
            f"unknown training config key(s) {listed}{_did_you_mean(unknown[:MAX_KEYS_SHOWN])}; valid keys: "
            f"{', '.join(sorted(FIELDS))}"
        )
    changes = {key: coerce(key, value) for key, value in values.items()}
    return dataclasses.replace(base or TrainConfig(), **changes)


def _key_text(key) -> str:
    """A config key as a message names it: the key itself (a number as its digits), cut to about 80
    characters."""
    return _cut(key) if isinstance(key, str) else _short_repr(key)


def _did_you_mean(unknown: list[str]) -> str:
    """' (did you mean batch_size?)' for keys that are near a valid one: a flag's spelling (batch-size), a
    typo (learning_rat)."""
    import difflib

    guesses = []
    for key in unknown:
        spelled = key.strip().lstrip("-").replace("-", "_").lower()
        close = difflib.get_close_matches(spelled, FIELDS, n=1, cutoff=0.8)  # an exact match first
        guesses += [f"{key} -> {close[0]}"] if close else []
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def read_file(path: str | Path) -> dict:
    """The {key: value} mapping of a TOML (.toml) or YAML (.yaml/.yml) config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a .toml or .yaml file")
    text = read_user_text(path, "config file", ConfigError)
    suffix = path.suffix.lower()  # RUN.TOML, saved by a tool that upper-cases names
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    try:
        values = _parsed_toml(text, path) if suffix == ".toml" else _parsed_yaml(text, path)
    except RecursionError:  # '[[[[...' a thousand deep: both parsers recurse per level
        raise ConfigError(
            f"config file {path} nests lists or tables hundreds deep; a training config holds plain values"
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold key = value pairs at the top level")
    if set(values) == {"train"}:  # a [train] table holding the keys
        values = values["train"]
        if not isinstance(values, dict):
            raise ConfigError(
                f"config file {path}: train = {_short_repr(values)} is not a table; put the keys at the top "
                "level or under a [train] table (TOML) or train: mapping (YAML)"
            )
    return values


def _parsed_toml(text: str, path: Path):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _parsed_yaml(text: str, path: Path):
    import yaml

    try:
        _refuse_aliases(text, path)
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc) -> str:
    """PyYAML's error on one line, where it is (its own text spans lines, with the source and a caret):
    "expected ',' or ']', but got '<stream end>' at line 3, column 1 (while parsing a flow sequence from
    line 2, column 7)"."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    text = problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")
    context, where = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        since = f" from line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        text += f" ({context}{since})"
    return text


def _refuse_aliases(text: str, path: Path) -> None:
    """ConfigError at the first YAML anchor (&a) or alias (*a): a training config needs none, and aliases
    nested a few deep make 300 bytes a value of millions of items (a "billion laughs" file). Read as a
    stream of events, so nothing is expanded on the way."""
    import yaml

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        anchor = getattr(event, "anchor", None)  # an alias's is the anchor it repeats
        if anchor is not None:
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise ConfigError(
                f"config file {path} uses the YAML {kind}{_cut(anchor)} (line {event.start_mark.line + 1}); "
                "a training config takes plain values: write each value out where it is used"
            )


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
