"""Train through SD 1.5's, SD 2.x's or SDXL base's real architecture (random weights): the real-size paths.

    python bench/real_architecture.py --family sdxl --resolution 128 --steps 2              # CPU: 14 GB RAM
    python bench/real_architecture.py --family sdxl --resolution 1024 --precision bf16      # the GPU check
    python bench/real_architecture.py --family sd2 --resolution 768 --precision fp16 --steps 20
    python bench/real_architecture.py --family sdxl --resolution 1024 --precision bf16 --steps 20 --floor 20

No real weights are needed or downloaded: the UNet and text encoders are built from their published configs
(bench/step_flops.py's), with a small word-level tokenizer over the real 49,408-row vocabulary, SD's own VAE
configuration, and each family's scheduler (SD 2.x predicts v). `trainers.train` then runs exactly as
`tokensmith train` would: Accelerate picks the device (a GPU when there is one), frozen weights are cast for
`--precision`, latents are cached, the new rows of every encoder train, a checkpoint is written, the embedding
is stored. Loss values mean nothing (random weights); shapes, dtypes, memory and step time do. The last line
reads `real architecture FAMILY PXpx PRECISION on DEVICE: N steps, S s a step, peak memory M GB (what was
measured), rows KEY (n, D) ..., finite`; the exit status is 1 when a learned row is not finite.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_flops import real_encoders, real_unet
from train_speed import write_images

WORDS = ("a", "photo", "of", "object", "style")
SCALING = {"sd15": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


def real_pipeline(family: str, px: int):
    """A diffusers pipeline of the family's architecture with random weights, for px images."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    from trainers.tiny import tiny_tokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=px,
        scaling_factor=SCALING[family],
    )
    encoders = real_encoders(family)
    tokenizers = [tiny_tokenizer(WORDS, max_length=77) for _ in encoders]
    betas = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    with torch.device("cpu"):  # a scheduler's tables are real numbers even when modules are built on "meta"
        if family == "sdxl":
            scheduler = EulerDiscreteScheduler(timestep_spacing="leading", **betas)
        else:
            prediction = "v_prediction" if family == "sd2" else "epsilon"
            scheduler = DDIMScheduler(clip_sample=False, prediction_type=prediction, **betas)
    if family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            unet=real_unet(family, px),
            scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=tokenizers[0],
        unet=real_unet(family, px),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def peak_memory_gb() -> tuple[float, str]:
    """(GB, what was measured): the GPU's peak allocation when one was used, else this process's peak RSS."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 1e9, "GPU allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "process RSS"


def step_seconds(run_dir: Path) -> float:
    """The median time between consecutive steps of a run's progress.jsonl (the first step warms up). A
    step that also validated or rendered previews (its record has val_loss or metric) is left out: that
    time is not the step's."""
    from trainers.runfolder import RunFolder

    records = [r for r in RunFolder(run_dir).read_progress() if "step" in r and r["step"] > 0]
    extra = ("val_loss", "metric")
    gaps = [
        b["elapsed"] - a["elapsed"]
        for a, b in itertools.pairwise(records)
        if all(b.get(key) is None for key in extra)
    ]
    return statistics.median(gaps) if gaps else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=("sd15", "sd2", "sdxl"), default="sdxl")
    parser.add_argument("--resolution", type=int, default=128, metavar="PX", help="training image size")
    parser.add_argument("--precision", choices=("no", "fp16", "bf16"), default="no", help="mixed precision")
    parser.add_argument("--steps", type=int, default=3, help="training steps (the first warms up)")
    parser.add_argument("--previews", type=int, default=0, metavar="N", help="preview samples at the end")
    parser.add_argument(
        "--floor",
        type=int,
        default=0,
        metavar="N",
        help="also time N floor steps (UNet forward + backward to the conditioning) and print step/floor",
    )
    args = parser.parse_args(argv)
    from trainers import TrainConfig, train
    from trainers.models import LoadedModel, detect_family

    start = time.perf_counter()
    pipe = real_pipeline(args.family, args.resolution)
    billions = sum(p.numel() for p in pipe.unet.parameters()) / 1e9
    family = detect_family(pipe)  # as a loaded model's: by its encoders' widths
    seconds = time.perf_counter() - start
    print(f"built {args.family}'s architecture in {seconds:.0f} s: UNet {billions:.2f} B, family {family}")
    model = LoadedModel(pipe=pipe, family=family, source=f"{args.family}-architecture")
    with tempfile.TemporaryDirectory(prefix="tokensmith-real-") as tmp:
        home, name = Path(tmp), f"real-{args.family}"
        cfg = TrainConfig(
            images=str(write_images(home / "images", args.resolution)),
            name=name,
            init="photo object",
            vectors=2,
            resolution=args.resolution,
            steps=args.steps,
            batch_size=1,
            mixed_precision=args.precision,
            validate_every=0,
            early_stopping=False,
            save_every=args.steps,
            preview_images=args.previews,
            run_dir=str(home / "run"),
        )
        start = time.perf_counter()
        embedding = train(cfg, home=home, model=model, echo=print)
        total = time.perf_counter() - start
        per_step = step_seconds(home / "run")
    memory, measured = peak_memory_gb()
    rows = " ".join(f"{key} {tuple(v.shape)}" for key, v in embedding.vectors.items())
    finite = all(bool(torch.isfinite(v).all()) for v in embedding.vectors.values())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"train() took {total:.1f} s in all (latent cache, {args.steps} steps, checkpoint, store)")
    run = f"{args.family} {args.resolution}px {args.precision} on {device}"
    print(
        f"real architecture {run}: {args.steps} steps, {per_step:.2f} s a step, "
        f"peak memory {memory:.1f} GB ({measured}), rows {rows}, "
        f"{'finite' if finite else 'NOT FINITE'}"
    )
    if args.floor:
        floor = floor_seconds(pipe.unet, args.family, args.resolution, args.precision, args.floor)
        print(
            f"floor {run}: {floor * 1e3:.0f} ms (median of {args.floor}), step {per_step * 1e3:.0f} ms, "
            f"step/floor {per_step / floor:.2f}"
        )
    return 0 if finite else 1


def floor_seconds(unet, family: str, px: int, precision: str, repeats: int) -> float:
    """The median time of a floor step on `unet` (what any TI step must do: UNet forward + backward to the
    conditioning, fixed inputs), with the frozen weights in the run's precision under the same autocast, on
    the device the trainer used; the first two steps warm up."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    unet = unet.to(device, dtype).requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    latent = px // 8
    noisy, target = (torch.randn(1, 4, latent, latent, generator=generator).to(device) for _ in range(2))
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator).to(device)
    t = torch.tensor([500], device=device)
    added = None
    if family == "sdxl":  # the pooled text embedding and the time ids
        text_embeds = torch.randn(1, 1280, generator=generator).to(device)  # (1, 1280)
        time_ids = torch.tensor([[px, px, 0, 0, px, px]], dtype=torch.float32, device=device)  # (1, 6)
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
    times = []
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        conditioning = hidden.detach().requires_grad_(True)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            pred = unet(noisy, t, encoder_hidden_states=conditioning, added_cond_kwargs=added).sample
        torch.nn.functional.mse_loss(pred.float(), target).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
