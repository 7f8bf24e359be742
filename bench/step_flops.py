"""How much of a batch-1 textual-inversion step is the text encoder, counted in FLOPs rather than timed?

    python bench/step_flops.py

A step must run the UNet forward and backward to its conditioning (the floor of bench/train_speed.py) and the
text encoder(s) forward and backward to the new rows. The encoders' FLOPs over the UNet's are a lower bound on
step/floor that no exact step can beat. This script counts both with torch's FlopCounterMode:
- for the bench's own models (demo, sd-small), on the CPU;
- for SD 1.5, SD 2.x and SDXL at their native sizes, on the meta device (shapes only, nothing computed, no
  weights needed: the architectures are built from their published configs).
The last lines are `text encoders / floor FLOPs MODEL bs1: RATIO`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOKENS = 77


def plain_attention(unet=None, text_encoder=None) -> None:
    """Switch to attention written as matmuls: FlopCounterMode has no formula for the CPU SDPA kernel, so
    fused attention would count as zero FLOPs."""
    from diffusers.models.attention_processor import AttnProcessor

    if unet is not None:
        unet.set_attn_processor(AttnProcessor())
    if text_encoder is not None:
        text_encoder.set_attn_implementation("eager")


def counted(fn) -> int:
    """FLOPs of everything `fn` runs (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def unet_flops(
    unet, latent_hw: tuple[int, int], width: int, added: dict | None = None, *, tokens: int = TOKENS
) -> int:
    """UNet forward + backward to the conditioning only (frozen weights), batch 1."""
    device = next(unet.parameters()).device
    unet.requires_grad_(False)
    plain_attention(unet=unet)
    latents = torch.zeros(1, unet.config.in_channels, *latent_hw, device=device)  # (1, C, h, w)
    context = torch.zeros(1, tokens, width, device=device, requires_grad=True)  # (1, L, D)
    timestep = torch.tensor([500], device=device)

    def step() -> None:
        out = unet(latents, timestep, encoder_hidden_states=context, added_cond_kwargs=added).sample
        out.sum().backward()

    return counted(step)


def encoder_flops(text_encoder) -> int:
    """Text encoder forward + backward to its input embeddings (frozen layers), batch 1, all its positions.

    Counts every layer's backward, so for SDXL's clip_l (conditioned on its penultimate layer) it is a slight
    overcount: an upper bound on the encoders' share.
    """
    device = next(text_encoder.parameters()).device
    text_encoder.requires_grad_(False)
    plain_attention(text_encoder=text_encoder)
    table = text_encoder.get_input_embeddings().weight
    table.requires_grad_(True)  # the gradient reaches the token rows, as it reaches the new rows in training
    tokens = text_encoder.config.max_position_embeddings
    ids = torch.zeros(1, tokens, dtype=torch.long, device=device)  # (1, L)

    def step() -> None:
        text_encoder(ids, output_hidden_states=True).hidden_states[-1].sum().backward()

    try:
        return counted(step)
    finally:
        table.requires_grad_(False)


# --- real architectures, built on the meta device from their published configs ---


def _clip(width: int, layers: int, heads: int, act: str, projection: bool = False):
    from train_speed import clip_text_config
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = clip_text_config(width=width, layers=layers, heads=heads, act=act, projection=projection)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


# UNet2DConditionModel's defaults are SD 1.x's; SD 2.x and SDXL change these (their published configs).
UNETS = {
    "sd15": {"cross_attention_dim": 768, "attention_head_dim": 8},
    "sd2": {
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
    },
    "sdxl": {
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,  # pooled 1280 + 6 time ids x 256
    },
}
NATIVE_PX = {"sd15": 512, "sd2": 768, "sdxl": 1024}


def real_unet(family: str, px: int):
    """The UNet of SD 1.5, SD 2.x or SDXL base for px images (random weights, on the default device)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=px // 8, **UNETS[family])


def real_encoders(family: str) -> list:
    """The text encoders: CLIP ViT-L (SD 1.5), OpenCLIP ViT-H less its last layer (SD 2.x), or CLIP ViT-L and
    OpenCLIP ViT-bigG with its projection (SDXL)."""
    if family == "sd15":
        return [_clip(768, 12, 12, "quick_gelu")]
    if family == "sd2":
        return [_clip(1024, 23, 16, "gelu")]
    return [_clip(768, 12, 12, "quick_gelu"), _clip(1280, 32, 20, "gelu", projection=True)]


def real_size(family: str) -> tuple[int, int]:
    """(UNet FLOPs, encoder FLOPs) at the family's native size, counted on the meta device."""
    px = NATIVE_PX[family]
    with torch.device("meta"):
        unet, encoders = real_unet(family, px), real_encoders(family)
        added = None
        if family == "sdxl":
            added = {"text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)}
        width = unet.config.cross_attention_dim
        return unet_flops(unet, (px // 8, px // 8), width, added), sum(encoder_flops(e) for e in encoders)


REAL_SIZES = {"SD 1.5 512px": "sd15", "SD 2.x 768px": "sd2", "SDXL 1024px": "sdxl"}


def bench_models() -> list[tuple[str, int, int]]:
    """The same counts for bench/train_speed.py's models (demo when built, sd-small), on the CPU."""
    from train_speed import sd_small_pipeline

    from trainers.models import demo_model_dir, load_model

    pipes = [("sd-small", sd_small_pipeline())]
    if (demo_model_dir() / "model_index.json").is_file():
        pipes.insert(0, ("demo", load_model("demo").pipe))
    rows = []
    for label, pipe in pipes:
        latent = pipe.unet.config.sample_size
        text = pipe.text_encoder.config
        unet = unet_flops(pipe.unet, (latent, latent), text.hidden_size, tokens=text.max_position_embeddings)
        rows.append((label, unet, encoder_flops(pipe.text_encoder)))
    return rows


def main() -> None:
    import argparse

    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help says what the script counts, and runs nothing
    torch.set_num_threads(1)
    rows = bench_models() + [(label, *real_size(family)) for label, family in REAL_SIZES.items()]
    for label, unet, encoders in rows:
        print(
            f"{label}: UNet forward + backward to the conditioning {unet / 1e9:.1f} GFLOP, text encoders "
            f"forward + backward to the rows {encoders / 1e9:.2f} GFLOP"
        )
    for label, unet, encoders in rows:
        print(f"text encoders / floor FLOPs {label} bs1: {1 + encoders / unet:.3f}")


if __name__ == "__main__":
    main()
