"""The search engines the API queries: the indexer's embedders, self-reloading FAISS bundles, keyword index."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image as PILImage

from indexer.images import thumbnail_path
from indexer.keyword.base import ConnectionSource
from indexer.safety import Scorer, get_scorer
from indexer.service import BundleHandle, IndexerService
from promptdex.errors import IndexCorrupt, IndexMissing, PromptdexError
from promptdex.settings import ModelsMode, Settings

logger = logging.getLogger(__name__)

Vector = NDArray[np.float32]


class QueryCache:
    """A thread-safe LRU of query vectors keyed by (model id, normalised text): repeated queries (typing, paging,
    popular searches) skip the model. Counts its hits and misses for /api/health and the benchmark."""

    def __init__(self, size: int) -> None:
        self.size, self._data, self._lock = size, OrderedDict[tuple[str, str], Vector](), threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, str]) -> Vector | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: Vector) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            asked = self.hits + self.misses
            rate = round(self.hits / asked, 4) if asked else None
            return {"hits": self.hits, "misses": self.misses, "hit_rate": rate, "entries": len(self._data),
                    "size": self.size}


def normalise_query(text: str, *, case_insensitive: bool) -> str:
    """The cache key of a query: whitespace collapsed, lower-cased for models whose tokenizer lower-cases (both of
    the defaults), so `Red  Fox` and `red fox` share one vector (they give the same tokens)."""
    text = " ".join(text.split())
    return text.lower() if case_insensitive else text


def _case_insensitive(embedder: Any) -> bool:
    tokenizer = getattr(embedder, "tokenizer", None)
    if tokenizer is None and getattr(embedder, "model", None) is not None:
        tokenizer = getattr(embedder.model, "tokenizer", None)
    if type(tokenizer).__name__ == "SimpleTokenizer":  # open_clip's BPE: lower-cases every text
        return True
    return bool(getattr(tokenizer, "do_lower_case", False))


class _Batcher:
    """Coalesces concurrent one-text embeddings into one model call.

    One query's matrix products have a handful of rows and run far below the rate a CPU core reaches on a batch
    (bench/profile_hybrid.py measures both), so one call for many queries costs much less than a call each.
    Callers queue their text and wait; one worker thread per model takes what is queued as one batch (up to
    `max_batch`). Before it starts the call it waits while more queries keep arriving: until none came for a tenth
    of `wait` seconds, `wait` at most. A lone query so waits a tenth of `wait`; under load calls fill up.
    """

    def __init__(self, embed: Any, name: str, max_batch: int = 32, wait: float = 0.002) -> None:
        self.embed, self.name, self.max_batch, self.wait = embed, name, max_batch, wait
        self._queue: list[tuple[str, Future[Vector]]] = []
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None
        self.batches = 0
        self.items = 0
        self.largest = 0

    def submit(self, text: str) -> Future[Vector]:
        future: Future[Vector] = Future()
        with self._ready:
            self._queue.append((text, future))
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name=f"embed-{self.name}", daemon=True)
                self._worker.start()
            self._ready.notify()
        return future

    def _gather(self) -> None:
        """Wait (holding the condition) while queries keep arriving, as the class says."""
        if self.wait <= 0:
            return
        deadline = time.monotonic() + self.wait
        gap = self.wait / 10
        while len(self._queue) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            before = len(self._queue)
            self._ready.wait(min(gap, remaining))
            if len(self._queue) == before:
                return

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                self._gather()
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            try:
                vectors = self.embed([text for text, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            self.largest = max(self.largest, len(batch))
            for (_, future), vector in zip(batch, vectors, strict=True):
                future.set_result(np.asarray(vector, dtype=np.float32))

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "queries": self.items, "largest": self.largest,
                "per_call": round(self.items / self.batches, 2) if self.batches else None}


class Engines:
    """Wraps the indexer's service for the search service: embed, search bundles, keyword, vectors by id."""

    def __init__(self, settings: Settings, indexer: IndexerService) -> None:
        self.settings = settings
        self.indexer = indexer
        s = settings.indexer
        self.cache = QueryCache(s.query_cache)
        self._direct_map_lock = threading.Lock()
        wait = s.batch_wait_ms / 1000
        self._batchers = {"clip": _Batcher(self.indexer.embed_text, "clip", wait=wait),
                          "prompt": _Batcher(self.indexer.embed_prompts, "prompt", wait=wait)}
        self._scorer = get_scorer(settings, threads=1)  # a classifier setting that cannot work stops `serve` here
        from indexer.publish import BundleSync

        self.bundle_sync = BundleSync(settings) if settings.storage_url else None
        e = indexer.embedders
        self._models = {"clip": (e.clip.model_id, _case_insensitive(e.clip)),
                        "prompt": (e.prompt.model_id, _case_insensitive(e.prompt))}

    def safety_scorer(self) -> Scorer:
        """The NSFW classifiers: the API scores prompt text with them (suggestions, generation requests)."""
        return self._scorer

    # -- embeddings -------------------------------------------------------------------------------

    def _cached(self, kind: str, text: str) -> Future[Vector]:
        """The query vector, from the cache or from the model (batched with concurrent requests)."""
        model_id, case_insensitive = self._models[kind]
        text = normalise_query(text, case_insensitive=case_insensitive)
        key = (model_id, text)
        vector = self.cache.get(key)
        if vector is not None:
            done: Future[Vector] = Future()
            done.set_result(vector)
            return done
        future = self._batchers[kind].submit(text)
        future.add_done_callback(lambda f: self.cache.put(key, f.result()) if f.exception() is None else None)
        return future

    def start_text_embeddings(self, text: str) -> tuple[Future[Vector], Future[Vector]]:
        """Start both query embeddings (CLIP text, prompt) so they run while the caller does other work."""
        return self._cached("clip", text), self._cached("prompt", text)

    def embed_clip_text(self, text: str) -> Vector:
        return self._cached("clip", text).result()

    def embed_prompt(self, text: str) -> Vector:
        return self._cached("prompt", text).result()

    def embed_clip_image(self, image: PILImage.Image) -> Vector:
        return np.asarray(self.indexer.embed_images([image])[0], dtype=np.float32)

    # -- bundles ----------------------------------------------------------------------------------

    def image_search(self, vector: Vector, k: int) -> tuple[list[int], list[float]]:
        ids, scores = self.indexer.search_images(vector, k)
        return [int(i) for i in ids], [float(s) for s in scores]

    def prompt_search(self, vector: Vector, k: int) -> tuple[list[int], list[float]]:
        ids, scores = self.indexer.search_prompts(vector, k)
        return [int(i) for i in ids], [float(s) for s in scores]

    def image_count(self) -> int:
        return self.indexer.images.count

    def image_vectors(self, ids: Sequence[int]) -> dict[int, Vector]:
        """Stored CLIP vectors of these images (those not in the bundle are absent). A damaged bundle raises
        IndexCorrupt (503); none built yet gives no vectors."""
        try:
            bundle = self.indexer.images.bundle
        except IndexCorrupt:
            raise
        except IndexMissing:
            return {}
        index = bundle.index
        out: dict[int, Vector] = {}
        for image_id in ids:
            try:
                out[int(image_id)] = np.asarray(index.reconstruct(int(image_id)), dtype=np.float32)
            except RuntimeError as exc:
                if "direct map" in str(exc) and self._enable_direct_map(index):
                    out[int(image_id)] = np.asarray(index.reconstruct(int(image_id)), dtype=np.float32)
                # an id not in the bundle (not indexed yet) raises too: leave it out
        return out

    def _enable_direct_map(self, index: Any) -> bool:
        import faiss

        with self._direct_map_lock:
            try:
                ivf = faiss.extract_index_ivf(index)
            except RuntimeError:
                return False
            if ivf.direct_map.type == 0:
                ivf.make_direct_map()
            return True

    # -- keyword ----------------------------------------------------------------------------------

    def keyword_search(self, q: str, limit: int) -> list[tuple[int, float]]:
        return [(int(p), float(s)) for p, s in self.indexer.keyword.search(q, limit)]

    def keyword_suggest(self, q: str, limit: int) -> list[tuple[str, float]]:
        words = self.indexer.keyword.suggest(q, limit)
        return [(w, 1.0 / (rank + 1)) for rank, w in enumerate(words)]

    # -- files and health -------------------------------------------------------------------------

    def thumbnail_path(self, sha256: str) -> Path:
        return thumbnail_path(self.settings.thumbs_path, sha256)

    def make_thumbnail(self, sha256: str, original: Path) -> Path | None:
        """The thumbnail made from the original file (as `promptdex index` makes it); None if that cannot be read."""
        from indexer.images import ImageRejected, ensure_thumbnail

        if not original.is_file():
            return None
        try:
            return ensure_thumbnail(self.settings.thumbs_path, sha256, original, size=self.settings.indexer.thumb_size,
                                    max_pixels=self.settings.indexer.max_image_pixels)
        except ImageRejected as exc:
            logger.warning("no thumbnail for %s: %s", original, exc)
            return None

    def reload_if_changed(self) -> None:
        """Pick up new generations (a bundle that cannot be opened is reported by health and by the searches that
        need it; the handle keeps serving the generation it has, if any). With PROMPTDEX_STORAGE_URL, newly
        published generations are fetched into INDEXES_DIR first (a bad download leaves the old one serving)."""
        if self.bundle_sync is not None and self.bundle_sync.poll():
            for handle in (self.indexer.images, self.indexer.prompts):
                handle.reload_if_changed(force=True)
        for handle in (self.indexer.images, self.indexer.prompts):
            handle.reload_if_changed()

    def bundles_health(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        for name, handle in (("images", self.indexer.images), ("prompts", self.indexer.prompts)):
            report[name] = _bundle_health(handle)
        report["keyword"] = {"ok": True, "backend": self.indexer.keyword.backend}
        if self.bundle_sync is not None:  # PROMPTDEX_STORAGE_URL: new generations come from the shared store
            problem = self.bundle_sync.problem
            report["storage"] = {"ok": problem is None, **({"error": problem} if problem else {})}
        return report

    def models_health(self) -> dict[str, Any]:
        e = self.indexer.embedders
        batches = {name: b.stats() for name, b in self._batchers.items()}
        return {"tiny": self.settings.models == ModelsMode.TINY, "clip": e.clip.model_id, "clip_dim": e.clip.dim,
                "prompt": e.prompt.model_id, "prompt_dim": e.prompt.dim,
                "runtime": {"clip": e.clip.runtime, "prompt": e.prompt.runtime},
                "query_cache": self.cache.stats(), "query_batches": batches,
                "safety": {"classifiers": self._scorer.names}}


def _bundle_health(handle: BundleHandle) -> dict[str, Any]:
    """ok with what is served; not ok with the reason when the bundle is missing or damaged, also while an older
    generation still serves (the one on disk needs `promptdex index --rebuild`)."""
    try:
        bundle = handle.bundle
    except PromptdexError as exc:
        return {"ok": False, "error": str(exc)}
    m = bundle.manifest
    report: dict[str, Any] = {"ok": handle.problem is None, "count": bundle.count, "model": m.model, "dim": m.dim,
                              "index": m.index_type, "generation": m.generation}
    if handle.problem is not None:
        report["error"] = handle.problem
    return report


def load_engines(settings: Settings, connect: ConnectionSource) -> Engines:
    """Load the embedders and keyword index the settings name; bundles open on first use and reload themselves.

    `connect` gives a pooled connection as a context manager (the app passes its pool's `connection`).
    The API answers many requests at once, so models and FAISS run one thread per call: their own thread
    pools would only fight the other requests for the same cores (and spin while they wait).
    """
    # bundles are memory-mapped: their pages are shared with the page cache, not copied into the process
    return Engines(settings, IndexerService.from_settings(settings, connect, mmap=True, threads=1))
