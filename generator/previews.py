"""Cheap live previews during sampling: latents to a small RGB image by a fixed linear map, no extra weights.

Each latent pixel's 4 channels map to RGB through a 4x3 matrix (plus a bias for SDXL), fitted by the community
against real VAE decodes. The constants are the published "latent_rgb_factors" of ComfyUI's
comfy/latent_formats.py (classes SD15 and SDXL); like ComfyUI's previewer, the result is taken as -1..1 and
mapped to 0..1. The input is the scaled latent tensor diffusers hands to `callback_on_step_end`
(`callback_kwargs["latents"]`), which is the same space ComfyUI's factors were fitted in.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import torch
from PIL import Image

if TYPE_CHECKING:
    from collections.abc import Sequence

# Rows: latent channels 0-3; columns: R, G, B.
SD1_FACTORS: tuple[tuple[float, float, float], ...] = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD1_BIAS: tuple[float, float, float] = (0.0, 0.0, 0.0)
SDXL_FACTORS: tuple[tuple[float, float, float], ...] = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_BIAS: tuple[float, float, float] = (0.1084, -0.0175, -0.0011)
SDXL_FAMILIES = frozenset({"sdxl", "sdxl-turbo", "lightning"})  # promptdex.profiles.Family values with SDXL latents
DEFAULT_MAX_SIDE = 96
PREVIEW_FORMAT = "WEBP"


def latent_factors(family: str = "sd1") -> tuple[Sequence[Sequence[float]], Sequence[float]]:
    """The (4x3 factors, 3 bias) for a family string; SDXL-latent families get SDXL's, all others SD 1.x's."""
    if str(family).casefold() in SDXL_FAMILIES:
        return SDXL_FACTORS, SDXL_BIAS
    return SD1_FACTORS, SD1_BIAS


def latents_to_rgb(latents: torch.Tensor, *, index: int = 0, family: str = "sd1") -> torch.Tensor:
    """One latent of a (batch, 4, h, w) tensor as an (h, w, 3) float32 CPU tensor in 0..1."""
    if latents.ndim == 3:
        latents = latents.unsqueeze(0)
    if latents.ndim != 4 or latents.shape[1] != 4:
        raise ValueError(f"latents: expected shape (batch, 4, h, w), got {tuple(latents.shape)}")
    if not -latents.shape[0] <= index < latents.shape[0]:
        raise ValueError(f"index: {index} is outside the batch of {latents.shape[0]}")
    factors, bias = latent_factors(family)
    with torch.inference_mode():
        one = latents[index].detach().to(device="cpu", dtype=torch.float32)
        weight = torch.tensor(factors, dtype=torch.float32)  # (4, 3)
        rgb = torch.einsum("chw,cr->hwr", one, weight) + torch.tensor(bias, dtype=torch.float32)
        return ((rgb + 1.0) / 2.0).nan_to_num(0.5).clamp(0.0, 1.0)


def preview_image(latents: torch.Tensor, *, index: int = 0, family: str = "sd1",
                  max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """A small RGB preview of one latent in the batch; its long side is at most `max_side` (aspect kept)."""
    if max_side < 1:
        raise ValueError(f"max_side: {max_side} must be at least 1")
    rgb = latents_to_rgb(latents, index=index, family=family)
    array = rgb.mul(255.0).round().to(torch.uint8).numpy()
    image = Image.fromarray(array)
    # Latents are 1/8 of the image: show them at image aspect, upscaled or downscaled to fit max_side.
    w, h = image.size
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image


def encode_preview(image: Image.Image, *, fmt: str = PREVIEW_FORMAT) -> bytes:
    """The image as WebP (or PNG) bytes, small enough to stream to a browser at every step."""
    buffer = io.BytesIO()
    if fmt.upper() == "WEBP":
        image.save(buffer, format="WEBP", quality=70, method=0)
    else:
        image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def preview_data_url(latents: torch.Tensor, *, index: int = 0, family: str = "sd1",
                     max_side: int = DEFAULT_MAX_SIDE) -> str:
    """A `data:image/webp;base64,...` URL (PNG where WebP is unavailable) of one latent's preview."""
    image = preview_image(latents, index=index, family=family, max_side=max_side)
    try:
        data, mime = encode_preview(image, fmt="WEBP"), "image/webp"
    except (OSError, KeyError, ValueError):
        data, mime = encode_preview(image, fmt="PNG"), "image/png"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
