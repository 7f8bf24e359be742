"""A diffusers SD1-style pipeline's weights in the original LDM single-file key layout (what A1111 saves).

sd = to_ldm_state_dict(pipe)   # model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*
save_file(sd, "model.safetensors")

Tests only: the reverse of diffusers' convert_ldm_*_checkpoint, so single-file loading can be tested offline.
"""

from __future__ import annotations

import re
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# diffusers resnet part names -> LDM ResBlock part names (UNet)
UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers VAE mid-block attention part names -> LDM AttnBlock part names
VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def to_ldm_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The unet, vae and text_encoder weights of `pipe` under their original LDM single-file keys."""
    state: dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        state[UNET_PREFIX + unet_key(key, pipe.unet.config)] = value
    for key, value in pipe.vae.state_dict().items():
        ldm_key = vae_key(key, len(pipe.vae.config.up_block_types))
        state[VAE_PREFIX + ldm_key] = vae_value(ldm_key, value)
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers >= 5.6 flattens CLIPTextModel; LDM keeps the text_model level either way
        state[CLIP_PREFIX + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return {key: value.detach().contiguous().clone() for key, value in state.items()}


def unet_key(key: str, config: Any) -> str:
    """One diffusers UNet2DConditionModel key in LDM's input_blocks/middle_block/output_blocks numbering."""
    for old, new in UNET_TOP_LEVEL.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    layers = config.layers_per_block
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        block = 1 + level * (layers + 1) + index  # input_blocks.0 is conv_in; each level adds a downsampler
        return f"input_blocks.{block}.{_unet_slot(kind)}.{_unet_inner(kind, rest)}"
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        block = 1 + int(match[1]) * (layers + 1) + layers
        return f"input_blocks.{block}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, index, rest = match[1], int(match[2]), match[3]
        block = 2 * index if kind == "resnets" else 2 * index + 1  # resnet, attention, resnet
        return f"middle_block.{block}.{_unet_inner(kind, rest)}"  # no .0/.1 slot: one module each
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        block = level * (layers + 1) + index  # up levels hold one more layer than down levels
        return f"output_blocks.{block}.{_unet_slot(kind)}.{_unet_inner(kind, rest)}"
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(match[1])
        block = level * (layers + 1) + layers
        # the upsampler follows the last layer's parts: resnet (0) and, on attention levels, attention (1)
        slot = 2 if "CrossAttn" in config.up_block_types[level] else 1
        return f"output_blocks.{block}.{slot}.conv.{match[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def _unet_slot(kind: str) -> int:
    """Where a layer's part sits in its LDM input/output block: the ResBlock at .0, the transformer at .1."""
    return 0 if kind == "resnets" else 1


def _unet_inner(kind: str, rest: str) -> str:
    """A resnet's or attention's inner key in LDM naming."""
    if kind == "attentions":
        return rest  # LDM's SpatialTransformer uses the same inner names as diffusers'
    part, _, tail = rest.partition(".")
    return UNET_RESNET_PARTS.get(part, part) + "." + tail


def vae_key(key: str, levels: int) -> str:
    """One diffusers AutoencoderKL key in LDM's encoder.down / decoder.up / mid.block_N naming."""
    key = key.replace("conv_norm_out.", "norm_out.")
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_vae_resnet_part(match[3])}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{match[1]}.mid.attn_1.{_vae_attention_part(match[2])}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{_vae_resnet_part(match[3])}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    # LDM numbers decoder levels from the lowest resolution up; diffusers numbers them in run order
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(match[1])}.block.{match[2]}.{_vae_resnet_part(match[3])}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if re.match(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.|(post_)?quant_conv\.", key):
        return key
    raise KeyError(f"no LDM name for VAE key {key!r}")


def _vae_resnet_part(rest: str) -> str:
    """LDM's VAE ResnetBlock calls diffusers' conv_shortcut nin_shortcut; the other names match."""
    return rest.replace("conv_shortcut.", "nin_shortcut.")


def _vae_attention_part(rest: str) -> str:
    """A VAE mid-block attention part (to_q.weight ...) under its LDM AttnBlock name (q.weight ...)."""
    for old, new in VAE_ATTENTION_PARTS.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(f"no LDM name for VAE attention part {rest!r}")


def vae_value(ldm_key: str, value: torch.Tensor) -> torch.Tensor:
    """LDM's AttnBlock projects with 1×1 convs, so its q/k/v/proj_out weights are (C, C, 1, 1), not (C, C)."""
    if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key) and value.ndim == 2:
        return value[:, :, None, None]
    return value
