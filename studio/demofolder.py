"""`tokensmith demo`'s output folder: where it goes (--out, else HOME/demo), what it may replace there (only
an earlier demo's run, never another run nor one still training), and its writes, whole or not at all, with a
full or read-only disk said in one line."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

DEMO_NAME = re.compile(r"demo-[a-z]+-[a-z]+")  # the token's name: demo-COLOUR-SHAPE


def demo_folder(args) -> Path:
    """The output folder (--out, else HOME/demo), refused before anything is written when it, or a folder
    above it, is a file; the message names that file and what to pass instead."""
    from embeddings.files import refuse_file_as_folder

    if args.out:
        out = Path(args.out).expanduser()
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"--out {out} is a file: give a folder for the demo's images and run")
        refuse_file_as_folder(out, "--out")  # 'notes is a file, not a folder', not '[Errno 20]' later
    else:
        out = args.home / "demo"
        if os.path.lexists(out) and not out.is_dir():
            raise NotADirectoryError(
                f"{out} is a file, not a folder: move it, or pass --out with a folder for the demo's images "
                "and run"
            )
    refuse_file_as_home(args.home)
    return out


def refuse_file_as_home(home: Path) -> None:
    """A home that is a file (or lies below one) holds no store: say so now, as `runs` does, rather than
    after rendering, or as '[Errno 20]' while making HOME/demo."""
    for above in (home, *home.parents):
        if above.is_dir():
            return
        if os.path.lexists(above):
            where = "" if above == home else f", so the tokensmith home {home} cannot be made"
            what = " (the tokensmith home)" if above == home else ""
            raise NotADirectoryError(
                f"{above}{what} is a file, not a folder{where}: pass --home with a folder"
            )


def earlier_demo_run(run: Path) -> bool:
    """Whether `run` (OUT/run) holds a training run that an earlier demo made, which this one replaces (the
    demo is meant to be re-run); False when it holds no run. Another run there (`train --run-dir OUT/run`)
    is refused, before anything is written: deleting it would lose its checkpoints and whatever else the
    user keeps in it.

    A demo run that a live trainer holds (another `tokensmith demo` still training) is refused too.
    A demo run is told by its config.toml, which every run writes and the demo's own runs (old ones too)
    fill alike: the demo model, a `demo-COLOUR-SHAPE` name, and images in the `images` folder beside it."""
    import tomllib

    from embeddings.text import printable
    from trainers.runfolder import RunFolder

    config = run / "config.toml"
    if not (run / "progress.jsonl").is_file() and not config.is_file():
        return False
    try:
        values = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        values = {}
    name, images, run_dir = (str(values.get(key, "")) for key in ("name", "images", "run_dir"))
    if (
        values.get("model") == "demo"
        and DEMO_NAME.fullmatch(name)
        and Path(images) == Path(run_dir).parent / "images"
        and Path(run_dir).name == "run"
    ):
        if (pid := RunFolder(run).holder()) is not None:  # a demo still training there: never delete it
            raise FileExistsError(
                f"a demo is training in {run} (process {pid}); wait for it to finish or stop it, or pass "
                "another --out"
            )
        return True
    of = f" of '{printable(name)}'" if name else " (its config.toml is missing or unreadable)"
    raise FileExistsError(f"{run} is a training run{of}; choose another --out")


def prepare_demo_folder(out: Path, replace_run: bool) -> None:
    """Make the output folder, with an earlier demo's run folder in it removed when `replace_run`."""
    import shutil

    if replace_run:
        shutil.rmtree(out / "run")
    (out / "images").mkdir(parents=True, exist_ok=True)


def save_png(image, path) -> None:
    """Write a PNG completely or not at all (a full disk leaves no truncated file, an older one intact)."""
    from embeddings.files import atomic_write

    with demo_writes(path):
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


@contextmanager
def demo_writes(path):
    """A full or read-only disk while writing `path` as one line that names it and says what to do."""
    from embeddings.files import write_failure_error

    try:
        yield
    except OSError as exc:
        raise write_failure_error(exc, path, then="run `tokensmith demo` again") from None
