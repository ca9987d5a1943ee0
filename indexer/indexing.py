"""`promptdex index`: embed what is not embedded yet, update the FAISS bundles and the keyword index, resumably.

Crash safety: a bundle is saved atomically first, then the ids it gained are recorded in `index_entries` in one
transaction. On start, the bundle on disk and `index_entries` are reconciled (ids in the bundle but not
recorded are recorded; records without a vector are dropped, so those items are embedded again), so a run
killed at any point leaves neither duplicate nor missing vectors once the next run has finished.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from tqdm import tqdm

from indexer.bundles import Bundle, read_manifest
from indexer.embedders import Embedder, Embedders, Vectors
from indexer.images import ImageRejected, dhash, ensure_thumbnail, image_file, load_for_embedding
from indexer.keyword.base import KeywordIndex, rows
from promptdex.errors import PromptdexError
from promptdex.index_state import forget_bundle, indexed_ids, record_indexed, upsert_bundle
from promptdex.settings import Settings

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
IMAGE_BUNDLE = "clip-image"
PROMPT_BUNDLE = "prompt-text"
_LOCK = 0x70646978  # pg_advisory_lock key: one `promptdex index` per database at a time


@dataclass(frozen=True)
class BundleSpec:
    """A bundle the indexer maintains: what it holds and which table its ids come from."""

    name: str
    kind: str
    table: str


SPECS = (BundleSpec(IMAGE_BUNDLE, "image", "images"), BundleSpec(PROMPT_BUNDLE, "text", "prompts"))


@dataclass
class BundleReport:
    name: str
    model: str = ""
    added: int = 0
    total: int = 0
    recovered: int = 0
    dropped: int = 0
    removed: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class IndexReport:
    bundles: list[BundleReport] = field(default_factory=list)
    keyword_backend: str = ""
    keyword_added: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        parts = [f"{b.name}: +{b.added} ({b.total} total)" for b in self.bundles]
        parts.append(f"keyword ({self.keyword_backend}): +{self.keyword_added} prompts")
        skipped = sum(len(b.skipped) for b in self.bundles)
        tail = f"; {skipped} items could not be embedded" if skipped else ""
        return ", ".join(parts) + f" in {self.seconds:.1f} s{tail}"

    def to_json(self) -> dict[str, Any]:
        return {"bundles": [{**b.__dict__, "skipped": [{"id": i, "error": e} for i, e in b.skipped]}
                            for b in self.bundles],
                "keyword": {"backend": self.keyword_backend, "added": self.keyword_added},
                "seconds": round(self.seconds, 3)}


def _register(conn: Conn, spec: BundleSpec, bundle: Bundle) -> None:
    m = bundle.manifest
    upsert_bundle(conn, name=spec.name, kind=spec.kind, model=m.model, dim=m.dim, metric=m.metric,
                  path=str(bundle.path), manifest=m.to_json())


def _commit(conn: Conn, spec: BundleSpec, bundle: Bundle, new_ids: Sequence[int]) -> None:
    """Save the bundle atomically, then record the ids it gained (the order that makes crashes harmless)."""
    bundle.save()
    with conn.transaction():
        _register(conn, spec, bundle)
        if new_ids:
            record_indexed(conn, bundle=spec.name, item_ids=list(new_ids))


def _existing(conn: Conn, table: str, ids: list[int]) -> set[int]:
    found = rows(conn, sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(sql.Identifier(table)), (ids,))
    return {int(r["id"]) for r in found}


def reconcile(conn: Conn, spec: BundleSpec, bundle: Bundle, report: BundleReport) -> None:
    """Make `index_entries` and the bundle agree: record saved-but-unrecorded ids, drop records without vectors,
    remove vectors of rows that no longer exist."""
    in_bundle = {int(i) for i in bundle.ids()}
    recorded = indexed_ids(conn, bundle=spec.name)
    gone = in_bundle - _existing(conn, spec.table, sorted(in_bundle)) if in_bundle else set()
    if gone:
        report.removed = bundle.remove(sorted(gone))
        bundle.save()
    live = in_bundle - gone
    unrecorded, orphans = sorted(live - recorded), sorted(recorded - live)
    with conn.transaction():
        _register(conn, spec, bundle)
        if unrecorded:
            record_indexed(conn, bundle=spec.name, item_ids=unrecorded)
        if orphans:
            conn.execute("DELETE FROM index_entries WHERE bundle = %s AND item_id = ANY(%s)", (spec.name, orphans))
            record_indexed(conn, bundle=spec.name, item_ids=[])
    report.recovered, report.dropped = len(unrecorded), len(orphans)
    if unrecorded or orphans or gone:
        logger.warning("%s: reconciled after an interrupted run: %d recorded, %d to embed again, %d removed",
                       spec.name, len(unrecorded), len(orphans), len(gone))


def _pending(conn: Conn, spec: BundleSpec, after: int, limit: int) -> list[dict[str, Any]]:
    columns = "i.id, i.sha256, i.path" if spec.table == "images" else "i.id, i.text"
    query = sql.SQL(
        "SELECT " + columns + " FROM {} i WHERE i.id > %s AND NOT EXISTS "
        "(SELECT 1 FROM index_entries e WHERE e.bundle = %s AND e.item_id = i.id) ORDER BY i.id LIMIT %s"
    ).format(sql.Identifier(spec.table))
    return rows(conn, query, (after, spec.name, limit))


def count_pending(conn: Conn, spec: BundleSpec) -> int:
    query = sql.SQL("SELECT count(*) AS n FROM {} i WHERE NOT EXISTS "
                    "(SELECT 1 FROM index_entries e WHERE e.bundle = %s AND e.item_id = i.id)").format(
        sql.Identifier(spec.table))
    found = rows(conn, query, (spec.name,))
    return int(found[0]["n"]) if found else 0


def _embed(spec: BundleSpec, items: list[dict[str, Any]], embedder: Embedder, settings: Settings,
           pool: ThreadPoolExecutor, report: BundleReport) -> tuple[list[int], Vectors, list[int]]:
    """(ids, vectors, perceptual hashes) of the items that could be embedded (hashes only for images)."""
    if spec.kind == "text":
        return [int(r["id"]) for r in items], embedder.embed_text([str(r["text"]) for r in items]), []

    def load(item: dict[str, Any]) -> Any:
        try:
            original = image_file(item["path"], settings.images_path)
            ensure_thumbnail(settings.thumbs_path, item["sha256"], original, size=settings.indexer.thumb_size,
                             max_pixels=settings.indexer.max_image_pixels)
            return load_for_embedding(settings.thumbs_path, item["sha256"], original)
        except ImageRejected as exc:
            return exc

    ids, images = [], []
    for item, image in zip(items, pool.map(load, items), strict=True):
        if isinstance(image, ImageRejected):
            report.skipped.append((int(item["id"]), str(image)))
            logger.warning("image %s: %s", item["id"], image)
        else:
            ids.append(int(item["id"]))
            images.append(image)
    vectors = embedder.embed_images(images) if images else np.zeros((0, embedder.dim), np.float32)
    return ids, vectors, [dhash(image) for image in images]


def _store_phashes(conn: Conn, ids: list[int], hashes: list[int]) -> None:
    if hashes:
        conn.execute("UPDATE images i SET phash = h.p FROM unnest(%s::bigint[], %s::bigint[]) AS h(id, p) "
                     "WHERE i.id = h.id", (ids, hashes))


def open_for_update(settings: Settings, spec: BundleSpec, embedder: Embedder, *, rebuild: bool) -> Bundle:
    """The bundle to add to: the one on disk (refused if another model built it), or a new empty one."""
    path = settings.indexes_path / spec.name
    manifest = read_manifest(path)
    if manifest is not None and not rebuild:
        return Bundle.open(path, model=embedder.model_id, nprobe=settings.indexer.nprobe)
    return Bundle.create(path, name=spec.name, kind=spec.kind, model=embedder.model_id, dim=embedder.dim,
                         generation=manifest.generation if manifest else 0)


def index_bundle(conn: Conn, settings: Settings, spec: BundleSpec, embedder: Embedder, *, rebuild: bool = False,
                 progress: bool = True, on_batch: Callable[[int], None] | None = None) -> BundleReport:
    """Bring one bundle up to date with its table; returns what it did."""
    report = BundleReport(spec.name, model=embedder.model_id)
    if rebuild:
        with conn.transaction():
            forget_bundle(conn, bundle=spec.name)
    bundle = open_for_update(settings, spec, embedder, rebuild=rebuild)
    reconcile(conn, spec, bundle, report)
    s = settings.indexer
    chunk = s.batch_size * 4 if spec.kind == "image" else s.batch_size * 16  # items read from the table at a time
    bar = tqdm(total=count_pending(conn, spec), desc=spec.name, unit="item", file=sys.stderr,
               disable=not progress)
    unsaved: list[int] = []
    after = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="embed") as pool:
        while items := _pending(conn, spec, after, chunk):
            after = int(items[-1]["id"])
            ids, vectors, hashes = _embed(spec, items, embedder, settings, pool, report)
            _store_phashes(conn, ids, hashes)
            bundle.add(vectors, ids, exact_threshold=s.exact_threshold, approx_factory=s.approx_factory)
            unsaved += ids
            report.added += len(ids)
            bar.update(len(items))
            if on_batch is not None:
                on_batch(len(ids))
            if len(unsaved) >= s.checkpoint_every:
                _commit(conn, spec, bundle, unsaved)
                unsaved = []
    bar.close()
    if unsaved or rebuild or read_manifest(bundle.path) is None:
        _commit(conn, spec, bundle, unsaved)
    report.total = bundle.count
    return report


def run_index(conn: Conn, settings: Settings, embedders: Embedders, keyword: KeywordIndex, *,
              rebuild: bool = False, progress: bool = True) -> IndexReport:
    """Update both bundles and the keyword index. Only one run per database at a time (advisory lock)."""
    started = time.monotonic()
    locked = rows(conn, "SELECT pg_try_advisory_lock(%s) AS ok", (_LOCK,))
    if not locked or not locked[0]["ok"]:
        raise PromptdexError("another `promptdex index` is running on this database; wait for it to finish")
    try:
        report = IndexReport(keyword_backend=keyword.backend)
        for spec, embedder in zip(SPECS, (embedders.clip, embedders.prompt), strict=True):
            report.bundles.append(index_bundle(conn, settings, spec, embedder, rebuild=rebuild, progress=progress))
        if rebuild:
            keyword.rebuild(conn)
        bar = tqdm(desc="keyword", unit="prompt", file=sys.stderr, disable=not progress)
        report.keyword_added = keyword.update(conn, progress=bar.update)
        bar.close()
    finally:
        rows(conn, "SELECT pg_advisory_unlock(%s) AS ok", (_LOCK,))
    report.seconds = time.monotonic() - started
    logger.info("index: %s", report.line())
    return report


def index_status(conn: Conn, settings: Settings, keyword: KeywordIndex) -> dict[str, Any]:
    """Per bundle: what its manifest says, how many items are recorded, how many are pending; and the keyword index."""
    bundles = []
    for spec in SPECS:
        path = settings.indexes_path / spec.name
        manifest = read_manifest(path)
        recorded = rows(conn, "SELECT count(*) AS n FROM index_entries WHERE bundle = %s", (spec.name,))[0]["n"]
        bundles.append({
            "name": spec.name, "kind": spec.kind, "path": str(path), "built": manifest is not None,
            "model": manifest.model if manifest else None, "dim": manifest.dim if manifest else None,
            "count": manifest.count if manifest else 0, "index_type": manifest.index_type if manifest else None,
            "generation": manifest.generation if manifest else None,
            "updated_at": manifest.updated_at if manifest else None,
            "recorded": int(recorded), "pending": count_pending(conn, spec),
        })
    state = keyword.state_name
    recorded = rows(conn, "SELECT count(*) AS n FROM index_entries WHERE bundle = %s", (state,))[0]["n"]
    pending = rows(conn, "SELECT count(*) AS n FROM prompts p WHERE NOT EXISTS (SELECT 1 FROM index_entries e "
                         "WHERE e.bundle = %s AND e.item_id = p.id)", (state,))[0]["n"]
    return {"bundles": bundles,
            "keyword": {"backend": keyword.backend, "recorded": int(recorded), "pending": int(pending)}}
