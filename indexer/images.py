"""Image files: decode with limits (truncated files, decompression bombs), content hash, and WebP thumbnails."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from promptdex.errors import InvalidInput

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WEBP"}  # images.format, as Pillow (and the generator) name it
# Errors writing a file that no other file would escape: the disk or quota is full, the folder is read-only or
# not ours, the device fails. An import stops on them instead of failing every remaining file the same way.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
TEMP_DIR_NAME = ".tmp"  # inside the thumbnails folder: half-written files, swept when their writer is gone
_STALE_TEMP_SECONDS = 600.0
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class ImageRejected(InvalidInput):
    """A file that is not a usable image: empty, truncated, corrupt, too large, or not PNG/JPEG/WebP."""


def pillow_error(exc: BaseException) -> str:
    """Why Pillow failed, in words: never a Python repr such as `<_io.BytesIO object at 0x...>`."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a PNG, JPEG or WebP image (its content is not an image format Pillow recognises)"
    text = _OBJECT_REPR.sub("the data", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_storage_failure(exc: OSError) -> bool:
    """Whether a write failed because of where it writes (full, read-only, no permission), not what it writes."""
    return exc.errno in STORAGE_ERRNOS


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
        if isinstance(exc, UnidentifiedImageError):
            raise ImageRejected(f"{path}: {pillow_error(exc)}") from None
        reason = "truncated" if "truncated" in str(exc).lower() else "not a readable image"
        raise ImageRejected(f"{path}: {reason}: {pillow_error(exc)}") from None
    return DecodedImage(path, hashlib.sha256(data).hexdigest(), stat.st_size, stat.st_mtime, width, height, fmt,
                        image)


def thumbnail_path(thumbs_dir: Path, sha256: str) -> Path:
    """Where the thumbnail of the image with this content hash lives: THUMBS/ab/abcdef....webp."""
    return thumbs_dir / sha256[:2] / f"{sha256}.webp"


def temp_dir(thumbs_dir: Path) -> Path:
    """Where thumbnails are written before their rename: one folder, on the same disk, cheap to sweep."""
    return thumbs_dir / TEMP_DIR_NAME


def _write_all(file: io.BufferedWriter, data: bytes) -> None:
    """The one place file bytes are written (a test makes it fail as a full disk would where it cannot mount one)."""
    file.write(data)


def write_atomic(dest: Path, data: bytes, *, tmp_dir: Path | None = None) -> Path:
    """Write `data` to `dest` through a temporary file in `tmp_dir` (default: beside it) and a rename.

    The temporary file is removed on every failure (a full disk included); only a killed process leaves one,
    named `<pid>-...tmp`, which `sweep_temp_files` removes once that process is gone.
    """
    folder = tmp_dir or dest.parent
    folder.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-{dest.name}-", suffix=".tmp", dir=folder)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            _write_all(file, data)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_temp_files(folder: Path, *, stale_after: float = _STALE_TEMP_SECONDS) -> int:
    """Remove temporary files left by killed writers: their process is gone, or they are older than `stale_after`."""
    if not folder.is_dir():
        return 0
    removed = 0
    now = time.time()
    for entry in os.scandir(folder):
        if not entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
            continue
        pid_text = entry.name.split("-", 1)[0]
        try:
            gone = not pid_text.isdigit() or not _alive(int(pid_text)) or now - entry.stat().st_mtime > stale_after
            if gone:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        logger.info("%s: removed %d temporary file(s) left by an interrupted run", folder, removed)
    return removed


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


def write_thumbnail(image: Image.Image, dest: Path, *, size: int, quality: int = 82,
                    tmp_dir: Path | None = None) -> Path:
    """Save a WebP thumbnail (long side `size`, never enlarged) atomically: a temporary file, then rename."""
    thumb = rgb(image).copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    encoded = io.BytesIO()
    thumb.save(encoded, "WEBP", quality=quality, method=4)
    return write_atomic(dest, encoded.getvalue(), tmp_dir=tmp_dir)


def file_holds(path: Path, *, sha256: str, file_size: int | None, file_mtime: float | None) -> bool:
    """Whether the file at `path` still holds the content `sha256`: same size and mtime as recorded, else hashed."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if file_size is not None and stat.st_size != file_size:
        return False
    if file_mtime is not None and stat.st_mtime == file_mtime:
        return True
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return False
    return digest.hexdigest() == sha256


def image_file(path: str, images_dir: Path) -> Path:
    """A row's file: imported images have absolute paths, generated ones paths relative to the images folder."""
    file = Path(path)
    return file if file.is_absolute() else images_dir / file


def ensure_thumbnail(thumbs_dir: Path, sha256: str, original: Path, *, size: int, max_pixels: int) -> Path:
    """The thumbnail of an image, made from the original file when it is missing (e.g. generated images)."""
    thumb = thumbnail_path(thumbs_dir, sha256)
    if not thumb.is_file():
        try:
            write_thumbnail(decode_image(original, max_pixels=max_pixels).image, thumb, size=size,
                            tmp_dir=temp_dir(thumbs_dir))
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
        raise ImageRejected(f"{source}: cannot decode for embedding: {pillow_error(exc)}") from None
