"""User guide modules (`--guide-module pkg.mod:fn`, `module=` guides): import them from the current folder,
run the code a replay's provenance hashed (a module edited since it was imported is reloaded), and turn
whatever the user's code raises into a GuideError that names the guide and the line.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from importlib.machinery import FrozenImporter, PathFinder
from pathlib import Path

import torch

from embeddings.errors import TokensmithError
from embeddings.files import file_sha256

Loss = Callable[[torch.Tensor], torch.Tensor]  # image (B, 3, H, W) in [0, 1] -> scalar

SIGNATURE = "function(image) -> scalar tensor, image (B, 3, H, W) in [0, 1]"


class GuideError(TokensmithError, ValueError):
    """A guide spec that cannot be used; says what to write instead."""


def module_loss(target: str) -> Loss:
    """'package.module:function' -> the function, imported (the current folder is importable).

    Errors name the guide as the studio's guide box writes it (`module=...`), which the CLI's --guide-module
    adds too, so one message reads right in both doors."""
    name = f"guide 'module={target}'"
    module_name, sep, func_name = target.partition(":")
    if not sep or not module_name or not func_name:
        raise GuideError(f"{name}: write module:function, e.g. my_losses:more_blue")
    _importable_cwd()
    try:
        module = _current_module(module_name)
    except ImportError as exc:
        raise GuideError(f"{name}: cannot import {module_name!r} ({exc})") from exc
    except SyntaxError as exc:  # IndentationError too
        raise GuideError(f"{name}: {_where_syntax(exc)}: {exc.msg}; fix the module's source") from exc
    except Exception as exc:  # the module's own top-level code may raise anything: name the guide, keep it
        where = module_source(module_name)
        raise GuideError(f"{name}: importing {module_name} failed ({_what(exc, where)}); fix it") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise GuideError(f"{name}: {module_name} has no function {func_name!r}")
    try:
        inspect.signature(func).bind(None)
    except TypeError:
        raise GuideError(
            f"{name}: {module_name}.{func_name}{inspect.signature(func)} cannot be called as {SIGNATURE}"
        ) from None
    except ValueError:  # some builtins have no signature to check: the first call says
        pass
    return func


def _where_syntax(exc: SyntaxError) -> str:
    """'badmod.py line 2' (the file's name: the user knows where their module is)."""
    return f"{Path(exc.filename).name if exc.filename else 'the module'} line {exc.lineno}"


def _what(exc: BaseException, source: str | Path | None) -> str:
    """The error and the line of the guide's module `source` that raised it (its innermost frame there):
    "NameError: name 'x' is not defined, at my_losses.py line 3"."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if source is None:
        return text
    source = Path(source).resolve()
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [frame.lineno for frame in frames if Path(frame.filename).resolve() == source]
    return f"{text}, at {source.name} line {lines[-1]}" if lines else text


def _importable_cwd() -> None:
    """Guide modules are imported from the current folder too (as `python -c` would)."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


_LOADED_SOURCES: dict[str, str] = {}  # guide module -> sha256 of the source this process runs


def _current_module(module_name: str):
    """The module as its source file is now: a long-lived process (the studio) reloads a module edited since
    it was imported, so the code that runs is the code whose hash the image's provenance records."""
    loaded = module_name in sys.modules
    module = importlib.import_module(module_name)
    source = module_source(module_name)
    if source is None:
        return module
    digest = file_sha256(source)
    if loaded and _LOADED_SOURCES.get(module_name) != digest:
        with contextlib.suppress(NotImplementedError, OSError):  # a .pyc of the same size and second is stale
            Path(importlib.util.cache_from_source(str(source))).unlink(missing_ok=True)
        module = importlib.reload(module)
    _LOADED_SOURCES[module_name] = digest
    return module


def ran_sha256(module_name: str) -> str:
    """The sha256 of the source of `module_name` that this process runs (after module_loss imported it)."""
    return _LOADED_SOURCES[module_name]


def module_source(module_name: str, *, folders: Sequence[Path] = ()) -> Path | None:
    """The source file of a guide module as it would be imported now (from `folders`, then the import path),
    or None; found without importing anything. importlib.util.find_spec would import a dotted name's parent
    packages, running their code, and a replayed image's provenance may name any module."""
    parts = module_name.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    _importable_cwd()
    search: list[str] | None = [*map(str, folders), *sys.path]
    origin = None
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        loaded = sys.modules.get(name)
        if loaded is not None:  # what an import of it, or of a module inside it, uses
            origin, locations = getattr(loaded, "__file__", None), getattr(loaded, "__path__", None)
        elif search is None or _not_from_files(name):
            return None
        else:
            spec = PathFinder.find_spec(name, search)  # reads folders; runs no module's code
            if spec is None:
                return None
            origin, locations = spec.origin, spec.submodule_search_locations
        search = list(locations) if locations is not None else None  # None: a module, not a package
    return Path(origin).resolve() if origin and Path(origin).is_file() else None


def _not_from_files(name: str) -> bool:
    """Whether `name` imports as a built-in or frozen module: code that is not the file a search finds."""
    return name in sys.builtin_module_names or FrozenImporter.find_spec(name) is not None


def import_root(module_name: str, path: Path) -> Path | None:
    """The folder from which `module_name` imports as the file `path`, or None when the path does not fit
    the name: /w for my_losses at /w/my_losses.py, /w for pkg.losses at /w/pkg/losses.py or pkg at
    /w/pkg/__init__.py."""
    parts = module_name.split(".")
    for tail in ([*parts[:-1], f"{parts[-1]}.py"], [*parts, "__init__.py"]):
        if len(path.parts) > len(tail) and list(path.parts[-len(tail) :]) == tail:
            return Path(*path.parts[: -len(tail)])
    return None


@contextlib.contextmanager
def importable_from(folders: list[Path]) -> Iterator[None]:
    """`folders` on the import path for the duration (a replay's guide modules, by their recorded files)."""
    added = [str(folder) for folder in folders if str(folder) not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


@contextlib.contextmanager
def users_code(spec: str, source: str | Path | None) -> Iterator[None]:
    """Run a guide's loss (`spec` as the user wrote it, `source` its module's file): whatever the user's
    function raises becomes a GuideError naming the guide and the line, with the original kept as its cause
    (`--debug` shows its traceback)."""
    try:
        yield
    except GuideError:
        raise
    except Exception as exc:  # user code may raise anything; KeyboardInterrupt still stops the run
        what = _what(exc, source)
        misuse = isinstance(exc, TypeError | ValueError | RuntimeError | IndexError | AttributeError)
        hint = f"it must be {SIGNATURE}" if misuse else "fix the function"  # a tensor misused, or a plain bug
        raise GuideError(f"guide {spec!r} failed ({what}): {hint}") from exc
