"""Single-file checkpoints: write an SD 1.x pipeline in the original (LDM / A1111) key layout, and read its keys.

`export_single_file` is the inverse of diffusers' `convert_ldm_*_checkpoint` functions for SD 1.x-shaped
pipelines (UNet2DConditionModel, AutoencoderKL, CLIPTextModel): diffusers reads the file back with
`from_single_file(..., config=<diffusers folder>)`. We use it to make a real A1111-style checkpoint of the
built-in tiny model, so that the single-file loader is tested offline.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_MARKER = "conditioner.embedders.1."
SD2_MARKER = "cond_stage_model.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, mapping: dict[str, str]) -> str:
    layer, _, param = rest.rpartition(".")
    return f"{mapping.get(layer, layer)}.{param}"


def unet_key_to_ldm(key: str, *, layers_per_block: int, has_attention: list[bool]) -> str:
    """The LDM name of one diffusers UNet2DConditionModel parameter (SD 1.x/2.x layout)."""
    step = layers_per_block + 1
    for diffusers_name, ldm_name in _UNET_TOP.items():
        if key.startswith(diffusers_name + "."):
            return ldm_name + key[len(diffusers_name):]
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        block, layer, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{step * block + layer + 1}.0.{_resnet(rest, _UNET_RESNET)}"
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{step * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{step * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _UNET_RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"output_blocks.{step * int(m[1]) + int(m[2])}.0.{_resnet(m[3], _UNET_RESNET)}"
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{step * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        slot = 2 if has_attention[block] else 1
        return f"output_blocks.{step * block + layers_per_block}.{slot}.conv.{m[2]}"
    raise ValueError(f"UNet parameter {key!r} has no SD 1.x checkpoint name (only SD 1.x/2.x UNets export)")


def vae_key_to_ldm(key: str, *, num_up_blocks: int) -> str:
    """The LDM name of one diffusers AutoencoderKL parameter."""
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        block = num_up_blocks - 1 - int(m[1])
        return f"decoder.up.{block}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.(conv_norm_out|conv_in|conv_out)\.(.+)", key):
        return f"{m[1]}.{_VAE_TOP.get(m[2], m[2])}.{m[3]}"
    if re.match(r"(post_)?quant_conv\.", key):
        return key
    raise ValueError(f"VAE parameter {key!r} has no SD checkpoint name")


def to_ldm_state_dict(pipeline: Any) -> dict[str, Any]:
    """The pipeline's UNet, VAE and CLIP text encoder weights under A1111 checkpoint names (new tensors)."""
    unet_config = pipeline.unet.config
    has_attention = [t.startswith("CrossAttn") for t in unet_config.up_block_types]
    state: dict[str, Any] = {}
    for key, tensor in pipeline.unet.state_dict().items():
        name = unet_key_to_ldm(key, layers_per_block=unet_config.layers_per_block, has_attention=has_attention)
        state[UNET_PREFIX + name] = tensor
    num_up = len(pipeline.vae.config.up_block_types)
    for key, tensor in pipeline.vae.state_dict().items():
        name = vae_key_to_ldm(key, num_up_blocks=num_up)
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM keeps the VAE attention projections as 1x1 convolutions
        state[VAE_PREFIX + name] = tensor
    for key, tensor in pipeline.text_encoder.state_dict().items():
        # A1111 files name the text model as transformers 4 did (`text_model.` prefix); transformers 5 drops it.
        name = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        state[CLIP_PREFIX + name] = tensor
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def export_single_file(pipeline: Any, path: Path) -> Path:
    """Write an SD 1.x pipeline as one A1111-style `.safetensors` checkpoint (atomically)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(to_ldm_state_dict(pipeline), str(tmp), metadata={"format": "pt", "written_by": "promptdex"})
    tmp.replace(path)
    logger.info("wrote single-file checkpoint %s", path)
    return path


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names in a `.safetensors` or `.ckpt` file, without loading the tensors of a safetensors file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    import torch

    data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return list(data) if isinstance(data, dict) else []


def checkpoint_family(keys: list[str]) -> str:
    """"sdxl", "sd2" or "sd1" from a checkpoint's tensor names."""
    if any(k.startswith(SDXL_MARKER) for k in keys):
        return "sdxl"
    if any(k.startswith(SD2_MARKER) for k in keys):
        return "sd2"
    return "sd1"
