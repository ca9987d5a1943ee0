"""`promptdex import-dataset`: the part every layout shares. A layout (`indexer.datasets.layouts`) lists a dataset's
units (a DiffusionDB part, a tar shard, a parquet file) and yields each unit's items (image bytes plus the
parameters the dataset records for them); this module stores them.

Streaming: one unit is open at a time and at most a few batches of items are in memory. Each image is written to
the images store (PROMPTDEX_STORAGE_URL, else IMAGES_DIR) under its content hash, `<sha[:2]>/<sha>.<ext>`, with its
original bytes, before its row; rows are committed in batches together with the unit's progress in
`dataset_units`. So a run killed at any point leaves at most objects no row names yet (the next run writes the same
keys), and the next run skips what was committed and carries on; rows are unique by content hash, so nothing is
ever stored twice. With precomputed embeddings (`indexer.datasets.embeddings`) a unit's progress moves only once
the vectors of its rows are saved in the image bundle.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from pydantic import ValidationError
from tqdm import tqdm

from indexer.images import ImageRejected, read_image_data
from indexer.importer import in_order
from indexer.keyword.base import rows
from indexer.metadata.reader import read_metadata
from indexer.metadata.result import NO_METADATA
from indexer.safety import Scorer, get_scorer
from promptdex.errors import DatabaseError, InvalidInput
from promptdex.params import GenerationParams
from promptdex.records import NewImage
from promptdex.settings import Settings
from promptdex.storage import Storage, get_storage
from promptdex.store import add_image, add_images

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
BATCH = 256  # items per database transaction
_AHEAD_PER_WORKER = 8
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


class DatasetError(InvalidInput):
    """A dataset that does not fit its layout: a missing folder, file or column, counts that disagree. The
    message names the file, column or flag; nothing is half imported that a rerun does not complete."""


@dataclass
class Item:
    """One image of a dataset: its bytes and what the dataset says about it.

    `key`: its name in the dataset (a file name, a sample key), for messages and to match precomputed embeddings.
    `params`: GenerationParams fields from the dataset's metadata; None: read them from the image's own metadata.
    """

    key: str
    where: str
    data: bytes | None
    params: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    error: str | None = None  # the dataset's own problem with this item (a bad value, a missing file)


@dataclass
class Unit:
    """A part of a dataset imported as a whole and tracked on its own (`dataset_units`)."""

    name: str
    fingerprint: str
    items: Callable[[int], Iterator[Item]]  # the unit's items, after skipping the first n (already stored)
    count: int | None = None  # items in the unit, when it is cheap to know


@dataclass
class Dataset:
    kind: str  # also the images' `source`
    root: Path
    units: list[Unit]

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.root}"


@dataclass
class DatasetSummary:
    kind: str
    path: str
    units: int = 0
    units_done_before: int = 0
    items: int = 0
    imported: int = 0
    duplicates: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    vectors: int = 0  # precomputed embeddings added to the image bundle
    without_vectors: int = 0  # items the embeddings did not cover (`promptdex index` embeds them)
    seconds: float = 0.0

    def line(self) -> str:
        vectors = f", {self.vectors} vectors added ({self.without_vectors} images left to `promptdex index`)" \
            if self.vectors or self.without_vectors else ""
        rate = self.items / self.seconds if self.seconds else 0.0
        return (f"{self.kind} {self.path}: imported {self.imported}, already in the corpus {self.duplicates}, "
                f"errors {len(self.errors)}{vectors}; {self.units} units ({self.units_done_before} done before), "
                f"{self.items} items in {self.seconds:.1f} s ({rate:.0f}/s)")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "units": self.units, "units_done_before": self.units_done_before,
                "items": self.items, "imported": self.imported, "duplicates": self.duplicates,
                "errors": [{"item": k, "error": e} for k, e in self.errors], "vectors": self.vectors,
                "without_vectors": self.without_vectors, "seconds": round(self.seconds, 3)}


@dataclass
class Prepared:
    item: Item
    image: NewImage | None = None
    error: str | None = None


class VectorSink(Protocol):
    """Where precomputed vectors go (`indexer.datasets.embeddings.EmbeddingSink`); None without --embeddings."""

    uncovered: int  # stored images the embeddings have no vector for (`promptdex index` embeds them)

    def add(self, conn: Conn, pairs: list[tuple[int, str]]) -> int:
        """Add the vectors of these (image id, item key) pairs not in the bundle yet; returns how many."""

    def due(self) -> bool:
        """Enough unsaved vectors for a checkpoint."""

    def commit(self, conn: Conn) -> None:
        """Save the bundle and record its new ids (in that order)."""


def image_key(sha256: str, fmt: str) -> str:
    """An imported dataset image's key in the images store (relative: its row's `path`)."""
    return f"{sha256[:2]}/{sha256}{SUFFIX.get(fmt, '.img')}"


def _params(item: Item) -> GenerationParams:
    try:
        return GenerationParams.model_validate(item.params or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise DatasetError(f"{item.where}: {where}: {first['msg']} (got {first.get('input')!r})") from None


def prepare(item: Item, dataset: Dataset, settings: Settings, storage: Storage, scorer: Scorer) -> Prepared:
    """Hash and check one item, read its parameters, score its prompt, and write its bytes to the store (runs in a
    worker thread); never raises: a bad item is reported and skipped."""
    if item.error is not None or item.data is None:
        return Prepared(item, error=item.error or "no image data")
    try:
        file = read_image_data(item.data, Path(item.where), max_pixels=settings.indexer.max_image_pixels,
                               mtime=time.time())
        source, raw, generation, provenance = dataset.kind, dict(item.extra), None, None
        if item.params is None:  # the dataset says nothing: the image's own metadata (A1111 text, ComfyUI...)
            result = read_metadata(item.where, image=file.header, stealth=False, data=file.data)
            params, provenance = result.params, result.provenance
            if result.software != NO_METADATA and result.error is None:
                source, generation = result.source, result.generation
                raw |= result.raw
        else:
            params = _params(item)
        params = params.model_copy(update={"width": params.width or file.width,
                                           "height": params.height or file.height})
        key = image_key(file.sha256, file.format)
        if storage.head(key) is None:
            storage.put(key, file.data)
        image = NewImage(sha256=file.sha256, path=key, width=file.width, height=file.height, format=file.format,
                         file_size=file.file_size, file_mtime=file.file_mtime, params=params, source=source,
                         raw_metadata=raw, generation=generation, provenance=provenance,
                         created_at=item.created_at or datetime.now(UTC))
        image.safety = scorer.for_prompt_only(params.prompt)
        return Prepared(item, image=image)
    except (ImageRejected, DatasetError) as exc:
        return Prepared(item, error=str(exc).removeprefix(f"{item.where}: "))
    except OSError as exc:
        raise DatasetError(f"{storage.name}: cannot write {item.where}'s image: {exc.strerror or exc}; free space "
                           "or fix the storage (PROMPTDEX_STORAGE_URL / PROMPTDEX_IMAGES_DIR), then run the same "
                           "import again: it carries on where it stopped") from exc


def _progress(conn: Conn, dataset: str, unit: Unit) -> int:
    """How many of the unit's items are stored (0 when new or changed since)."""
    found = rows(conn, "SELECT fingerprint, done, finished FROM dataset_units WHERE dataset = %s AND unit = %s",
                 (dataset, unit.name))
    if not found:
        return 0
    fingerprint, done, finished = found[0]["fingerprint"], found[0]["done"], found[0]["finished"]
    if fingerprint != unit.fingerprint:
        logger.info("%s: changed since it was imported: reading it again", unit.name)
        return 0
    return -1 if finished else int(done)


def _mark(conn: Conn, dataset: str, unit: Unit, done: int, *, finished: bool = False) -> None:
    conn.execute(
        "INSERT INTO dataset_units (dataset, unit, fingerprint, done, finished) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (dataset, unit) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, done = EXCLUDED.done, "
        "finished = EXCLUDED.finished, updated_at = now()", (dataset, unit.name, unit.fingerprint, done, finished))


def _store(conn: Conn, batch: list[Prepared], summary: DatasetSummary) -> list[tuple[int, str]]:
    """Add a batch's rows (the caller's transaction); returns (image id, item key) of every stored item.

    The whole batch goes in at once (`add_images`); when the database refuses a value in it, the batch is stored row
    by row instead, each in a savepoint, so the refused row is an error of its item only."""
    summary.items += len(batch)
    ready = [p for p in batch if p.image is not None]
    summary.errors.extend((p.item.where, p.error or "not imported") for p in batch if p.image is None)
    try:
        with conn.transaction():  # a savepoint
            added = add_images(conn, images=[p.image for p in ready if p.image is not None])
    except (psycopg.DataError, psycopg.IntegrityError):
        return _store_each(conn, ready, summary)
    for _, created in added:
        if created:
            summary.imported += 1
        else:
            summary.duplicates += 1
    return [(image_id, p.item.key) for (image_id, _), p in zip(added, ready, strict=True)]


def _store_each(conn: Conn, ready: list[Prepared], summary: DatasetSummary) -> list[tuple[int, str]]:
    stored: list[tuple[int, str]] = []
    for prepared in ready:
        if prepared.image is None:
            continue
        try:
            with conn.transaction():  # a savepoint: one refused row does not undo the batch
                image_id, created = add_image(conn, image=prepared.image)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            summary.errors.append((prepared.item.where,
                                   f"the database refused it: {exc.diag.message_primary or type(exc).__name__}"))
            continue
        if created:
            summary.imported += 1
        else:
            summary.duplicates += 1
        stored.append((image_id, prepared.item.key))
    return stored


def import_dataset(conn: Conn, settings: Settings, dataset: Dataset, *, sink: VectorSink | None = None,
                   workers: int | None = None, progress: bool = True) -> DatasetSummary:
    """Import every unit of `dataset` not imported yet (see the module docstring). `conn` is in autocommit mode."""
    started = time.monotonic()
    summary = DatasetSummary(dataset.kind, str(dataset.root), units=len(dataset.units))
    storage = get_storage(settings, "images")
    scorer = get_scorer(settings)
    threads = workers or settings.indexer.import_workers or os.cpu_count() or 1
    counts = [u.count for u in dataset.units]
    total = sum(c for c in counts if c is not None) if all(c is not None for c in counts) else None
    bar = tqdm(total=total, unit="image", desc=f"import {dataset.kind}", disable=not progress, file=sys.stderr)
    unsaved: dict[str, tuple[Unit, int, bool]] = {}  # unit -> progress waiting for the vectors' checkpoint
    stored_total = 0

    def checkpoint() -> None:
        if sink is not None:
            sink.commit(conn)
        with conn.transaction():
            for unit, done, finished in unsaved.values():
                _mark(conn, dataset.name, unit, done, finished=finished)
        unsaved.clear()

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dataset")
    try:
        for unit in dataset.units:
            done = _progress(conn, dataset.name, unit)
            if done < 0:
                summary.units_done_before += 1
                bar.update(unit.count or 0)
                continue
            bar.update(done)
            batch: list[Prepared] = []
            work = lambda item: prepare(item, dataset, settings, storage, scorer)  # noqa: E731
            prepared_items = in_order(pool, unit.items(done), work, BATCH + threads * _AHEAD_PER_WORKER)
            while True:
                batch = [p for _, p in zip(range(BATCH), prepared_items, strict=False)]
                finished = len(batch) < BATCH
                with conn.transaction():
                    stored = _store(conn, batch, summary)
                    done += len(batch)
                    if sink is None:
                        _mark(conn, dataset.name, unit, done, finished=finished)
                stored_total += len(stored)
                if sink is not None:
                    summary.vectors += sink.add(conn, stored)
                    unsaved[unit.name] = (unit, done, finished)
                    if sink.due():
                        checkpoint()
                bar.update(len(batch))
                if finished:
                    break
        if sink is not None:
            checkpoint()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(
            f"PostgreSQL database {conn.info.dbname!r}: {reason}; the import stopped after storing {stored_total} "
            "images this run. Check that PostgreSQL is running "
            "(PROMPTDEX_DATABASE_URL), then run the same import again: what was stored is kept and skipped") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if sink is not None:
        summary.without_vectors = sink.uncovered
    summary.seconds = time.monotonic() - started
    logger.info("import-dataset: %s", summary.line())
    return summary
