"""What the command modules share: the one way a subcommand's parser is built (`add_command`), the store
under --home (`store_of`), the model options and loading (--model, --model-config, `load_model_noting`,
`check_model_options`: every command that loads a model), and the sampling and img2img options and checks of
the image commands (generate, variations, grid, schedule, replay).

Nothing here imports torch at module level: `tokensmith --help` builds every parser from it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embeddings.files import refuse_file_as_folder

# The names of studio.generation.schedule.SCHEDULERS, repeated so `--help` does not import torch (a test
# checks they agree).
SCHEDULERS = ("ddim", "ddpm", "dpm", "euler", "euler-a", "heun", "pndm", "unipc")
DEFAULT_SCHEDULER = "dpm"


# --- building a command ---


def add_command(
    subparsers, common, name: str, help_text: str, epilog: str, *, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand: `help_text` is its line in `tokensmith --help` and, capitalised with a full stop, the
    sentence under its `usage:` unless `description` says more there; the epilog (examples) keeps its
    layout."""
    return subparsers.add_parser(
        name,
        parents=[common],
        help=help_text,
        description=description or help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def store_of(args):
    """The store under the command's --home."""
    from embeddings import Store

    return Store.for_home(args.home)


# --- the model ---


def model_options(parser: argparse.ArgumentParser) -> None:
    """--model (the demo world by default) and --model-config, for a command whose --model is a choice."""
    parser.add_argument(
        "--model",
        default="demo",
        help="demo (default), a diffusers folder, a .safetensors/.ckpt, or a hub id",
    )
    model_config_option(parser)


def model_config_option(parser: argparse.ArgumentParser) -> None:
    """--model-config DIR: where a single-file checkpoint finds the configs of its architecture offline
    (every command with --model has it; checked by `check_model_options`)."""
    parser.add_argument(
        "--model-config", metavar="DIR", help="configs for a single-file checkpoint --model (offline)"
    )


def load_model_noting(spec: str, config: str | None = None):
    """The model `spec`, saying on stderr that it loads (a large one takes a while)."""
    from trainers.models import load_model

    print(f"loading model {spec} ...", file=sys.stderr)
    return load_model(spec, config=config)


def check_model_options(model: str | None, model_config: str | None, command: str) -> None:
    """Before any model loads: a --model-config path that does not exist is refused (exit 1); one given with a
    --model that does not read it (not a single-file checkpoint) is ignored, with a warning on stderr."""
    from trainers.pathchecks import MODEL_CONFIG_UNUSED, check_model_config, model_config_unused

    if not model_config:
        return
    check_model_config(model_config)
    if model_config_unused(model or "demo", model_config):
        print(f"tokensmith {command}: warning: {MODEL_CONFIG_UNUSED}", file=sys.stderr)


# --- sampling and img2img ---


def sampling_options(parser: argparse.ArgumentParser, *, seeds: bool = False) -> None:
    """Prompt and sampler options of generate, variations and grid (`seeds`: the command has --seeds)."""
    parser.add_argument("--negative", default="", help="negative prompt (may use <name>)")
    if not seeds:
        parser.add_argument(
            "--seed", type=int, default=0, help="seed of the first image (default 0); image k uses seed+k"
        )
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: demo 4, SDXL 5, else 7.5)",
    )
    parser.add_argument(
        "--scheduler",
        default=DEFAULT_SCHEDULER,
        choices=sorted(SCHEDULERS),
        help=f"sampler (default {DEFAULT_SCHEDULER})",
    )
    parser.add_argument("--width", type=int, help="image width (default: the model's native size)")
    parser.add_argument("--height", type=int, help="image height (default: the model's native size)")
    parser.add_argument(
        "--swap",
        action="append",
        default=[],
        metavar="WORD=<name>",
        help="make WORD stand for an embedding (repeatable)",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="let in embeddings that fit this model only partly: an SD 1.x one goes into SDXL's clip_l "
        "(clip_g gets zero vectors), an SDXL one's clip_l half into SD 1.x; a weaker effect",
    )
    parser.add_argument(
        "--guide",
        action="append",
        default=[],
        metavar="SPEC",
        help="loss guide: color=NAME|#hex, brightness=F, contrast=F, match=PATH; "
        "add ,scale=S ,every=K (repeatable)",
    )
    parser.add_argument(
        "--guide-module",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="your own loss: function(image (B,3,H,W) in [0,1]) -> scalar; "
        "add ,scale=S ,every=K (repeatable)",
    )


def img2img_options(parser: argparse.ArgumentParser, init_help: str) -> None:
    """--init-image and --strength."""
    parser.add_argument("--init-image", type=Path, help=init_help)
    parser.add_argument(
        "--strength",
        type=float,
        default=0.6,
        help="img2img: how much of the schedule to re-run, 0-1 (default 0.6)",
    )


# --- output files ---


def force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing output file")


def refuse_existing(path: Path, force: bool) -> None:
    """FileExistsError naming the file and the flag, unless `force` or `path` is new; and, before anything
    runs, an error when a folder on the way to it is a file (`--out notes/x.png` with a file `notes`)."""
    refuse_file_as_folder(path.parent)
    if path.exists() and not force:
        raise exists_error(path)


def exists_error(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} already exists: pass --force to replace it, or choose another --out")


def check_img2img(init_image: Path | None, strength: float, schedulers: list[str]) -> None:
    """Before any model loads: with an init image, a strength that runs steps, a file that exists and
    `schedulers` (every one the run uses: a grid may sweep them) that honour strength (not pndm)."""
    from studio.generation.img2img import check_img2img_scheduler, check_strength

    if init_image is not None:
        for scheduler in schedulers:
            check_img2img_scheduler(scheduler)
        check_strength(strength)
        check_init_image(init_image)


def check_init_image(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"--init-image {path} is a folder: give an image file (PNG or JPEG)")
    if not path.is_file():
        raise FileNotFoundError(f"--init-image {path} does not exist")


def stored_preview(path: Path, command: str, instead: str):
    """The store's thumbnail at `path` as RGB, or None when there is none or it cannot be read (not an image,
    truncated, stuffed with text chunks): it is optional, so a broken one is a warning on stderr that says
    what the command does `instead` ("uploading without it"), and the command goes on."""
    from PIL import Image

    if not path.is_file():
        return None
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        print(
            f"tokensmith {command}: warning: the preview {path} cannot be read ({exc}); {instead}",
            file=sys.stderr,
        )
        return None
