"""Image files: decode with limits (truncated files, decompression bombs), content hash, and WebP thumbnails."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from promptdex.errors import InvalidInput

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WEBP"}  # images.format, as Pillow (and the generator) name it


class ImageRejected(InvalidInput):
    """A file that is not a usable image: empty, truncated, corrupt, too large, or not PNG/JPEG/WebP."""


@dataclass
class DecodedImage:
    """A decoded image file: its content hash, file facts, and the pixels (first frame, EXIF orientation applied)."""

    path: Path
    sha256: str
    file_size: int
    file_mtime: float
    width: int
    height: int
    format: str
    image: Image.Image


def decode_image(path: Path, *, max_pixels: int) -> DecodedImage:
    """Read, hash and fully decode one file. Raises ImageRejected with the reason (naming the file)."""
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ImageRejected(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    if not data:
        raise ImageRejected(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            fmt = FORMATS.get(opened.format or "")
            if fmt is None:
                raise ImageRejected(f"{path}: {opened.format} images are not imported (accepted: PNG, JPEG, WebP)")
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"{path}: {width}x{height} is {width * height} pixels, more than the "
                    f"{max_pixels} PROMPTDEX_INDEXER__MAX_IMAGE_PIXELS allows (a decompression bomb?)")
            opened.load()
            image = ImageOps.exif_transpose(opened) or opened
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"{path}: decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        reason = "truncated" if "truncated" in str(exc).lower() else "not a readable image"
        raise ImageRejected(f"{path}: {reason}: {type(exc).__name__}: {exc}") from None
    return DecodedImage(path, hashlib.sha256(data).hexdigest(), stat.st_size, stat.st_mtime, width, height, fmt,
                        image)


def thumbnail_path(thumbs_dir: Path, sha256: str) -> Path:
    """Where the thumbnail of the image with this content hash lives: THUMBS/ab/abcdef....webp."""
    return thumbs_dir / sha256[:2] / f"{sha256}.webp"


def rgb(image: Image.Image) -> Image.Image:
    """The image as RGB (alpha composited over white), as thumbnails and embedders want it."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.mode == "P" and "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def write_thumbnail(image: Image.Image, dest: Path, *, size: int, quality: int = 82) -> Path:
    """Save a WebP thumbnail (long side `size`, never enlarged) atomically: a temporary file, then rename."""
    thumb = rgb(image).copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    thumb.save(tmp, "WEBP", quality=quality, method=4)
    os.replace(tmp, dest)
    return dest


def image_file(path: str, images_dir: Path) -> Path:
    """A row's file: imported images have absolute paths, generated ones paths relative to the images folder."""
    file = Path(path)
    return file if file.is_absolute() else images_dir / file


def ensure_thumbnail(thumbs_dir: Path, sha256: str, original: Path, *, size: int, max_pixels: int) -> Path:
    """The thumbnail of an image, made from the original file when it is missing (e.g. generated images)."""
    thumb = thumbnail_path(thumbs_dir, sha256)
    if not thumb.is_file():
        try:
            write_thumbnail(decode_image(original, max_pixels=max_pixels).image, thumb, size=size)
        except OSError as exc:
            raise ImageRejected(f"{thumb}: cannot write the thumbnail: {exc}") from exc
    return thumb


def dhash(image: Image.Image, size: int = 8) -> int:
    """64-bit difference hash of the picture (stable across re-encoding and resizing), as a signed int64."""
    small = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    value = 0
    for bit in (small[:, 1:] > small[:, :-1]).flatten():
        value = (value << 1) | int(bit)
    return value - (1 << 64) if value >= (1 << 63) else value


def load_for_embedding(thumbs_dir: Path, sha256: str, original: Path) -> Image.Image:
    """The image to embed: its thumbnail (already small) when present, else the original file."""
    thumb = thumbnail_path(thumbs_dir, sha256)
    source = thumb if thumb.is_file() else original
    try:
        with Image.open(source) as opened:
            opened.load()
            return rgb(opened)
    except Exception as exc:  # noqa: BLE001 - any Pillow failure becomes one clear error
        raise ImageRejected(f"{source}: cannot decode for embedding: {type(exc).__name__}: {exc}") from None
