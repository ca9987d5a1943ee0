"""Image files: content hash and header checks without decoding, one (reduced) decode with limits (truncated
files, decompression bombs) for the thumbnail, the perceptual hash and the CLIP input, and WebP thumbnails."""

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
from PIL import ExifTags, Image, UnidentifiedImageError

from promptdex.errors import InvalidInput
from promptdex.storage import Storage

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WEBP"}  # images.format, as Pillow (and the generator) name it
# Errors writing a file that no other file would escape: the disk or quota is full, the folder is read-only or
# not ours, the device fails. An import stops on them instead of failing every remaining file the same way.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
TEMP_DIR_NAME = ".tmp"  # inside the thumbnails folder: half-written files, swept when their writer is gone
_STALE_TEMP_SECONDS = 600.0
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
# The CLIP input keeps at least this many pixels on its shortest side: twice the 224 px the ViT-B-32 and ViT-L-14
# preprocess resizes to, so its resize sees what it would see in the full picture (a 336 px model wants 672).
CLIP_SIDE = 448
THUMB_QUALITY = 82  # WebP quality of thumbnails
# libwebp's effort (0-6): 2 encodes a 384 px thumbnail in half the time of 4 for files ~2% larger, at the same quality
THUMB_METHOD = 2


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


_STORAGE_ADVICE = {
    errno.ENOSPC: ("the disk is full", "free space there"),
    errno.EDQUOT: ("the disk quota is used up", "free space there or raise the quota"),
    errno.EROFS: ("it is on a read-only file system", "mount it writable"),
    errno.EACCES: ("this user may not write there", "give this user write permission on it"),
    errno.EPERM: ("this user may not write there", "give this user write permission on it"),
    errno.EIO: ("the disk reports input/output errors", "check the disk"),
}


def storage_problem(exc: OSError) -> tuple[str, str]:
    """A storage failure in words, and what to do: ("the disk is full", "Free space there")."""
    what, advice = _STORAGE_ADVICE.get(exc.errno or 0, (exc.strerror or str(exc), "fix it"))
    return what, advice[0].upper() + advice[1:]


@dataclass
class ImageBytes:
    """An image file read once: its bytes, content hash, file facts and header (format, size); no pixels decoded."""

    path: Path
    data: bytes
    sha256: str
    file_size: int
    file_mtime: float
    width: int
    height: int
    format: str
    header: Image.Image  # Pillow's lazy view of `data`: size, format and info read, pixels not (load() decodes them)


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


def _read_bytes(path: Path) -> tuple[bytes, os.stat_result]:
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ImageRejected(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    if not data:
        raise ImageRejected(f"{path}: empty file (0 bytes)")
    return data, stat


def _rejected(path: Path, exc: Exception) -> ImageRejected:
    """What Pillow's failure on `path` means, as the ImageRejected to raise (naming the file)."""
    if isinstance(exc, ImageRejected):
        return exc
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageRejected(f"{path}: decompression bomb: {exc}")
    if isinstance(exc, UnidentifiedImageError):
        return ImageRejected(f"{path}: {pillow_error(exc)}")
    reason = "truncated" if "truncated" in str(exc).lower() else "not a readable image"
    return ImageRejected(f"{path}: {reason}: {pillow_error(exc)}")


def _open(data: bytes, path: Path, *, max_pixels: int) -> tuple[Image.Image, str]:
    """Pillow's view of the file's header, no pixels decoded yet: an accepted format within `max_pixels`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise _rejected(path, exc) from None
    fmt = FORMATS.get(opened.format or "")
    if fmt is None:
        raise ImageRejected(f"{path}: {opened.format} images are not imported (accepted: PNG, JPEG, WebP)")
    width, height = opened.size
    if width * height > max_pixels:
        raise ImageRejected(
            f"{path}: {width}x{height} is {width * height} pixels, more than the "
            f"{max_pixels} PROMPTDEX_INDEXER__MAX_IMAGE_PIXELS allows (a decompression bomb?)")
    return opened, fmt


def read_image_file(path: Path, *, max_pixels: int) -> ImageBytes:
    """Read and hash one file and check its header (format, pixel count): no pixels are decoded.

    Raises ImageRejected with the reason (naming the file): unreadable, empty, not PNG/JPEG/WebP, too many pixels.
    """
    data, stat = _read_bytes(path)
    opened, fmt = _open(data, path, max_pixels=max_pixels)
    return ImageBytes(path, data, hashlib.sha256(data).hexdigest(), stat.st_size, stat.st_mtime, *opened.size, fmt,
                     opened)


def read_image_data(data: bytes, name: Path, *, max_pixels: int, mtime: float) -> ImageBytes:
    """`read_image_file` for bytes already in memory (an archive member, a dataset row); `name` names it in
    messages. Raises ImageRejected with the reason."""
    if not data:
        raise ImageRejected(f"{name}: empty file (0 bytes)")
    opened, fmt = _open(data, name, max_pixels=max_pixels)
    return ImageBytes(name, data, hashlib.sha256(data).hexdigest(), len(data), mtime, *opened.size, fmt, opened)


def _orientation(opened: Image.Image) -> Image.Transpose | None:
    """The transposition the file's EXIF Orientation asks for (read from the header, before any reduction)."""
    try:
        value = opened.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation, as ImageOps.exif_transpose treats it
        return None
    return _TRANSPOSE.get(value) if isinstance(value, int) else None


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_REDUCIBLE = frozenset({"RGB", "RGBA", "L", "LA"})  # modes Image.reduce handles (alpha premultiplied)


def decode_pixels(data: bytes, path: Path, *, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """One decode of a file's first frame, EXIF orientation applied. Raises ImageRejected (naming the file).

    With `min_side` the pixels come reduced by an integer factor, never below `min_side` on the shortest side:
    a JPEG decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, `Image.draft`), which also saves most of
    the decoding; PNG and WebP decode in full and are box-averaged down (`Image.reduce`). Without it: every pixel.
    """
    opened, _fmt = _open(data, path, max_pixels=max_pixels)
    transpose = _orientation(opened)
    try:
        if min_side and opened.format == "JPEG":
            opened.draft("RGB", (min_side, min_side))
        opened.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise _rejected(path, exc) from None
    image: Image.Image = opened
    factor = min(image.size) // min_side if min_side else 1
    if factor >= 2:
        image = (image if image.mode in _REDUCIBLE else rgb(image)).reduce(factor)
    if transpose is not None:
        image = image.transpose(transpose)
    return image


def decode_image(path: Path, *, max_pixels: int) -> DecodedImage:
    """Read, hash and fully decode one file. Raises ImageRejected with the reason (naming the file)."""
    file = read_image_file(path, max_pixels=max_pixels)
    image = decode_pixels(file.data, path, max_pixels=max_pixels)
    return DecodedImage(path, file.sha256, file.file_size, file.file_mtime, file.width, file.height, file.format,
                        image)


def thumbnail_path(thumbs_dir: Path, sha256: str) -> Path:
    """Where the thumbnail of the image with this content hash lives: THUMBS/ab/abcdef....webp."""
    return thumbs_dir / thumbnail_key(sha256)


def thumbnail_key(sha256: str) -> str:
    """The thumbnail's key in the "thumbs" area of a store: the same content-addressed layout, `ab/abcdef....webp`."""
    return f"{sha256[:2]}/{sha256}.webp"


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


def thumbnail_of(image: Image.Image, *, size: int) -> Image.Image:
    """The thumbnail picture: RGB, long side `size` (never enlarged), Lanczos-resampled."""
    thumb = rgb(image)
    thumb = thumb.copy() if thumb is image else thumb
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    return thumb


def _webp(thumb: Image.Image, quality: int) -> bytes:
    encoded = io.BytesIO()
    thumb.save(encoded, "WEBP", quality=quality, method=THUMB_METHOD)
    return encoded.getvalue()


def write_thumbnail(image: Image.Image, dest: Path, *, size: int, quality: int = THUMB_QUALITY,
                    tmp_dir: Path | None = None) -> Path:
    """Save a WebP thumbnail (long side `size`, never enlarged) atomically: a temporary file, then rename."""
    return write_atomic(dest, _webp(thumbnail_of(image, size=size), quality), tmp_dir=tmp_dir)


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


def _working_pixels(original: Path, *, thumb_size: int, max_pixels: int) -> Image.Image:
    """The one decode indexing and thumbnailing share: RGB, reduced to no less than the CLIP and thumbnail sizes."""
    data, _ = _read_bytes(original)
    return rgb(decode_pixels(data, original, max_pixels=max_pixels, min_side=max(CLIP_SIDE, thumb_size)))


def classifier_pixels(original: Path, *, max_pixels: int) -> Image.Image:
    """An image file's pixels as the NSFW classifiers see them at index time: RGB, reduced to no less than CLIP's
    input on the shortest side (ImageRejected, naming the file, when it cannot be decoded)."""
    return _working_pixels(original, thumb_size=0, max_pixels=max_pixels)


def thumbnail_webp(data: bytes, name: Path, *, size: int, max_pixels: int) -> bytes:
    """The WebP thumbnail of an image file's bytes, made exactly as `promptdex index` makes it (ImageRejected, naming
    `name`, when they cannot be decoded)."""
    image = rgb(decode_pixels(data, name, max_pixels=max_pixels, min_side=max(CLIP_SIDE, size)))
    return _webp(thumbnail_of(image, size=size), THUMB_QUALITY)


def ensure_thumbnail(thumbs_dir: Path, sha256: str, original: Path, *, size: int, max_pixels: int) -> Path:
    """The thumbnail of an image, made from the original file when it is missing (e.g. before `promptdex index`)."""
    thumb = thumbnail_path(thumbs_dir, sha256)
    if not thumb.is_file():
        image = _working_pixels(original, thumb_size=size, max_pixels=max_pixels)
        try:
            write_thumbnail(image, thumb, size=size, tmp_dir=temp_dir(thumbs_dir))
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


@dataclass
class IndexPixels:
    """What indexing takes from the one decode of an image file (its thumbnail is written on the way)."""

    clip_input: Image.Image  # RGB, reduced no further than CLIP_SIDE on the shortest side
    phash: int  # dhash of the thumbnail picture (before its WebP encoding)


def index_pixels(original: Path, sha256: str, thumbs_dir: Path, *, thumb_size: int, max_pixels: int,
                 storage: Storage | None = None) -> IndexPixels:
    """Decode `original` once for the CLIP input, the perceptual hash and the thumbnail (written when missing).

    With `storage` (the "thumbs" area of a remote store, PROMPTDEX_STORAGE_URL=s3://...) the thumbnail is also put
    there under `thumbnail_key`, when the store does not have it yet, so API replicas elsewhere serve it.
    Raises ImageRejected (naming the file) for a file that cannot be decoded; an OSError writing the thumbnail
    propagates, so the caller can tell a full or read-only disk (`is_storage_failure`) from one bad file.
    """
    image = _working_pixels(original, thumb_size=thumb_size, max_pixels=max_pixels)
    thumb = thumbnail_of(image, size=thumb_size)
    dest = thumbnail_path(thumbs_dir, sha256)
    encoded = None
    if not dest.is_file():
        encoded = _webp(thumb, THUMB_QUALITY)
        write_atomic(dest, encoded, tmp_dir=temp_dir(thumbs_dir))
    if storage is not None and (encoded is not None or storage.head(thumbnail_key(sha256)) is None):
        storage.put(thumbnail_key(sha256), encoded if encoded is not None else dest.read_bytes())
    return IndexPixels(image, dhash(thumb))
