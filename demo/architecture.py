"""The demo model's parts, built from configs: tiny VAE, CLIP text encoder, UNet, v-prediction schedulers.

Sizes follow the feasibility study (docs in README, section demo-world): 32×32 RGB images, 16×16×4 latents, a
64-wide 2-layer text encoder over a ~270-token vocabulary. v-prediction is essential: with this near
zero-terminal-SNR linear schedule an epsilon model's first x0 estimate divides by √ᾱ ≈ 0.006 and explodes.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT_WIDTH = 64


@dataclass(frozen=True)
class Architecture:
    """The knobs of the model's shape; the defaults are the shipped model."""

    resolution: int = 32
    vae_channels: tuple[int, ...] = (32, 64)
    unet_channels: tuple[int, ...] = (48, 96, 96)
    unet_layers_per_block: int = 1
    # Attention (self + cross to the text) per UNet level, finest first. None at 16×16: it cost ~40% of the
    # step time there, and colour, shape and size are all readable from the 8×8 and 4×4 levels.
    unet_attention: tuple[bool, ...] = (False, True, True)
    text_layers: int = 2
    beta_start: float = 1e-4
    beta_end: float = 0.02


def make_vae(arch: Architecture):
    from diffusers import AutoencoderKL

    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=arch.resolution,
        mid_block_add_attention=False,  # attention cost ~40% of the step time for nothing visible
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
    )


def make_text_encoder(arch: Architecture, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_unet(arch: Architecture, latent_size: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=arch.unet_layers_per_block,
        block_out_channels=arch.unet_channels,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=16,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.unet_attention),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.unet_attention)
        ),
    )


def make_scheduler(arch: Architecture):
    """The shipped sampler: DPM-Solver++ (good in ~20 steps), v-prediction, the training betas."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=arch.beta_start,
        beta_end=arch.beta_end,
        prediction_type="v_prediction",
        steps_offset=1,
    )


def make_noise_scheduler(arch: Architecture):
    """The training-time noise schedule (same betas and prediction type as the shipped sampler)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(make_scheduler(arch).config)  # one source for betas and prediction type
