"""`promptdex index`: embed what is not embedded yet, update the FAISS bundles and the keyword index, resumably.

Each image file is decoded once, reduced (a JPEG at 1/2-1/8 scale), for its CLIP input, its perceptual hash and its
thumbnail, which is written here when the API has not made it yet (import decodes no pixels). A full or read-only
thumbnails disk stops the run at once (IndexStopped); a file that cannot be decoded is reported and skipped.

Crash safety: a bundle is saved atomically first, then the ids it gained are recorded in `index_entries` in one
transaction. On start, what interrupted saves left is swept, every bundle is checked against its checksum (a
damaged one stops the run before any work, naming the file and `--rebuild`), and the bundle on disk and
`index_entries` are reconciled (ids in the bundle but not recorded are recorded; records without a vector are
dropped, so those items are embedded again), so a run killed at any point leaves neither duplicate nor missing
vectors once the next run has finished.

`--rebuild` reads nothing from the old bundle: it embeds every row into a new bundle in memory, saves it beside the
old one (a new generation, committed by the manifest's rename) and only then replaces the bundle's records in one
transaction. Until that moment the old bundle and its records stay as they were, whatever state the folder is in.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from tqdm import tqdm

from indexer.bundles import (
    MANIFEST,
    RETRAIN_GROWTH,
    Bundle,
    Verify,
    layout_factory,
    outgrown,
    read_manifest,
    sweep,
    verify_bundle,
)
from indexer.embedders import Embedder, Embedders, Vectors
from indexer.images import (
    ImageRejected,
    IndexPixels,
    index_pixels,
    is_storage_failure,
    storage_problem,
    sweep_temp_files,
    temp_dir,
)
from indexer.keyword.base import KeywordIndex, rows
from indexer.safety import get_scorer
from indexer.safety.rescore import score_indexed
from promptdex.errors import IndexCorrupt, IndexMismatch, PromptdexError
from promptdex.index_state import indexed_ids, record_indexed, replace_indexed, upsert_bundle
from promptdex.settings import Settings
from promptdex.storage import local_image, remote_storage

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
# Who embeds a bundle's pending rows into it: `_add_rows`'s signature (`index --ray` passes the cluster's)
AddRows = Callable[..., list[int]]
IMAGE_BUNDLE = "clip-image"
PROMPT_BUNDLE = "prompt-text"
_LOCK = 0x70646978  # pg_advisory_lock key: one `promptdex index` per database at a time


class IndexStopped(PromptdexError):
    """A problem every remaining image would hit (the thumbnails disk is full, read-only...): the run stopped."""


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
    scored: int = 0  # images the NSFW classifiers scored on the way
    replaced_damaged: str = ""  # a rebuild over a damaged bundle: what was wrong with it
    retrained: str = ""  # an outgrown approximate bundle retrained: "old index -> new index"
    trained_on: int = 0  # ... and the count the old one was trained on


@dataclass
class IndexReport:
    bundles: list[BundleReport] = field(default_factory=list)
    keyword_backend: str = ""
    keyword_added: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        parts = [f"{b.name}: +{b.added} ({b.total} total{', replaced a damaged bundle' if b.replaced_damaged else ''}"
                 f"{', retrained' if b.retrained else ''})" for b in self.bundles]
        parts.append(f"keyword ({self.keyword_backend}): +{self.keyword_added} prompts")
        skipped = sum(len(b.skipped) for b in self.bundles)
        tail = f"; {skipped} items could not be embedded" if skipped else ""
        scored = sum(b.scored for b in self.bundles)
        tail += f"; {scored} images NSFW-scored" if scored else ""
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


def _pending(conn: Conn, spec: BundleSpec, after: int, limit: int, *, everything: bool = False) -> list[dict[str, Any]]:
    """The next rows after id `after` that have no vector yet (`everything`: every row, for a rebuild)."""
    columns = "i.id, i.sha256, i.path" if spec.table == "images" else "i.id, i.text"
    unindexed = "" if everything else (" AND NOT EXISTS "
                                       "(SELECT 1 FROM index_entries e WHERE e.bundle = %(b)s AND e.item_id = i.id)")
    query = sql.SQL("SELECT " + columns + " FROM {} i WHERE i.id > %(after)s" + unindexed +
                    " ORDER BY i.id LIMIT %(limit)s").format(sql.Identifier(spec.table))
    return rows(conn, query, {"after": after, "b": spec.name, "limit": limit})


def count_pending(conn: Conn, spec: BundleSpec) -> int:
    query = sql.SQL("SELECT count(*) AS n FROM {} i WHERE NOT EXISTS "
                    "(SELECT 1 FROM index_entries e WHERE e.bundle = %s AND e.item_id = i.id)").format(
        sql.Identifier(spec.table))
    found = rows(conn, query, (spec.name,))
    return int(found[0]["n"]) if found else 0


def _stopped(settings: Settings, exc: OSError) -> IndexStopped:
    what, advice = storage_problem(exc)
    return IndexStopped(
        f"{settings.thumbs_path}: cannot write thumbnails: {what} ({exc.strerror or exc}); `promptdex index` stopped "
        f"and keeps the vectors it saved. {advice}, or set PROMPTDEX_THUMBS_DIR to a folder on another disk, then run "
        "`promptdex index` again: it carries on where it stopped")


def _load(item: dict[str, Any], settings: Settings) -> IndexPixels | ImageRejected:
    """The one decode of an image row's file (its thumbnail written on the way), or why it cannot be had."""
    original = local_image(settings, item["path"])  # PROMPTDEX_STORAGE_URL=s3://: fetched once into a cache
    try:
        return index_pixels(original, item["sha256"], settings.thumbs_path, thumb_size=settings.indexer.thumb_size,
                            max_pixels=settings.indexer.max_image_pixels, storage=remote_storage(settings, "thumbs"))
    except ImageRejected as exc:
        return exc
    except OSError as exc:  # writing the thumbnail failed
        if is_storage_failure(exc):
            raise _stopped(settings, exc) from exc
        return ImageRejected(f"{original}: cannot write its thumbnail: {exc.strerror or exc}")


def _embed(spec: BundleSpec, items: list[dict[str, Any]], embedder: Embedder, settings: Settings,
           pool: ThreadPoolExecutor, report: BundleReport) -> tuple[list[int], Vectors, list[int], list[Any]]:
    """(ids, vectors, perceptual hashes, decoded pictures) of the items that could be embedded (the last two only
    for images)."""
    if spec.kind == "text":
        return [int(r["id"]) for r in items], embedder.embed_text([str(r["text"]) for r in items]), [], []
    ids, loaded = [], []
    for item, pixels in zip(items, pool.map(lambda item: _load(item, settings), items), strict=True):
        if isinstance(pixels, ImageRejected):
            report.skipped.append((int(item["id"]), str(pixels)))
            logger.warning("image %s: %s", item["id"], pixels)
        else:
            ids.append(int(item["id"]))
            loaded.append(pixels)
    images = [p.clip_input for p in loaded]
    vectors = embedder.embed_images(images) if images else np.zeros((0, embedder.dim), np.float32)
    return ids, vectors, [p.phash for p in loaded], images


def _store_phashes(conn: Conn, ids: list[int], hashes: list[int]) -> None:
    if hashes:
        conn.execute("UPDATE images i SET phash = h.p FROM unnest(%s::bigint[], %s::bigint[]) AS h(id, p) "
                     "WHERE i.id = h.id", (ids, hashes))


def check_model(settings: Settings, spec: BundleSpec, embedder: Embedder) -> None:
    """The bundle on disk, if any, was built by `embedder`'s model (IndexMismatch naming both if not)."""
    manifest = read_manifest(settings.indexes_path / spec.name)
    if manifest is not None and manifest.model != embedder.model_id:
        raise IndexMismatch(
            f"bundle {spec.name!r} at {settings.indexes_path / spec.name} was built with {manifest.model}, but the "
            f"loaded embedder is {embedder.model_id}: run `promptdex index --rebuild`, or load the model the bundle "
            "was built with")


def open_for_update(settings: Settings, spec: BundleSpec, embedder: Embedder) -> Bundle:
    """The bundle to add to: the one on disk (its checksum checked by `run_index` a moment ago), or a new one."""
    path = settings.indexes_path / spec.name
    if read_manifest(path) is not None:
        return Bundle.open(path, model=embedder.model_id, nprobe=settings.indexer.nprobe, verify=Verify.QUICK)
    return Bundle.create(path, name=spec.name, kind=spec.kind, model=embedder.model_id, dim=embedder.dim)


def _add_rows(conn: Conn, settings: Settings, spec: BundleSpec, embedder: Embedder, bundle: Bundle,
              report: BundleReport, *, rebuild: bool, progress: bool,
              on_batch: Callable[[int], None] | None) -> list[int]:
    """Embed the rows the bundle lacks (all of them for a rebuild) into it; an update commits every
    `checkpoint_every` vectors, a rebuild never (its records change only once it is complete). Returns the ids
    added since the last commit."""
    s = settings.indexer
    chunk = s.batch_size * 4 if spec.kind == "image" else s.batch_size * 16  # items read from the table at a time
    total = (rows(conn, sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(spec.table)))[0]["n"]
             if rebuild else count_pending(conn, spec))
    bar = tqdm(total=total, desc=spec.name, unit="item", file=sys.stderr, disable=not progress)
    unsaved: list[int] = []
    after = 0
    scorer = get_scorer(settings) if spec.kind == "image" else None
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="embed") as pool:
        while items := _pending(conn, spec, after, chunk, everything=rebuild):
            after = int(items[-1]["id"])
            ids, vectors, hashes, pictures = _embed(spec, items, embedder, settings, pool, report)
            _store_phashes(conn, ids, hashes)
            if scorer is not None:  # the NSFW classifiers see the pixels decoded for CLIP
                report.scored += score_indexed(conn, scorer, dict(zip(ids, pictures, strict=True)))
            bundle.add(vectors, ids, exact_threshold=s.exact_threshold,
                       approx_factory=layout_factory(s.bundle_layout, s.approx_factory))
            if ids:
                bundle.manifest.note_runtime(getattr(embedder, "runtime", ""))  # for the record: either serves it
            unsaved += ids
            report.added += len(ids)
            bar.update(len(items))
            if on_batch is not None:
                on_batch(len(ids))
            if not rebuild and len(unsaved) >= s.checkpoint_every:
                _commit(conn, spec, bundle, unsaved)
                unsaved = []
    bar.close()
    return unsaved


def _damage(path: Path) -> str:
    """What is wrong with the bundle folder `path` ("" when nothing, or when there is no bundle)."""
    try:
        verify_bundle(path, mode=Verify.QUICK)
    except IndexCorrupt as exc:
        return str(exc)
    return ""


def retrain_outgrown(settings: Settings, bundle: Bundle, report: BundleReport) -> bool:
    """Retrain an approximate bundle that holds more than RETRAIN_GROWTH times the vectors it was trained on, for
    the count it holds now (in memory: the caller's save commits it, the old generation serves until then)."""
    if not outgrown(bundle.manifest, bundle.count):
        return False
    was, report.trained_on = bundle.manifest.index_type, bundle.manifest.trained_count
    bundle.retrain(layout_factory(settings.indexer.bundle_layout, settings.indexer.approx_factory))
    report.retrained = f"{was} -> {bundle.manifest.index_type}"
    logger.info("%s: %d vectors, over %dx the %d it was trained on: retrained, %s", bundle.manifest.name,
                bundle.count, RETRAIN_GROWTH, report.trained_on, report.retrained)
    return True


def rebuild_bundle(conn: Conn, settings: Settings, spec: BundleSpec, embedder: Embedder, *, progress: bool = True,
                   on_batch: Callable[[int], None] | None = None) -> BundleReport:
    """A new bundle of every row, built in memory and saved beside the old one; its records are replaced after
    the save, in one transaction. Interrupted at any point, the old bundle and its records are left as they were."""
    report = BundleReport(spec.name, model=embedder.model_id)
    path = settings.indexes_path / spec.name
    report.replaced_damaged = _damage(path)
    if report.replaced_damaged:
        logger.warning("%s: rebuilding over a damaged bundle: %s", spec.name, report.replaced_damaged)
    bundle = Bundle.create(path, name=spec.name, kind=spec.kind, model=embedder.model_id, dim=embedder.dim)
    _add_rows(conn, settings, spec, embedder, bundle, report, rebuild=True, progress=progress, on_batch=on_batch)
    retrain_outgrown(settings, bundle, report)  # trained at the exact threshold, then grown past 4x of it
    bundle.save()
    with conn.transaction():
        _register(conn, spec, bundle)
        replace_indexed(conn, bundle=spec.name, item_ids=bundle.ids().tolist())
    report.total = bundle.count
    return report


def index_bundle(conn: Conn, settings: Settings, spec: BundleSpec, embedder: Embedder, *, rebuild: bool = False,
                 progress: bool = True, on_batch: Callable[[int], None] | None = None,
                 add_rows: AddRows | None = None) -> BundleReport:
    """Bring one bundle up to date with its table (or rebuild it); returns what it did. `add_rows`: what embeds
    the pending rows in an update (default `_add_rows`, here)."""
    if rebuild:
        return rebuild_bundle(conn, settings, spec, embedder, progress=progress, on_batch=on_batch)
    report = BundleReport(spec.name, model=embedder.model_id)
    bundle = open_for_update(settings, spec, embedder)
    reconcile(conn, spec, bundle, report)
    if retrain_outgrown(settings, bundle, report):  # before adding: the new rows are encoded once, by the new one
        _commit(conn, spec, bundle, [])
    unsaved = (add_rows or _add_rows)(conn, settings, spec, embedder, bundle, report, rebuild=False,
                                      progress=progress, on_batch=on_batch)
    if unsaved or read_manifest(bundle.path) is None:
        _commit(conn, spec, bundle, unsaved)
    report.total = bundle.count
    return report


def run_index(conn: Conn, settings: Settings, embedders: Embedders | Callable[[], Embedders],
              keyword: KeywordIndex, *, rebuild: bool = False, progress: bool = True,
              add_rows: Mapping[str, AddRows] | None = None) -> IndexReport:
    """Update both bundles and the keyword index. Only one run per database at a time (advisory lock).

    What cannot succeed stops the run before anything changes: under the lock the leftovers of interrupted saves
    are swept, then (not for a rebuild) both bundles are checked against their checksums, before `embedders` (or
    the function that loads them) is used, and against the loaded models. `add_rows`: by bundle name, what embeds
    its pending rows instead of this process in an update (`index --ray`: `indexer.fleet`)."""
    started = time.monotonic()
    locked = rows(conn, "SELECT pg_try_advisory_lock(%s) AS ok", (_LOCK,))
    if not locked or not locked[0]["ok"]:
        raise PromptdexError("another `promptdex index` is running on this database; wait for it to finish")
    try:
        report = IndexReport(keyword_backend=keyword.backend)
        sweep_temp_files(temp_dir(settings.thumbs_path))  # thumbnails half-written by a killed run
        for spec in SPECS:
            sweep(settings.indexes_path / spec.name)
            if not rebuild:
                verify_bundle(settings.indexes_path / spec.name, mode=Verify.FULL)
        get_scorer(settings).key  # noqa: B018 - loads the NSFW classifiers: one that cannot load stops the run here
        loaded = embedders() if callable(embedders) else embedders
        pairs = list(zip(SPECS, (loaded.clip, loaded.prompt), strict=True))
        for spec, embedder in pairs:
            if not rebuild:
                check_model(settings, spec, embedder)
        for spec, embedder in pairs:
            report.bundles.append(index_bundle(conn, settings, spec, embedder, rebuild=rebuild, progress=progress,
                                               add_rows=(add_rows or {}).get(spec.name)))
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


def _bundle_status(path: Path) -> dict[str, Any]:
    """What the bundle folder holds, after a full checksum of its index file: state ok, missing or damaged."""
    error: str | None = None
    try:
        m = verify_bundle(path, mode=Verify.FULL)
    except IndexCorrupt as exc:
        m, error = None, str(exc)
    state = "damaged" if error else "ok" if m else "missing"
    return {"state": state, "error": error, "built": (path / MANIFEST).exists(), "model": m.model if m else None,
            "dim": m.dim if m else None, "count": m.count if m else 0, "index_type": m.index_type if m else None,
            "generation": m.generation if m else None, "updated_at": m.updated_at if m else None}


def index_status(conn: Conn, settings: Settings, keyword: KeywordIndex) -> dict[str, Any]:
    """Per bundle: its state (ok, missing, damaged: checked against its checksum), what its manifest says, how many
    items are recorded and pending; and the keyword index."""
    bundles = []
    for spec in SPECS:
        path = settings.indexes_path / spec.name
        recorded = rows(conn, "SELECT count(*) AS n FROM index_entries WHERE bundle = %s", (spec.name,))[0]["n"]
        bundles.append({"name": spec.name, "kind": spec.kind, "path": str(path), **_bundle_status(path),
                        "recorded": int(recorded), "pending": count_pending(conn, spec)})
    state = keyword.state_name
    recorded = rows(conn, "SELECT count(*) AS n FROM index_entries WHERE bundle = %s", (state,))[0]["n"]
    pending = rows(conn, "SELECT count(*) AS n FROM prompts p WHERE NOT EXISTS (SELECT 1 FROM index_entries e "
                         "WHERE e.bundle = %s AND e.item_id = p.id)", (state,))[0]["n"]
    return {"bundles": bundles,
            "keyword": {"backend": keyword.backend, "recorded": int(recorded), "pending": int(pending)}}
