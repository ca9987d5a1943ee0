"""Image files: PNG with A1111 `parameters` and a JSON record, written crash-safely with their corpus rows.

Layout (under PROMPTDEX_IMAGES_DIR): a generated image is `<sha[:2]>/<sha>.png`, named by the sha256 of its
bytes, and its row's `path` is that relative path. `.incoming/` holds files being written; init images for
img2img are kept under the inputs folder as `<sha256><suffix>` (their original bytes).

Write protocol (`save_image`): create `.incoming/<sha>.<token>.new`, take an exclusive flock on it, rename it
to `.part` (so a `.part` file is locked from birth while its writer lives), write, fsync;
insert the row and COMMIT; then rename the file into place and fsync the folder. A crash before the commit
leaves a part file with no row: `repair_incoming` deletes it. A crash after the commit leaves a part file whose
row exists: `repair_incoming` finishes the rename (roll forward). So no crash leaves a row without a file or a
file without a row, and the repair only reads `.incoming/`, however big the corpus. A part file whose writer is
alive is locked and skipped. (A file deleted by hand later is restored by `promptdex reproduce ID`, which
re-renders it bit for bit; `find_missing_files` lists such rows.)

With a remote store (PROMPTDEX_STORAGE_URL=s3://...) an image is one atomic PUT of its content-addressed key, made
before its row is committed, so nothing passes through `.incoming/`; `find_missing_files` and `restore_file` then
check and write the store, and `repair_incoming` finishes a committed local write left from before by putting it
there.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator.hashing import sha256_bytes
from promptdex.errors import InvalidInput
from promptdex.records import NewImage
from promptdex.storage import Storage, is_remote, missing_keys
from promptdex.store import add_image, get_image_by_sha256

logger = logging.getLogger(__name__)

PARAMETERS_KEY = "parameters"
RECORD_KEY = "promptdex"
INCOMING = ".incoming"
_PART = ".part"
_NEW = ".new"


def encode_png(image: Any, *, parameters: str, record: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """PNG bytes of a PIL image with the `parameters` and `promptdex` text chunks, and those chunks.

    The same pixels and record always give the same bytes (no timestamps in the file).
    """
    from PIL.PngImagePlugin import PngInfo

    chunks = {PARAMETERS_KEY: parameters,
              RECORD_KEY: json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                                     allow_nan=False)}
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=6)
    return buffer.getvalue(), chunks


def read_png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG file."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return {str(k): str(v) for k, v in getattr(img, "text", {}).items()}


def image_path(sha256: str) -> str:
    """Where a generated image lives, relative to the images folder."""
    return f"{sha256[:2]}/{sha256}.png"


@dataclass
class Saved:
    id: int
    created: bool
    path: Path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_to_store(conn: Any, storage: Storage, *, data: bytes, image: NewImage, sha: str, rel: str) -> Saved:
    """An object store: the object (content-addressed, one atomic PUT) first, then the row, so a crash leaves at
    most an orphan object no row names, never a row without its object."""
    import time

    if storage.head(rel) is None:
        storage.put(rel, data)
    row = image.model_copy(update={"sha256": sha, "path": rel, "file_size": len(data), "file_mtime": time.time()})
    with conn.transaction():
        image_id, created = add_image(conn, image=row)
    return Saved(image_id, created, Path(rel))


def save_image(conn: Any, *, images_path: Path, data: bytes, image: NewImage,
               storage: Storage | None = None) -> Saved:
    """Write the PNG and commit its row (see the module docstring). `image.sha256` and `path` are set here.

    `conn` must not be inside a transaction. Returns the row id; `created` is False when the same bytes were
    already in the corpus (then no second row is made). With a remote `storage` (PROMPTDEX_STORAGE_URL=s3://...)
    the file goes there instead (`Saved.path` is then the key).
    """
    sha = sha256_bytes(data)
    rel = image_path(sha)
    if storage is not None and is_remote(storage):
        return _save_to_store(conn, storage, data=data, image=image, sha=sha, rel=rel)
    final = images_path / rel
    incoming = images_path / INCOMING
    incoming.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    new, part = incoming / f"{sha}.{token}{_NEW}", incoming / f"{sha}.{token}{_PART}"
    fd = os.open(new, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(new, part)  # a .part file is locked from the moment it has that name
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:  # a full disk, a kill signal: nothing half-written stays behind
            part.unlink(missing_ok=True)
            raise
        stat = os.fstat(fd)
        row = image.model_copy(update={"sha256": sha, "path": rel, "file_size": len(data),
                                       "file_mtime": stat.st_mtime})
        try:
            with conn.transaction():
                image_id, created = add_image(conn, image=row)
                existing = None if created else get_image_by_sha256(conn, sha256=sha)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if created or (existing is not None and existing.path == rel):
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, final)
            _fsync_dir(final.parent)
        else:  # the same bytes are already in the corpus under another path
            part.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return Saved(image_id, created, final)


@dataclass
class RepairReport:
    restored: int = 0
    removed: int = 0
    busy: int = 0


def repair_incoming(conn: Any, *, images_path: Path, storage: Storage | None = None) -> RepairReport:
    """Finish or undo the writes a crash interrupted (see the module docstring); skip those still in progress.
    With a remote `storage` a committed write is finished by putting it into the store (where the row's key is read)."""
    remote = storage if storage is not None and is_remote(storage) else None
    report = RepairReport()
    incoming = images_path / INCOMING
    if not incoming.is_dir():
        return report
    for part in sorted([*incoming.glob(f"*{_PART}"), *incoming.glob(f"*{_NEW}")]):
        sha = part.name.split(".")[0]
        try:
            fd = os.open(part, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.busy += 1
                continue
            row = get_image_by_sha256(conn, sha256=sha) if len(sha) == 64 else None
            final = images_path / image_path(sha)
            committed = part.suffix == _PART and row is not None and row.path == image_path(sha)
            if committed and remote is not None and _sha_of(part) == sha:
                if remote.head(image_path(sha)) is None:
                    remote.put(image_path(sha), part.read_bytes())
                part.unlink(missing_ok=True)
                report.restored += 1
            elif committed and not final.exists() and _sha_of(part) == sha:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, final)
                _fsync_dir(final.parent)
                report.restored += 1
            else:
                part.unlink(missing_ok=True)
                report.removed += 1
        finally:
            os.close(fd)
    if report.restored or report.removed:
        logger.warning("repaired %s: %d interrupted writes finished, %d removed", incoming, report.restored,
                       report.removed)
    return report


def _sha_of(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def find_missing_files(conn: Any, *, images_path: Path, storage: Storage | None = None) -> list[int]:
    """Ids of generated images whose file is not in the images folder, or with a remote `storage` not in the store
    (checked a folder at a time by listing, see `missing_keys`, not one request per row)."""
    rows = conn.execute("SELECT id, path FROM images WHERE source = 'generated' ORDER BY id").fetchall()
    if storage is None or not is_remote(storage):
        return [int(r["id"]) for r in rows if not (images_path / r["path"]).is_file()]
    gone = missing_keys(storage, {str(r["path"]) for r in rows if not Path(r["path"]).is_absolute()})
    return [int(r["id"]) for r in rows
            if (not Path(r["path"]).is_file() if Path(r["path"]).is_absolute() else str(r["path"]) in gone)]


def restore_file(*, images_path: Path, rel: str, data: bytes, storage: Storage | None = None) -> Path:
    """Put a file whose row exists back in place (atomically): into the folder, or the remote `storage` (then the
    returned path is its key)."""
    if storage is not None and is_remote(storage):
        storage.put(rel, data)
        return Path(rel)
    final = images_path / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


# ---- init images -------------------------------------------------------------------------------------------

def check_init_image(path: Path, *, argument: str = "--init-image") -> tuple[str, int, int]:
    """(sha256, width, height) of a readable image file; InvalidInput otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{argument}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = _oriented_size(img)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{argument}: {path} is not a readable image ({exc}); accepted: PNG, JPEG, WebP, "
                           "or another format Pillow reads") from exc
    return sha256_bytes(data), width, height


def _oriented_size(img: Any) -> tuple[int, int]:
    orientation = img.getexif().get(0x0112, 1)
    return (img.height, img.width) if orientation in (5, 6, 7, 8) else (img.width, img.height)


def store_input_image(path: Path, *, inputs_path: Path) -> str:
    """Keep an init image's bytes under the inputs folder (content-addressed); returns its sha256."""
    from promptdex.inputs import keep_input

    check_init_image(path)
    return keep_input(path.read_bytes(), suffix=path.suffix.lower(), folder=inputs_path)


def input_image_file(sha: str, *, inputs_path: Path) -> Path:
    found = sorted(inputs_path.glob(f"{sha}.*")) if inputs_path.is_dir() else []
    if not found:
        raise InvalidInput(f"init image {sha} is not in {inputs_path} (it is kept there when a job is queued)")
    return found[0]


def load_input_image(sha: str, *, inputs_path: Path, size: tuple[int, int]) -> Any:
    """The init image as the pipeline gets it: EXIF-oriented, RGB, resized to `size` with Lanczos if needed."""
    from PIL import Image, ImageOps

    path = input_image_file(sha, inputs_path=inputs_path)
    if sha256_bytes(path.read_bytes()) != sha:
        raise InvalidInput(f"init image {path} no longer has sha256 {sha}")
    with Image.open(path) as img:
        img.load()
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)
