"""`promptdex import`: folders of PNG/JPEG/WebP into the corpus, incrementally, reading files in parallel.

Import reads each file once and decodes no pixels where it can: the content hash, the header (format, size, pixel
limit) and the metadata all come from the bytes. Pixels are decoded only where the metadata reader needs them (A1111
"stealth" text in a PNG or WebP without text metadata) or where the container is broken (the file is kept when its
pixels still decode, else rejected). Thumbnails, perceptual hashes and CLIP inputs come later, from the one decode
`promptdex index` makes of each image (the API makes a missing thumbnail on first request).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from tqdm import tqdm

from indexer.images import (
    IMAGE_SUFFIXES,
    DecodedImage,
    ImageBytes,
    ImageRejected,
    decode_pixels,
    file_holds,
    read_image_file,
)
from indexer.metadata.reader import read_metadata
from indexer.metadata.result import NO_METADATA, ReadResult
from indexer.safety import Scorer, get_scorer
from promptdex.errors import DatabaseError
from promptdex.records import FileRecord, FileStatus, NewImage
from promptdex.settings import Settings
from promptdex.store import (
    add_image,
    add_images,
    current_files,
    file_records,
    forget_file,
    image_location,
    images_at,
    mark_missing,
    move_image,
    other_copies,
    record_file,
    record_files,
    recorded_under,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

Conn = psycopg.Connection[Any]
_BATCH = 64  # files per database transaction at most
_BATCH_SECONDS = 1.0  # ... and at most this long between commits, so a lost database is noticed at once
_AHEAD = 4  # files in flight per worker thread on top of a whole batch (read while the previous one is stored)
_STEALTH_SUFFIXES = (".png", ".webp")  # where read_metadata looks for A1111 stealth text in the pixels


class _Outcome(StrEnum):
    IMPORTED = "imported"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"
    ERROR = "error"


@dataclass
class ImportSummary:
    """What an import did. `errors` and `warnings` are (file, message) pairs; each file is counted once.

    `missing`: rows marked missing (no file holds their content any more); `vanished`: recorded files found
    gone by `--prune` (None when it did not run).
    """

    files: int = 0
    imported: int = 0
    unchanged: int = 0
    duplicates: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    missing: int = 0
    vanished: int | None = None
    seconds: float = 0.0

    def line(self) -> str:
        pruned = "" if self.vanished is None else f", vanished {self.vanished}"
        return (f"imported {self.imported}, unchanged {self.unchanged}, duplicates {self.duplicates}, "
                f"errors {len(self.errors)}, metadata problems {len(self.warnings)}, marked missing {self.missing}"
                f"{pruned} ({self.files} files in {self.seconds:.1f} s)")

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "imported": self.imported, "unchanged": self.unchanged,
                "duplicates": self.duplicates, "errors": [{"file": f, "error": e} for f, e in self.errors],
                "warnings": [{"file": f, "warning": w} for f, w in self.warnings], "missing": self.missing,
                "vanished": self.vanished, "seconds": round(self.seconds, 3)}

    def count(self, outcome: _Outcome) -> None:
        if outcome is _Outcome.IMPORTED:
            self.imported += 1
        elif outcome is _Outcome.UNCHANGED:
            self.unchanged += 1
        elif outcome is _Outcome.DUPLICATE:
            self.duplicates += 1


@dataclass
class _Prepared:
    path: Path
    size: int
    mtime: float
    image: NewImage | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def _normal(path: str | Path) -> Path:
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def scan(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under `paths` (recursive, sorted, absolute), and (path, problem) for paths that are not usable.

    A file reached twice (named twice, inside two named folders, or through a symbolic link) is listed once.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        path = _normal(raw)
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
    unique: dict[str, Path] = {}
    for file in found:
        unique.setdefault(os.path.realpath(file), file)
    return list(unique.values()), problems


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


def prepare(path: Path, settings: Settings, scorer: Scorer | None = None) -> _Prepared:
    """Read, hash and check one file, read its metadata and score its prompt (runs in a worker thread); never
    raises. Its image classifiers' scores come at index time, which decodes the pixels."""
    try:
        prepared = _prepare(path, settings)
        if prepared.image is not None:
            scorer = scorer or get_scorer(settings)
            prepared.image.safety = scorer.for_prompt_only(prepared.image.params.prompt)
        return prepared
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
        file = read_image_file(path, max_pixels=settings.indexer.max_image_pixels)
        result = _metadata(file, max_pixels=settings.indexer.max_image_pixels)
    except ImageRejected as exc:
        prepared.error = str(exc)
        return prepared
    prepared.warnings = list(result.warnings)
    if result.error:  # the pixels decode but the container's metadata is broken: keep the image, report it
        prepared.warnings.append(result.error)
    prepared.size, prepared.mtime = file.file_size, file.file_mtime
    prepared.image = _new_image(file, result)
    return prepared


def _new_image(file: ImageBytes | DecodedImage, result: ReadResult) -> NewImage:
    """The row of a file read (or decoded) and its metadata."""
    return NewImage(
        sha256=file.sha256, path=str(file.path), width=file.width, height=file.height, format=file.format,
        file_size=file.file_size, file_mtime=file.file_mtime, params=result.params, source=result.source,
        raw_metadata=result.raw, generation=result.generation, provenance=result.provenance,
        created_at=datetime.fromtimestamp(file.file_mtime, tz=UTC), **_generation_fields(result.generation),
    )


def _metadata(file: ImageBytes, *, max_pixels: int) -> ReadResult:
    """The file's metadata, read from its container; its pixels are decoded only when that cannot decide.

    A container the reader finds broken (truncated, a bad CRC...) is decoded: when its pixels decode the image is
    kept and the problem is a warning, else the file is rejected with Pillow's reason (ImageRejected). A PNG or
    WebP without text metadata is decoded for the A1111 stealth text its pixels may hide.
    """
    result = read_metadata(file.path, image=file.header, stealth=False)
    stealth = result.software == NO_METADATA and file.path.suffix.lower() in _STEALTH_SUFFIXES
    if result.error is None and not stealth:
        return result
    pixels = decode_pixels(file.data, file.path, max_pixels=max_pixels)
    return result if result.error is not None else read_metadata(file.path, image=pixels)


def in_order(pool: ThreadPoolExecutor, todo: Iterable[T], work: Callable[[T], R], ahead: int) -> Iterator[R]:
    """`work` of each item, in order, with at most `ahead` in flight (never the whole folder at once; `todo` is
    consumed lazily, so it may be a generator)."""
    pending: deque[Future[R]] = deque()
    items = iter(todo)
    for item in items:
        pending.append(pool.submit(work, item))
        if len(pending) >= ahead:
            break
    while pending:
        done = pending.popleft().result()
        for following in islice(items, 1):
            pending.append(pool.submit(work, following))
        yield done


def import_paths(conn: Conn, settings: Settings, paths: Sequence[str | Path], *, workers: int | None = None,
                 progress: bool = True, prune: bool = False, database: str | None = None) -> ImportSummary:
    """Import every image under `paths` into the corpus; one bad file is reported and skipped, never fatal.

    Unchanged files (same path, size and mtime as last time) are skipped; the same content at another path
    is a duplicate (one row per sha256). A path whose content changed moves to the new content's row, and the
    old row keeps only a file that still holds its content, or is marked missing. With `prune`, recorded files
    under `paths` that are gone are forgotten and rows no file holds any more are marked missing.

    Each batch of files is committed on its own, so an interrupted import keeps what it finished. What no file
    could escape stops the import at once: a lost database raises DatabaseError (naming `database`, by default
    the connection's database). Import writes no thumbnails (see the module's docstring).
    """
    started = time.monotonic()
    where = database or f"PostgreSQL database {conn.info.dbname!r}"
    summary = ImportSummary(vanished=0 if prune else None)
    files, problems = scan(paths)
    summary.errors.extend(problems)
    summary.files = len(files)
    stored = 0
    todo: list[Path] = []
    try:
        todo, records = _changed_files(conn, files, summary)
        threads = workers or settings.indexer.import_workers or os.cpu_count() or 1
        bar = tqdm(total=len(todo), unit="file", desc="import", disable=not progress or not todo, file=sys.stderr)
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="import")
        try:
            batch: list[_Prepared] = []
            since = time.monotonic()
            ahead = _BATCH + threads * _AHEAD  # a whole batch is read while the one before it is stored
            scorer = get_scorer(settings)
            for item in in_order(pool, todo, lambda p: prepare(p, settings, scorer), ahead):
                batch.append(item)
                if len(batch) >= _BATCH or time.monotonic() - since >= _BATCH_SECONDS:
                    _store_batch(conn, batch, records, summary)
                    stored += len(batch)
                    bar.update(len(batch))
                    batch, since = [], time.monotonic()
            if batch:
                _store_batch(conn, batch, records, summary)
                stored += len(batch)
                bar.update(len(batch))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # files in flight finish, the rest never start
            bar.close()
        if prune:
            _prune(conn, [str(_normal(p)) for p in paths], summary)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseError(_database_message(exc, where, stored, len(todo))) from exc
    summary.seconds = time.monotonic() - started
    logger.info("import: %s", summary.line())
    return summary


def _changed_files(conn: Conn, files: list[Path], summary: ImportSummary) -> tuple[list[Path], dict[str, FileRecord]]:
    """Files new or changed since the last import (the others are counted unchanged), and what was recorded."""
    names = [str(p) for p in files]
    records = file_records(conn, paths=names)
    known = current_files(conn, paths=names)
    known.update((name, (r.file_size, r.file_mtime)) for name, r in records.items() if r.status != FileStatus.ERROR)
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
    return todo, records


def _store_batch(conn: Conn, batch: list[_Prepared], records: dict[str, FileRecord], summary: ImportSummary) -> None:
    """Store a batch in one transaction; a file the database refuses (bad data) is an error of that file only."""
    outcomes: list[tuple[_Prepared, _Outcome, int, str | None]] = []
    with conn.transaction():
        added = _add_new(conn, [i for i in batch if i.image is not None and str(i.path) not in records])
        for item in batch:
            if str(item.path) in added:
                outcomes.append((item, _Outcome.IMPORTED, 0, None))
                continue
            try:
                with conn.transaction():  # a savepoint: one refused file does not undo the batch
                    outcome, missing = _store(conn, item, records.get(str(item.path)))
                outcomes.append((item, outcome, missing, None))
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                reason = f"the database refused it: {exc.diag.message_primary or type(exc).__name__}"
                with conn.transaction():
                    _record_error(conn, item, reason)
                outcomes.append((item, _Outcome.ERROR, 0, reason))
    for item, outcome, missing, refused in outcomes:  # counted once the batch is committed
        for warning in item.warnings:
            summary.warnings.append((str(item.path), warning.removeprefix(f"{item.path}: ")))
        if outcome is _Outcome.ERROR:
            message = refused or item.error or "not imported"
            summary.errors.append((str(item.path), message.removeprefix(f"{item.path}: ")))
        summary.count(outcome)
        summary.missing += missing


def _add_new(conn: Conn, items: list[_Prepared]) -> set[str]:
    """Files at paths never recorded, in one go (`add_images`): the rows of content new to the corpus and their
    file records. Returns the paths so stored; the others (a duplicate, content that comes back) take `_store`, as
    do all of them when the database refuses a value in the batch (there the refused file is found)."""
    if not items:
        return set()
    try:
        with conn.transaction():  # a savepoint
            added = add_images(conn, images=[i.image for i in items if i.image is not None])
            new = [(item, image_id) for item, (image_id, created) in zip(items, added, strict=True) if created]
            record_files(conn, records=[
                FileRecord(path=str(item.path), file_size=item.size, file_mtime=item.mtime,
                           sha256=item.image.sha256 if item.image else None, image_id=image_id,
                           status=FileStatus.IMPORTED) for item, image_id in new])
    except (psycopg.DataError, psycopg.IntegrityError):
        return set()
    return {str(item.path) for item, _ in new}


def _record_error(conn: Conn, item: _Prepared, error: str) -> None:
    record_file(conn, record=FileRecord(path=str(item.path), file_size=item.size, file_mtime=item.mtime,
                                        status=FileStatus.ERROR, error=error))


def _store(conn: Conn, item: _Prepared, previous: FileRecord | None) -> tuple[_Outcome, int]:
    """Store one prepared file. Returns its outcome and how many rows it left marked missing (0 or 1)."""
    path = str(item.path)
    released = previous.image_id if previous is not None else None
    if item.image is None:
        missing = _release(conn, released, path) if released is not None else 0
        _record_error(conn, item, item.error or "not imported")
        return _Outcome.ERROR, missing
    image_id, created = add_image(conn, image=item.image)
    outcome, status = _Outcome.IMPORTED, FileStatus.IMPORTED
    if not created:
        location = image_location(conn, image_id=image_id)
        if location is not None and (location.missing or location.path == path):
            # its content is back (revived), or the same file was touched: this path is the row's file
            move_image(conn, image_id=image_id, path=path, file_size=item.size, file_mtime=item.mtime)
            if not location.missing:
                outcome = _Outcome.UNCHANGED
                status = previous.status if previous is not None and previous.image_id == image_id else status
        elif previous is not None and previous.image_id == image_id:
            outcome, status = _Outcome.UNCHANGED, previous.status  # a copy seen before, only touched
        else:
            outcome, status = _Outcome.DUPLICATE, FileStatus.DUPLICATE
    missing = _release(conn, released, path) if released is not None and released != image_id else 0
    record_file(conn, record=FileRecord(path=path, file_size=item.size, file_mtime=item.mtime,
                                        sha256=item.image.sha256, image_id=image_id, status=status))
    return outcome, missing


def _release(conn: Conn, image_id: int, path: str) -> int:
    """`path` no longer holds this image's content: move the row to a copy that does, or mark it missing.

    Returns 1 when the row was marked missing, else 0 (its file was elsewhere already, or a copy took over).
    """
    location = image_location(conn, image_id=image_id)
    if location is None or location.missing or location.path != path:
        return 0
    for copy in other_copies(conn, image_id=image_id, besides=path):
        holder = Path(copy.path)
        if file_holds(holder, sha256=location.sha256, file_size=copy.file_size, file_mtime=copy.file_mtime):
            stat = holder.stat()
            move_image(conn, image_id=image_id, path=copy.path, file_size=stat.st_size, file_mtime=stat.st_mtime)
            logger.info("image %d: %s changed or is gone; its content is now served from %s", image_id, path,
                        copy.path)
            return 0
    mark_missing(conn, image_id=image_id)
    logger.info("image %d: %s changed or is gone and no other file holds its content: marked missing",
                image_id, path)
    return 1


def _prune(conn: Conn, roots: list[str], summary: ImportSummary) -> None:
    """Forget recorded files under `roots` that are gone; mark missing the rows no remaining file holds."""
    gone_roots: set[str] = set()
    with conn.transaction():
        for path in recorded_under(conn, roots=roots):
            if os.path.isfile(path):
                continue
            for image_id in images_at(conn, path=path):
                summary.missing += _release(conn, image_id, path)
            forget_file(conn, path=path)
            summary.vanished = (summary.vanished or 0) + 1
            gone_roots.update(r for r in roots if path == r or path.startswith(r.rstrip("/") + "/"))
    # a named folder or file that is gone on purpose is what --prune is for, not an error
    summary.errors = [(p, e) for p, e in summary.errors if p not in gone_roots or os.path.exists(p)]


def _database_message(exc: psycopg.Error, where: str, stored: int, total: int) -> str:
    state = getattr(exc, "sqlstate", None) or ""
    if state == "53100":
        cause, advice = "PostgreSQL's disk is full", "free space on the database server's disk"
    elif state.startswith("57P") or "terminat" in str(exc).lower() or isinstance(exc, psycopg.InterfaceError):
        cause = "the server closed the connection (it stopped or restarted, or an administrator ended the session)"
        advice = "check that PostgreSQL is running and reachable (PROMPTDEX_DATABASE_URL)"
    else:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        cause, advice = f"the database failed: {reason}", "check PostgreSQL and PROMPTDEX_DATABASE_URL"
    return (f"{where}: {cause}; the import stopped after storing {stored} of {total} new or changed files. "
            f"{advice[0].upper()}{advice[1:]}, then run the same import again: what was stored is kept and skipped")
