"""Tiny random SD1-style and SDXL-style pipelines built from configs, so tests and benches never download.

pipe = tiny_pipeline("sdxl", seed=0)   # a StableDiffusionXLPipeline with two small text encoders
tokenizer = tiny_tokenizer()           # a CLIPTokenizer over a hand-built byte-level vocabulary
"""

from __future__ import annotations

from typing import Any

import torch

from trainers.models import pipeline_encoders

TINY_WORDS = (
    *("a", "photo", "of", "the", "an", "on", "in", "with", "and", "picture", "painting", "style", "object"),
    *("cat", "dog", "puppy", "keyboard", "typewriter", "circle", "square", "triangle", "star", "ring"),
    *("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink"),
    *("background", "small", "large"),
)


def tiny_tokenizer(words: tuple[str, ...] | list[str] = TINY_WORDS, *, max_length: int = 16) -> Any:
    """A CLIPTokenizer over a hand-built byte-level vocabulary: every byte plus `words` as whole tokens."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1], *pieces[2:]]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    for _ in range(4):  # repair pass: add merges for words that global merge ranks split wrongly
        tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)
        broken = [w for w in words if len(tokenizer.tokenize(w)) != 1]
        if not broken:
            break
        for word in broken:
            pieces = tokenizer.tokenize(word)
            while len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
                pieces = [pair[0] + pair[1], *pieces[2:]]
    return tokenizer


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) uses to stand for the bytes 0..255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_pipeline(family: str = "sd1", seed: int = 0) -> Any:
    """A tiny random pipeline from configs (16×16 images, 8×8 latents): 'sd1' (one encoder, width 32) or
    'sdxl' (clip_l width 32 + clip_g width 48). Deterministic for a seed; reads nothing from disk or network.
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if family not in ("sd1", "sdxl"):
        raise ValueError(f"tiny_pipeline family must be 'sd1' or 'sdxl', not {family!r}")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()

    def text_config(width: int) -> Any:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        mid_block_add_attention=False,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    unet_common = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    if family == "sd1":
        text_encoder = CLIPTextModel(text_config(32))
        unet = UNet2DConditionModel(cross_attention_dim=32, **unet_common)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        text_encoder = CLIPTextModel(text_config(32))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(48))
        unet = UNet2DConditionModel(
            cross_attention_dim=32 + 48,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 48,
            **unet_common,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tiny_tokenizer(),
            unet=unet,
            scheduler=scheduler,
        )
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, *[te for _k, _t, te in pipeline_encoders(pipe)]):
        module.eval().requires_grad_(False)
    return pipe
