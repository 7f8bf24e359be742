"""Build the demo-world model from nothing: `python -m demo.build` (seeded, two CPU threads, ~55 min).

Steps: render a captioned dataset of the world, build the tokenizer vocabulary, train the VAE, encode the
dataset to latents once, train UNet + text encoder jointly (v-prediction, EMA), and write the model in
diffusers layout into `demo/model/` (atomically: a temp folder, then a rename). An interim model is exported
part-way so other work can use a real model before the build ends. Logs to `demo/build.log`, draws
`demo/samples.png`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from demo import DEMO_MODEL_DIR, world
from demo.architecture import (
    Architecture,
    make_scheduler,
    make_text_encoder,
    make_unet,
    make_vae,
)
from demo.training import encode_latents, train_unet, train_vae
from demo.vocab import build_tokenizer

DEMO_DIR = Path(__file__).parent
METADATA_FILE = "tokensmith_demo.json"  # also the marker trainers.models uses to detect the demo family


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the shipped model; the defaults are what `python -m demo.build` runs."""

    seed: int = 0
    arch: Architecture = field(default_factory=Architecture)
    num_images: int = 16_000
    vae_steps: int = 1500  # at most; the VAE stops earlier when vae_minutes run out
    vae_minutes: float = 5.0  # 0: no time limit (exactly vae_steps)
    vae_batch: int = 32
    vae_crop: int = 16  # the VAE is fully convolutional: train on crops, 4× cheaper per step
    vae_lr: float = 1e-3
    unet_steps: int = 8000  # at most; the plan shrinks to what fits in unet_minutes
    unet_minutes: float = 45.0  # 0: no time limit (exactly unet_steps, bit-for-bit reproducible)
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup_steps: int = 200
    snr_gamma: float = 5.0  # min-SNR-γ loss weights (Hang et al. 2023): less on near-clean steps; 0: off
    caption_dropout: float = 0.1  # empty captions, so classifier-free guidance works
    ema_decay: float = 0.999
    interim_fraction: float = 0.3  # export an interim model after this share of the UNet plan (0: never)
    out: Path = DEMO_MODEL_DIR
    log: Path = DEMO_DIR / "build.log"
    samples: Path | None = DEMO_DIR / "samples.png"  # None: no sample grid
    evaluate: bool = True  # a quick judge-scored evaluation of the final model, into the log
    threads: int = 2  # torch threads: both cores of the build machine (1 is faster only on a busy one)


class Log:
    """Timestamped lines to a log file and stderr."""

    def __init__(self, path: Path):
        self.start = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", encoding="utf-8")

    def __call__(self, message: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {message}"
        print(line, file=sys.stderr, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


# --- data ---
def render_dataset(cfg: BuildConfig) -> tuple[torch.Tensor, list[world.Concept]]:
    """`num_images` training renders as (N, 3, R, R) floats in [-1, 1] and the concept of each."""
    rng = random.Random(cfg.seed)
    concepts = [world.sample_training_concept(rng) for _ in range(cfg.num_images)]
    pixels = np.stack([np.asarray(world.render(c, rng, resolution=cfg.arch.resolution)) for c in concepts])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, R, R)
    return images, concepts


# --- export ---
def make_pipeline(parts: dict, arch: Architecture):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=make_scheduler(arch),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def metadata(cfg: BuildConfig, *, stage: str, unet_step: int, elapsed_s: float, scaling: float) -> dict:
    """What the model folder's tokensmith_demo.json says: the world, its held-out concepts and how it was
    built (with the build's paths relative to the repo, so the shipped file names no one's folders)."""
    return {
        "name": "tokensmith demo world",
        "resolution": cfg.arch.resolution,
        "latent_size": cfg.arch.resolution // 2,
        "shapes": list(world.SHAPES),
        "colours": {k: list(v) for k, v in world.COLOURS.items()},
        "train_colours": list(world.TRAIN_COLOURS),
        "backgrounds": {k: list(v) for k, v in world.BACKGROUNDS.items()},
        "default_background": world.DEFAULT_BACKGROUND,
        "sizes": dict(world.SIZES),
        "positions": dict(world.POSITION_PHRASES),
        "patterns": list(world.PATTERNS),
        "held_out": {
            "combinations": [f"{c} {s}" for c, s in world.HELD_OUT_COMBOS],
            "colours": list(world.HELD_OUT_COLOURS),
        },
        "caption_words": world.caption_words(),
        "prediction_type": "v_prediction",
        "vae_scaling_factor": scaling,
        "build": {
            "stage": stage,
            "unet_step": unet_step,
            "elapsed_s": round(elapsed_s, 1),
            "config": json.loads(json.dumps(asdict(cfg), default=portable_path)),
        },
    }


def portable_path(value) -> str:
    """A config value JSON can't hold, as the build metadata records it: a path relative to the repo when
    inside it (else as given), anything else as its str."""
    if not isinstance(value, Path):
        return str(value)
    try:
        return value.resolve().relative_to(DEMO_DIR.parent.resolve()).as_posix()
    except ValueError:
        return str(value)


def export(pipe, out: Path, meta: dict) -> None:
    """Write the pipeline to `out` atomically: save into a sibling temp folder, then swap it in."""
    out = Path(out)
    tmp, old = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def check_out(cfg: BuildConfig) -> None:
    """SystemExit, before anything is built, for an --out the export would wrongly replace: the export
    renames the folder away and deletes it, so it must be new, empty or an earlier build's model; and the log
    and sample grid must not lie inside it."""
    out = Path(cfg.out).resolve()
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {cfg.out} is a file: give a new or empty folder for the model")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not (out / "model_index.json").is_file():
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise SystemExit(
            f"--out {cfg.out} holds files that are not a model ({shown}); the export replaces the whole "
            "folder: give a new or empty folder"
        )
    for flag, path in (("--log", cfg.log), ("--samples", cfg.samples)):
        if path is not None and out in Path(path).resolve().parents:
            raise SystemExit(
                f"{flag} {path} is inside --out {cfg.out}, which the export replaces: put it beside"
            )


def finished_model(folder: Path) -> bool:
    """Whether `folder` holds a finished build's model (its metadata's stage is 'final')."""
    try:
        meta = json.loads((Path(folder) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("build") or {}).get("stage") == "final"


def folder_megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


# --- the whole build ---
def build(cfg: BuildConfig) -> Path:
    """Run every step and write the model to `cfg.out`; returns that folder."""
    from demo.evaluate import evaluate, format_report, sample_grid

    check_out(cfg)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    log = Log(cfg.log)
    log(f"build config: {json.dumps(asdict(cfg), default=str)}")
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    images, concepts = render_dataset(cfg)
    log(f"rendered {len(images)} images of {cfg.arch.resolution}px")
    tokenizer = build_tokenizer(world.caption_words())
    log(f"tokenizer: {len(tokenizer)} tokens, max length {tokenizer.model_max_length}")

    vae = make_vae(cfg.arch)
    log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters")
    train_vae(vae, images, cfg, log)
    latents = encode_latents(vae, images)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    del images
    log(f"encoded latents {tuple(latents.shape)}, scaling_factor {scaling:.4f}")

    parts = {"vae": vae, "tokenizer": tokenizer}
    parts["text_encoder"] = make_text_encoder(cfg.arch, tokenizer)
    parts["unet"] = make_unet(cfg.arch, latents.shape[-1])
    for key in ("unet", "text_encoder"):
        log(f"{key}: {sum(p.numel() for p in parts[key].parameters()) / 1e6:.2f} M parameters")

    # an interim model never replaces a finished one (a rebuild stopped part-way must not leave demo/model
    # 30% trained): it goes beside it, and the final export replaces both
    interim_out = cfg.out.with_name(cfg.out.name + ".interim") if finished_model(cfg.out) else cfg.out

    def save(ema: dict, step: int, stage: str, *, evaluate_it: bool = False) -> None:
        pipe = make_pipeline({**parts, **ema}, cfg.arch)
        meta = metadata(cfg, stage=stage, unet_step=step, elapsed_s=log.elapsed(), scaling=scaling)
        target = interim_out if stage == "interim" else cfg.out
        export(pipe, target, meta)
        log(f"exported {stage} model (unet step {step}) to {target}: {folder_megabytes(target):.2f} MB")
        if stage == "final" and interim_out != cfg.out:
            shutil.rmtree(interim_out, ignore_errors=True)
        if evaluate_it:
            log(f"quick evaluation ({stage}):\n{format_report(evaluate(pipe, quick=True))}")

    trained = train_unet(parts, latents, concepts, cfg, log, on_interim=lambda e, s: save(e, s, "interim"))
    ema = {"unet": trained["unet"], "text_encoder": trained["text_encoder"]}
    save(ema, trained["steps"], "final", evaluate_it=cfg.evaluate)
    if cfg.samples:
        sample_grid(make_pipeline({**parts, **ema}, cfg.arch)).save(cfg.samples)
        log(f"wrote sample grid {cfg.samples}")
    log(f"build finished in {log.elapsed() / 60:.1f} min")
    return cfg.out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.build",
        description="Build the demo-world model (seeded; about 52 minutes on a 2-core CPU).",
        epilog="Example: python -m demo.build                      # rebuild demo/model\n"
        "         python -m demo.build --out /tmp/m --num-images 2000 --vae-minutes 0 --vae-steps 50 \\\n"
        "           --unet-minutes 0 --unet-steps 100   # a smoke build",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = BuildConfig()
    parser.add_argument("--out", type=Path, default=defaults.out, help="model folder (default: demo/model)")
    parser.add_argument(
        "--log", type=Path, help="build log (default: demo/build.log; with --out DIR, DIR.build.log)"
    )
    parser.add_argument(
        "--samples",
        type=Path,
        help="sample grid (default: demo/samples.png; with --out DIR, DIR.samples.png)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps, help="at most this many")
    parser.add_argument("--vae-minutes", type=float, default=defaults.vae_minutes, help="0: no time limit")
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps, help="at most this many")
    parser.add_argument(
        "--unet-minutes",
        type=float,
        default=defaults.unet_minutes,
        help="0: run exactly --unet-steps",
    )
    parser.add_argument(
        "--interim-fraction", type=float, default=defaults.interim_fraction, help="0: no interim"
    )
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    shipped = Path(args.out).resolve() == Path(defaults.out).resolve()
    out, beside = Path(args.out), Path(args.out).resolve()  # resolved: `--out .` has a name too
    # a build elsewhere keeps its log and grid beside its model, not over the shipped demo/build.log
    log = args.log or (defaults.log if shipped else beside.with_name(beside.name + ".build.log"))
    samples = args.samples or (
        defaults.samples if shipped else beside.with_name(beside.name + ".samples.png")
    )
    cfg = replace(
        defaults,
        out=out,
        log=log,
        samples=samples,
        seed=args.seed,
        num_images=args.num_images,
        vae_steps=args.vae_steps,
        vae_minutes=args.vae_minutes,
        unet_steps=args.unet_steps,
        unet_minutes=args.unet_minutes,
        interim_fraction=args.interim_fraction,
        threads=args.threads,
    )
    build(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
