"""Live previews: latents to a small RGB image through the fixed latent-to-RGB factors."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image

from generator.previews import (
    SD1_BIAS,
    SD1_FACTORS,
    SDXL_BIAS,
    SDXL_FACTORS,
    latent_factors,
    preview_data_url,
    preview_image,
)
from promptdex.profiles import Family


def latent_for_rgb(rgb: tuple[float, float, float], *, family: str = "sd1", h: int = 64, w: int = 64) -> torch.Tensor:
    """A (1, 4, h, w) latent whose preview is `rgb` (0..1): the factors' pseudo-inverse applied to the target."""
    factors, bias = latent_factors(family)
    weight = torch.tensor(factors, dtype=torch.float64)  # (4, 3)
    target = torch.tensor(rgb, dtype=torch.float64) * 2.0 - 1.0 - torch.tensor(bias, dtype=torch.float64)
    channels = torch.linalg.pinv(weight).T @ target  # x @ W = target  ->  x = target @ pinv(W)
    return channels.to(torch.float32).view(1, 4, 1, 1).expand(1, 4, h, w).clone()


def mean_rgb(image: Image.Image) -> tuple[float, float, float]:
    pixels = list(image.getdata())
    return tuple(sum(p[i] for p in pixels) / len(pixels) for i in range(3))  # type: ignore[return-value]


@pytest.mark.parametrize(("h", "w", "max_side", "size"), [
    (64, 64, 96, (96, 96)), (96, 64, 96, (64, 96)), (128, 96, 96, (72, 96)), (64, 128, 48, (48, 24)),
    (16, 16, 96, (96, 96)),
])
def test_size_respects_max_side_and_aspect(h: int, w: int, max_side: int, size: tuple[int, int]) -> None:
    image = preview_image(torch.randn(2, 4, h, w), max_side=max_side)
    assert image.mode == "RGB" and image.size == size


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL, Family.SD_TURBO, Family.LIGHTNING])
def test_a_red_latent_previews_red(family: Family) -> None:
    latents = latent_for_rgb((0.9, 0.1, 0.1), family=family)
    r, g, b = mean_rgb(preview_image(latents, family=family))
    assert r > 200 and g < 60 and b < 60
    r, g, b = mean_rgb(preview_image(latent_for_rgb((0.1, 0.2, 0.9), family=family), family=family))
    assert b > 200 and r < 60


def test_families_pick_their_factors() -> None:
    assert latent_factors("sd1") == (SD1_FACTORS, SD1_BIAS) == latent_factors("sd2-v") == latent_factors("tiny")
    for family in ("sdxl", "sdxl-turbo", "lightning", Family.SDXL):
        assert latent_factors(family) == (SDXL_FACTORS, SDXL_BIAS)
    assert len(SD1_FACTORS) == len(SDXL_FACTORS) == 4 and all(len(row) == 3 for row in SDXL_FACTORS)


def test_index_picks_the_batch_member() -> None:
    latents = torch.cat([latent_for_rgb((0.9, 0.1, 0.1)), latent_for_rgb((0.1, 0.9, 0.1))])
    assert mean_rgb(preview_image(latents, index=0))[0] > 200
    assert mean_rgb(preview_image(latents, index=1))[1] > 200
    with pytest.raises(ValueError, match="index"):
        preview_image(latents, index=2)
    with pytest.raises(ValueError, match="latents"):
        preview_image(torch.zeros(1, 3, 8, 8))


def test_data_url_decodes_and_is_small() -> None:
    url = preview_data_url(torch.randn(1, 4, 128, 128) * 3.0)
    head, _, payload = url.partition(",")
    assert head in ("data:image/webp;base64", "data:image/png;base64")
    data = base64.b64decode(payload)
    assert len(data) < 16 * 1024
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (96, 96) and image.format in ("WEBP", "PNG")


def test_float16_and_inference_mode_work() -> None:
    latents = latent_for_rgb((0.9, 0.1, 0.1)).half()
    with torch.inference_mode():
        image = preview_image(latents)
        url = preview_data_url(latents, max_side=32)
    assert mean_rgb(image)[0] > 200
    assert url.startswith("data:image/")


def test_extreme_values_clamp() -> None:
    latents = torch.full((1, 4, 8, 8), 1e4)
    latents[0, 0, 0, 0] = float("nan")
    image = preview_image(latents, max_side=8)
    assert image.size == (8, 8)
    assert all(0 <= c <= 255 for p in image.getdata() for c in p)
