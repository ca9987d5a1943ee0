"""The search engines the API queries: the indexer's embedders, self-reloading FAISS bundles, keyword index."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image as PILImage

from indexer.images import thumbnail_path
from indexer.keyword.base import ConnectionSource
from indexer.service import BundleHandle, IndexerService
from promptdex.errors import IndexMissing, PromptdexError
from promptdex.settings import ModelsMode, Settings

logger = logging.getLogger(__name__)

Vector = NDArray[np.float32]


class _LRU:
    """A small thread-safe cache of query vectors: repeated queries (typing, paging) skip the model."""

    def __init__(self, size: int = 1024) -> None:
        self.size, self._data, self._lock = size, OrderedDict[tuple[str, str], Vector](), threading.Lock()

    def get(self, key: tuple[str, str]) -> Vector | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: Vector) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


class Engines:
    """Wraps the indexer's service for the search service: embed, search bundles, keyword, vectors by id."""

    def __init__(self, settings: Settings, indexer: IndexerService) -> None:
        self.settings = settings
        self.indexer = indexer
        self._cache = _LRU()
        self._direct_map_lock = threading.Lock()

    # -- embeddings -------------------------------------------------------------------------------

    def _cached(self, kind: str, text: str, embed: Any) -> Vector:
        key = (kind, text)
        vector = self._cache.get(key)
        if vector is None:
            vector = np.asarray(embed([text])[0], dtype=np.float32)
            self._cache.put(key, vector)
        return vector

    def embed_clip_text(self, text: str) -> Vector:
        return self._cached("clip", text, self.indexer.embed_text)

    def embed_prompt(self, text: str) -> Vector:
        return self._cached("prompt", text, self.indexer.embed_prompts)

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
        """Stored CLIP vectors of these images (those not in the bundle are absent)."""
        try:
            bundle = self.indexer.images.bundle
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

    def reload_if_changed(self) -> None:
        for handle in (self.indexer.images, self.indexer.prompts):
            try:
                handle.reload_if_changed()
            except IndexMissing:
                pass  # reported by health and by searches that need it
            except PromptdexError as exc:
                logger.warning("bundle %s could not be reloaded, keeping the loaded one: %s", handle.path, exc)

    def bundles_health(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        for name, handle in (("images", self.indexer.images), ("prompts", self.indexer.prompts)):
            report[name] = _bundle_health(handle)
        report["keyword"] = {"ok": True, "backend": self.indexer.keyword.backend}
        return report

    def models_health(self) -> dict[str, Any]:
        e = self.indexer.embedders
        return {"tiny": self.settings.models == ModelsMode.TINY, "clip": e.clip.model_id, "clip_dim": e.clip.dim,
                "prompt": e.prompt.model_id, "prompt_dim": e.prompt.dim}


def _bundle_health(handle: BundleHandle) -> dict[str, Any]:
    try:
        bundle = handle.bundle
    except PromptdexError as exc:
        return {"ok": False, "error": str(exc)}
    m = bundle.manifest
    return {"ok": True, "count": bundle.count, "model": m.model, "dim": m.dim, "index": m.index_type,
            "generation": m.generation}


def load_engines(settings: Settings, connect: ConnectionSource) -> Engines:
    """Load the embedders and keyword index the settings name; bundles open on first use and reload themselves.

    `connect` gives a pooled connection as a context manager (the app passes its pool's `connection`).
    """
    return Engines(settings, IndexerService.from_settings(settings, connect))
