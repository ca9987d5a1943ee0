"""One decode per image: import reads headers and metadata without pixels; indexing decodes each file once, reduced
(JPEG by DCT scaling), for its CLIP input, perceptual hash and thumbnail."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo

from indexer.images import (
    CLIP_SIDE,
    ImageRejected,
    decode_pixels,
    dhash,
    ensure_thumbnail,
    index_pixels,
    read_image_file,
    rgb,
    thumbnail_path,
)
from indexer.importer import prepare
from search_api.service import NEAR_DUPLICATE_BITS
from tests.conftest import require_shared_fixtures

A1111 = "a lighthouse\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x48"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The files whose pixels Pillow decodes (each `load` of an image opened from a file or from bytes)."""
    seen: list[str] = []
    real = ImageFile.ImageFile.load

    def counting(self: ImageFile.ImageFile) -> Any:
        if self._im is None:  # the pixels are not decoded yet: this load decodes them
            seen.append(str(self.format))
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    yield seen


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from promptdex.settings import get_settings

    for key in [k for k in os.environ if k.startswith("PROMPTDEX_")]:
        monkeypatch.delenv(key)
    return get_settings(_env_file=None, data_dir=tmp_path / "data")


def picture(width: int, height: int) -> Image.Image:
    """Smooth colour ramps with some texture: what a resize and a perceptual hash see in a real picture."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    rng = np.random.default_rng(3)
    channels = [255 * x, 255 * y, 127 + 120 * np.sin(9 * x + 5 * y)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png(path: Path, image: Image.Image, text: dict[str, str] | None = None) -> Path:
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    image.save(path, pnginfo=info)
    return path


def test_import_decodes_no_pixels_of_a_file_with_text_metadata(tmp_path: Path, settings: Any,
                                                               decodes: list[str]) -> None:
    path = png(tmp_path / "a.png", picture(640, 480), {"parameters": A1111})
    jpeg = tmp_path / "b.jpg"
    exif = Image.Exif()
    exif[0x010E] = '{"prompt": {}}'  # ImageDescription: a ComfyUI-style save node
    picture(640, 480).save(jpeg, quality=90, exif=exif)
    prepared = prepare(path, settings)
    assert prepared.error is None and prepared.image is not None
    assert (prepared.image.width, prepared.image.height, prepared.image.format) == (640, 480, "PNG")
    assert prepared.image.params.prompt == "a lighthouse"
    assert prepare(jpeg, settings).image is not None
    assert decodes == []
    assert not list(settings.thumbs_path.rglob("*.webp"))  # thumbnails come from the index's decode


def test_a_png_without_text_metadata_is_decoded_once_for_stealth_text(tmp_path: Path, settings: Any,
                                                                       decodes: list[str]) -> None:
    prepared = prepare(png(tmp_path / "plain.png", picture(64, 48)), settings)
    assert prepared.image is not None and prepared.image.source == "none"
    assert decodes == ["PNG"]


def test_a_container_cut_before_iend_is_kept_when_its_pixels_decode(tmp_path: Path, settings: Any,
                                                                    decodes: list[str]) -> None:
    data = png(tmp_path / "full.png", picture(64, 48), {"parameters": A1111}).read_bytes()
    (tmp_path / "no-iend.png").write_bytes(data[:-12])
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    kept = prepare(tmp_path / "no-iend.png", settings)
    assert kept.image is not None and any("truncated PNG" in w for w in kept.warnings)
    cut = prepare(tmp_path / "half.png", settings)
    assert cut.image is None and cut.error is not None
    assert cut.error.startswith(f"{tmp_path / 'half.png'}: truncated"), cut.error
    assert decodes == ["PNG", "PNG"]  # only the broken containers were decoded


def test_the_header_refuses_a_decompression_bomb_without_decoding(tmp_path: Path, decodes: list[str]) -> None:
    path = png(tmp_path / "bomb.png", Image.new("RGB", (2000, 2000)))
    with pytest.raises(ImageRejected, match=r"bomb\.png: 2000x2000 is 4000000 pixels.*decompression bomb"):
        read_image_file(path, max_pixels=1_000_000)
    assert decodes == []


@pytest.mark.parametrize(("fmt", "size", "expected"), [
    ("JPEG", (1800, 1200), (900, 600)),  # DCT scaling 1/2: 1/4 would leave 300 px, fewer than 448
    ("JPEG", (4000, 3000), (1000, 750)),  # 1/4
    ("PNG", (1800, 1200), (900, 600)),  # box-averaged by 2
    ("WEBP", (1350, 1000), (675, 500)),
    ("PNG", (800, 600), (800, 600)),  # already small: every pixel
])
def test_a_reduced_decode_keeps_at_least_min_side(fmt: str, size: tuple[int, int], expected: tuple[int, int],
                                                  tmp_path: Path) -> None:
    encoded = io.BytesIO()
    picture(*size).save(encoded, fmt)
    image = decode_pixels(encoded.getvalue(), tmp_path / "x", max_pixels=10**8, min_side=CLIP_SIDE)
    assert image.size == expected


def test_exif_orientation_is_applied_after_the_reduction(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    encoded = io.BytesIO()
    picture(1800, 1200).save(encoded, "JPEG", exif=exif)
    assert decode_pixels(encoded.getvalue(), tmp_path / "x", max_pixels=10**8, min_side=CLIP_SIDE).size == (600, 900)
    assert decode_pixels(encoded.getvalue(), tmp_path / "x", max_pixels=10**8).size == (1200, 1800)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_index_pixels_decodes_once_for_clip_input_hash_and_thumbnail(fmt: str, tmp_path: Path,
                                                                     decodes: list[str]) -> None:
    full = picture(1536, 1024)
    path = tmp_path / f"p.{fmt.lower()}"
    full.save(path, fmt, **({"quality": 95} if fmt != "PNG" else {}))
    reference = rgb(Image.open(path).convert("RGB"))  # every pixel, as the file holds them
    decodes.clear()
    pixels = index_pixels(path, "ab" * 32, tmp_path / "thumbs", thumb_size=384, max_pixels=10**8)
    assert decodes == [fmt]
    assert pixels.clip_input.mode == "RGB" and min(pixels.clip_input.size) >= CLIP_SIDE
    assert (dhash(reference) ^ pixels.phash).bit_count() <= NEAR_DUPLICATE_BITS  # one picture to the collapse
    with Image.open(thumbnail_path(tmp_path / "thumbs", "ab" * 32)) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (384, 256)


def test_ensure_thumbnail_makes_a_missing_one_once(tmp_path: Path, decodes: list[str]) -> None:
    path = tmp_path / "p.jpg"
    picture(1024, 1024).save(path, quality=90)
    made = ensure_thumbnail(tmp_path / "thumbs", "cd" * 32, path, size=384, max_pixels=10**8)
    with Image.open(made) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (384, 384)
    decodes.clear()
    assert ensure_thumbnail(tmp_path / "thumbs", "cd" * 32, path, size=384, max_pixels=10**8) == made
    assert decodes == []


def test_a_file_that_does_not_decode_is_rejected_at_index_naming_it(tmp_path: Path) -> None:
    encoded = io.BytesIO()
    picture(256, 256).save(encoded, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(encoded.getvalue()[:3000])
    with pytest.raises(ImageRejected, match=rf"{tmp_path / 'cut.jpg'}: truncated"):
        index_pixels(tmp_path / "cut.jpg", "ef" * 32, tmp_path / "thumbs", thumb_size=384, max_pixels=10**8)
    assert not (tmp_path / "thumbs").exists() or not list((tmp_path / "thumbs").rglob("*.webp"))


@pytest.mark.parametrize("name", ["jpg/sd-webui.jpg", "jpg/civitai-hires.jpg", "png/comfyui.png",
                                  "webp/sd-next.webp", "png/novelai-full.png"])
def test_the_clip_input_preprocesses_as_the_full_picture_does(name: str, tmp_path: Path) -> None:
    """ViT-B-32's preprocess (shortest side to 224, bicubic, centre crop) of the reduced decode and of every pixel."""
    from open_clip.transform import image_transform

    preprocess = image_transform(224, is_train=False)
    path = require_shared_fixtures() / "sd-metadata" / name
    full = rgb(Image.open(path))
    reduced = index_pixels(path, "12" * 32, tmp_path / "thumbs", thumb_size=384, max_pixels=10**8).clip_input
    a, b = (np.asarray(preprocess(im), dtype=np.float64).ravel() for im in (full, reduced))
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.9999
