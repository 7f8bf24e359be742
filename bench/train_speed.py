"""How close is a tokensmith training step to the floor, and how much faster than a diffusers-style step?

    python bench/train_speed.py            # demo world (when built) and a small SD-shaped random model
    python bench/train_speed.py --quick    # fewer timed steps
    python bench/train_speed.py --sd15-size 512   # also SD 1.5's own architecture at 512 px (minutes a step)

Measured in one process, one thread, a floor step timed between every two trainer steps (so a busy neighbour
slows both alike):
- floor: UNet forward + backward on fixed inputs, gradient only to the conditioning (what any TI step
  must do);
- tokensmith: the trainer itself, `trainers.train` as `tokensmith train` runs it (its default templates, so a
  batch of 4 usually holds 4 prompts; cached latents sampled as mean + std·ε, the text encoder through the new
  rows only, AdamW on those rows, the step's log line); validation, previews and snapshots are off;
- diffusers-style: VAE encode of the batch every step, the whole token table trainable, AdamW over it, then
  every other row restored (examples/textual_inversion/textual_inversion.py).
The last lines are `step/floor MODEL bsB: RATIO`, one per configuration (goal: <= 1.10). bench/step_flops.py
counts the text encoder's share of a batch-1 step in FLOPs, on these models and at real SD sizes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainers.data import load_images
from trainers.families import Conditioner
from trainers.latents import encode_samples
from trainers.loop import DiffusionMath, draw_batch, tune_malloc
from trainers.rows import attach, detach_rows
from trainers.samples import build_samples

PROMPT = "a photo of a [name]"


def sd_small_pipeline():
    """A random SD-shaped pipeline: UNet (64, 128, 256), VAE ×8, 128 px; text encoder 2 layers of width 256
    over a 49408-row table, 77 tokens (as in the issue's measurement)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    text = clip_text_config(width=256, layers=2, heads=4, act="quick_gelu")
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(64, 128, 256),
        layers_per_block=1,
        cross_attention_dim=256,
        attention_head_dim=8,
        norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    return _random_pipeline(text, unet, 128)


def sd15_shaped_pipeline(size: int):
    """SD 1.5's own architecture with random weights: its UNet (UNet2DConditionModel's defaults) and CLIP
    ViT-L/14's text encoder (12 layers of width 768), at `size` px; the VAE is the small one (the step never
    runs it)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    text = clip_text_config(width=768, layers=12, heads=12, act="quick_gelu")  # CLIP ViT-L/14
    unet = UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768, attention_head_dim=8)
    return _random_pipeline(text, unet, size)


def clip_text_config(*, width: int, layers: int, heads: int, act: str, projection: bool = False):
    """A CLIP text encoder config over SD's 49,408-token vocabulary and 77 positions, MLP 4× wide."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=width if projection else 512,
    )


def _random_pipeline(text_config, unet, size: int):
    """An SD pipeline around `unet` and a text encoder of `text_config`, with a small ×8 VAE at `size` px."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    from trainers.tiny import tiny_tokenizer

    vae = AutoencoderKL(
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=size,
        mid_block_add_attention=False,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tiny_tokenizer(("a", "photo", "of"), max_length=77),
        unet=unet,
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def random_model(pipe, source: str):
    """A random pipeline as the trainer takes it (`source` is what its run config records as the model)."""
    from trainers.models import LoadedModel, detect_family

    return LoadedModel(pipe=pipe, family=detect_family(pipe), source=f"random {source} (bench)")


def write_images(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(5):
        image = Image.new("RGB", (size, size), (120, 120, 120))
        image.paste(
            tuple(rng.randrange(256) for _ in range(3)), (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
        )
        image.save(folder / f"{i}.png")
    return folder


class Steps:
    """The floor and the diffusers-style step on one pipeline and batch size."""

    def __init__(self, pipe, batch_size: int, image_dir: Path):
        pipe.unet.requires_grad_(False).eval()
        pipe.vae.requires_grad_(False).eval()
        pipe.text_encoder.requires_grad_(False).eval()
        self.pipe, self.bs = pipe, batch_size
        resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
        multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        self.samples = build_samples(
            load_images(image_dir),
            resolution=resolution,
            crop="center",
            flip=True,
            alpha_weight=False,
            multiple=multiple,
            seed=0,
        )
        self.cache = encode_samples(pipe.vae, self.samples)
        self.maths = DiffusionMath.from_scheduler(pipe.scheduler)
        word = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer("a").input_ids[1]]
        self.rows = attach("emb_params", pipe.tokenizer, pipe.text_encoder, "bench", word[None].clone())
        conditioner = Conditioner("single", [self.rows])
        self.prompt = PROMPT.replace("[name]", conditioner.token_text())
        self.generator = torch.Generator().manual_seed(0)
        self.rng = random.Random(0)
        batch = self._batch()
        with torch.no_grad():
            hidden, _ = conditioner.encode(batch.prompts, "cpu")
        # the trainer attaches its own rows; the diffusers-style step puts the token into the table itself
        detach_rows(self.rows)
        self.floor_inputs = (
            *self.maths.noisy_and_target(batch.latents, batch.noise, batch.timesteps),
            batch.timesteps,
            hidden,
        )

    def _batch(self):
        indices = [self.rng.randrange(len(self.samples)) for _ in range(self.bs)]
        return draw_batch(self.cache, indices, [self.prompt] * self.bs, self.maths, self.generator)

    def floor(self) -> None:
        noisy, target, t, hidden = self.floor_inputs
        hidden = hidden.detach().requires_grad_(True)
        pred = self.pipe.unet(noisy, t, encoder_hidden_states=hidden).sample  # (B, C, h, w)
        F.mse_loss(pred, target).backward()

    def diffusers_style(self) -> None:
        """VAE every step; whole table trainable; AdamW over it; restore every other row."""
        te, tokenizer, pipe = self.pipe.text_encoder, self.rows.tokenizer, self.pipe
        table = self.full_table
        indices = list(range(self.bs))
        pixels = torch.stack([self.samples[i % len(self.samples)].pixels for i in indices])  # (B, 3, H, W)
        latents = (
            pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
        )  # (B, 4, h, w)
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.maths.num_timesteps, (self.bs,))
        noisy, target = self.maths.noisy_and_target(latents, noise, t)
        ids = tokenizer(
            [self.prompt] * self.bs,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        hidden = te(ids)[0]  # (B, L, D)
        pred = pipe.unet(noisy, t, encoder_hidden_states=hidden).sample
        F.mse_loss(pred, target).backward()
        self.full_opt.step()
        self.full_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            table.weight[self.keep] = self.original[self.keep]

    def use_full_table(self) -> None:
        """Switch the text encoder to diffusers' layout: the new token is a row of the trainable table."""
        self.pipe.text_encoder.set_attn_implementation("sdpa")  # transformers' default, as diffusers runs it
        table = self.pipe.text_encoder.get_input_embeddings()
        new_id = self.rows.module.first_id
        if new_id >= table.num_embeddings:
            self.pipe.text_encoder.resize_token_embeddings(new_id + 1)
            table = self.pipe.text_encoder.get_input_embeddings()
        table.weight.requires_grad_(True)
        self.full_table, self.original = table, table.weight.detach().clone()
        self.keep = torch.ones(table.num_embeddings, dtype=torch.bool)
        self.keep[new_id] = False
        self.full_opt = torch.optim.AdamW(table.parameters(), lr=1e-3)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def trainer_steps(
    model, batch_size: int, image_dir: Path, home: Path, steps: int, warmup: int, between
) -> tuple[list[float], str]:
    """Time `steps` steps of `trainers.train` itself, as `tokensmith train` runs it on `model` (its default
    templates, init, optimizer and bookkeeping; validation, previews and snapshots off), after `warmup` steps.

    Each step is the time from the end of one progress record to the next (the update, its log line and the
    trainer's checks); `between` runs in the progress callback, outside the timed span. Returns the step times
    and the text-encoder attention the trainer chose."""
    from trainers.config import TrainConfig
    from trainers.trainer import train

    total = warmup + steps + 1  # the last step also writes the embedding's snapshot and checkpoint: not timed
    times, attention, last = [], [], None

    def on_progress(record: dict) -> None:
        nonlocal last
        now = time.perf_counter()
        step = record.get("step")
        if "text_attention" in record:
            attention.append(record["text_attention"])
        if isinstance(step, int) and last is not None and warmup < step < total:
            times.append(now - last)
            between()
        last = time.perf_counter()

    cfg = TrainConfig(
        images=str(image_dir),
        name=f"speed-bs{batch_size}",
        steps=total,
        batch_size=batch_size,
        validate_every=0,
        early_stopping=False,
        save_every=0,
        preview_images=0,
    )
    train(cfg, home=home, model=model, on_progress=on_progress)
    return times, attention[0] if attention else "?"


def measure(
    label: str,
    model_factory,
    batch_size: int,
    image_dir: Path,
    steps: int,
    *,
    warmup: int = 3,
    baseline: bool = True,
) -> tuple[float, float | None]:
    """(tokensmith / floor, diffusers-style / tokensmith or None without `baseline`), medians of interleaved
    rounds: a floor step is timed between every two trainer steps."""
    model = model_factory()
    bench = Steps(model.pipe, batch_size, image_dir)
    timed(bench.floor, warmup)
    floor: list[float] = []
    home = image_dir.parent / f"home-{label}-bs{batch_size}"
    ours, attention = trainer_steps(
        model, batch_size, image_dir, home, steps, warmup, lambda: floor.extend(timed(bench.floor, 1))
    )
    f, o = statistics.median(floor), statistics.median(ours)
    line = f"{label} bs{batch_size}: floor {f * 1e3:.1f} ms, tokensmith {o * 1e3:.1f} ms"
    speedup = None
    if baseline:
        bench.use_full_table()
        timed(bench.diffusers_style, 2)
        diffusers, floor2 = [], []
        for _ in range(max(3, steps // 2)):
            diffusers += timed(bench.diffusers_style, 1)
            floor2 += timed(bench.floor, 1)
        d = (
            statistics.median(diffusers) * f / statistics.median(floor2)
        )  # rescaled to the first phase's floor
        line += f", diffusers-style {d * 1e3:.1f} ms"
        speedup = d / o
    print(f"{line} (text-encoder attention: {attention})", flush=True)
    return o / f, speedup


def _at_least_one(text: str) -> int:
    """argparse's type for --steps: a median needs at least one timed step."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (noisier)")
    parser.add_argument(
        "--steps", type=_at_least_one, default=0, help="timed steps per configuration (default 20; --quick 8)"
    )
    parser.add_argument(
        "--sd15-size",
        type=int,
        default=0,
        metavar="PX",
        help="also time SD 1.5's architecture (random weights) at PX pixels, batch 1 (512: about 5 minutes)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"glibc malloc thresholds raised: {tune_malloc()}")
    import tempfile

    from trainers.models import demo_model_dir, load_model

    steps = args.steps or (8 if args.quick else 20)
    # (label, pipeline factory, image size, batch sizes, timed steps, measure's options)
    configs = []
    if (demo_model_dir() / "model_index.json").is_file():
        configs.append(("demo", lambda: load_model("demo"), 32, (1, 4), steps, {}))
    else:
        print("demo model not built (python -m demo.build): demo rows skipped")
    sd_small = lambda: random_model(sd_small_pipeline(), "sd-small")  # noqa: E731
    configs.append(("sd-small", sd_small, 128, (1, 4), steps, {}))
    if args.sd15_size:
        # tens of seconds a step on a CPU: batch 1, few steps, one warm-up; no diffusers-style step, whose VAE
        # here would be the small one and not SD's, so its time would mean nothing
        px, options = args.sd15_size, {"warmup": 1, "baseline": False}
        sd15 = lambda: random_model(sd15_shaped_pipeline(px), f"sd15-{px}px")  # noqa: E731
        configs.append((f"sd15-{px}px", sd15, px, (1,), args.steps or 3, options))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, factory, size, batch_sizes, timed_steps, options in configs:
            images = write_images(Path(tmp) / label, size)
            for bs in batch_sizes:
                results.append((label, bs, *measure(label, factory, bs, images, timed_steps, **options)))
    for label, bs, _, speedup in results:
        if speedup is not None:
            print(f"speed-up over diffusers-style {label} bs{bs}: {speedup:.2f}x")
    for label, bs, ratio, _ in results:
        print(f"step/floor {label} bs{bs}: {ratio:.2f}")


if __name__ == "__main__":
    main()
