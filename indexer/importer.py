"""`promptdex import`: folders of PNG/JPEG/WebP into the corpus, incrementally, decoding in parallel."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from tqdm import tqdm

from indexer.images import IMAGE_SUFFIXES, ImageRejected, decode_image, thumbnail_path, write_thumbnail
from indexer.metadata.reader import read_metadata
from indexer.metadata.result import ReadResult
from promptdex.records import NewImage
from promptdex.settings import Settings
from promptdex.store import add_image

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
_BATCH = 64  # files per database transaction


@dataclass
class ImportSummary:
    """What an import did. `errors` and `warnings` are (file, message) pairs."""

    files: int = 0
    imported: int = 0
    unchanged: int = 0
    duplicates: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"imported {self.imported}, unchanged {self.unchanged}, duplicates {self.duplicates}, "
                f"errors {len(self.errors)}, metadata problems {len(self.warnings)} "
                f"({self.files} files in {self.seconds:.1f} s)")

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "imported": self.imported, "unchanged": self.unchanged,
                "duplicates": self.duplicates, "errors": [{"file": f, "error": e} for f, e in self.errors],
                "warnings": [{"file": f, "warning": w} for f, w in self.warnings], "seconds": round(self.seconds, 3)}


@dataclass
class _Prepared:
    path: Path
    size: int
    mtime: float
    image: NewImage | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def scan(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under `paths` (recursive, sorted, absolute), and (path, problem) for paths that are not usable."""
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw).expanduser().absolute()
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(Path(root) / f for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES))
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            else:
                problems.append((str(path), f"not a .png, .jpg, .jpeg or .webp file (suffix {path.suffix!r})"))
        else:
            problems.append((str(path), "no such file or folder"))
    return list(dict.fromkeys(found)), problems


def _known(conn: Conn, files: list[Path]) -> dict[str, tuple[int, float]]:
    """(size, mtime) of files seen before (imported or duplicate) or already in the corpus, by path."""
    known: dict[str, tuple[int, float]] = {}
    names = [str(p) for p in files]
    for start in range(0, len(names), 2000):
        chunk = names[start:start + 2000]
        rows = conn.execute(
            "SELECT path, file_size, file_mtime FROM imported_files WHERE path = ANY(%s) AND status <> 'error' "
            "UNION ALL SELECT path, file_size, file_mtime FROM images WHERE path = ANY(%s) "
            "AND file_size IS NOT NULL AND file_mtime IS NOT NULL",
            (chunk, chunk),
        ).fetchall()
        for row in rows:
            known[row["path"]] = (int(row["file_size"]), float(row["file_mtime"]))
    return known


def _generation_fields(generation: dict[str, Any] | None) -> dict[str, Any]:
    """Sampler class and scheduler config from our generator's record, when it has them."""
    if not generation:
        return {}
    scheduler = generation.get("scheduler")
    scheduler = scheduler if isinstance(scheduler, dict) else {}
    sampler_class = generation.get("scheduler_class") or scheduler.get("class")
    config = generation.get("scheduler_config") or scheduler.get("config")
    init = generation.get("init_image_sha256")
    return {"sampler_class": sampler_class if isinstance(sampler_class, str) else None,
            "scheduler_config": config if isinstance(config, dict) else None,
            "init_image_sha256": init if isinstance(init, str) else None}


def prepare(path: Path, settings: Settings) -> _Prepared:
    """Decode, hash, read metadata and write the thumbnail of one file (runs in a worker thread)."""
    try:
        return _prepare(path, settings)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop an import; it is reported
        logger.exception("%s: unexpected failure while importing", path)
        return _Prepared(path, 0, 0.0, error=f"{path}: unexpected failure: {type(exc).__name__}: {exc}")


def _prepare(path: Path, settings: Settings) -> _Prepared:
    try:
        stat = path.stat()
    except OSError as exc:
        return _Prepared(path, 0, 0.0, error=f"{path}: cannot read the file: {exc.strerror or exc}")
    prepared = _Prepared(path, stat.st_size, stat.st_mtime)
    try:
        decoded = decode_image(path, max_pixels=settings.indexer.max_image_pixels)
    except ImageRejected as exc:
        prepared.error = str(exc)
        return prepared
    result: ReadResult = read_metadata(path, image=decoded.image)
    prepared.warnings = list(result.warnings)
    if result.error:  # pixels decoded but the container's metadata is broken: keep the image, report it
        prepared.warnings.append(result.error)
    try:
        write_thumbnail(decoded.image, thumbnail_path(settings.thumbs_path, decoded.sha256),
                        size=settings.indexer.thumb_size)
    except OSError as exc:
        prepared.error = f"{path}: cannot write its thumbnail: {exc}"
        return prepared
    prepared.size, prepared.mtime = decoded.file_size, decoded.file_mtime
    prepared.image = NewImage(
        sha256=decoded.sha256, path=str(path), width=decoded.width, height=decoded.height, format=decoded.format,
        file_size=decoded.file_size, file_mtime=decoded.file_mtime, params=result.params, source=result.source,
        raw_metadata=result.raw, generation=result.generation,
        created_at=datetime.fromtimestamp(decoded.file_mtime, tz=UTC), **_generation_fields(result.generation),
    )
    return prepared


def _record_file(conn: Conn, item: _Prepared, status: str, sha256: str | None, image_id: int | None) -> None:
    conn.execute(
        "INSERT INTO imported_files (path, file_size, file_mtime, sha256, image_id, status, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (path) DO UPDATE SET file_size = EXCLUDED.file_size, "
        "file_mtime = EXCLUDED.file_mtime, sha256 = EXCLUDED.sha256, image_id = EXCLUDED.image_id, "
        "status = EXCLUDED.status, error = EXCLUDED.error, seen_at = now()",
        (str(item.path), item.size, item.mtime, sha256, image_id, status, item.error),
    )


def _batches(items: Iterable[_Prepared], size: int) -> Iterator[list[_Prepared]]:
    batch: list[_Prepared] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def import_paths(conn: Conn, settings: Settings, paths: Sequence[str | Path], *, workers: int | None = None,
                 progress: bool = True) -> ImportSummary:
    """Import every image under `paths` into the corpus; one bad file is reported and skipped, never fatal.

    Unchanged files (same path, size and mtime as last time) are skipped; the same content at another path
    is a duplicate (one row per sha256). `conn` must not be in autocommit mode's middle of a transaction;
    each batch of files is committed on its own, so an interrupted import keeps what it finished.
    """
    started = time.monotonic()
    summary = ImportSummary()
    files, problems = scan(paths)
    summary.errors.extend(problems)
    summary.files = len(files)
    known = _known(conn, files)
    todo: list[Path] = []
    for path in files:
        try:
            stat = path.stat()
        except OSError as exc:
            summary.errors.append((str(path), f"cannot read the file: {exc.strerror or exc}"))
            continue
        if known.get(str(path)) == (stat.st_size, stat.st_mtime):
            summary.unchanged += 1
        else:
            todo.append(path)
    threads = workers or settings.indexer.import_workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), unit="file", desc="import", disable=not progress or not todo, file=sys.stderr)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="import") as pool:
        results = pool.map(lambda p: prepare(p, settings), todo)
        for batch in _batches(results, _BATCH):
            with conn.transaction():
                for item in batch:
                    _store(conn, item, summary)
            bar.update(len(batch))
    bar.close()
    summary.seconds = time.monotonic() - started
    logger.info("import: %s", summary.line())
    return summary


def _store(conn: Conn, item: _Prepared, summary: ImportSummary) -> None:
    for warning in item.warnings:
        summary.warnings.append((str(item.path), warning.removeprefix(f"{item.path}: ")))
    if item.image is None:
        message = item.error or "not imported"
        summary.errors.append((str(item.path), message.removeprefix(f"{item.path}: ")))
        _record_file(conn, item, "error", None, None)
        return
    image_id, created = add_image(conn, image=item.image)
    if created:
        summary.imported += 1
    else:
        summary.duplicates += 1
    _record_file(conn, item, "imported" if created else "duplicate", item.image.sha256, image_id)
