"""The indexer's surface for the search API: embedders, open bundles that reload themselves, the keyword index."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from indexer.bundles import MANIFEST, Bundle, Ids
from indexer.embedders import Embedders, Vectors, load_embedders
from indexer.indexing import IMAGE_BUNDLE, PROMPT_BUNDLE
from indexer.keyword import KeywordIndex, open_keyword_index
from indexer.keyword.base import ConnectionSource
from promptdex.errors import IndexMissing
from promptdex.settings import Settings

logger = logging.getLogger(__name__)


class BundleHandle:
    """A bundle kept open for searching. It reopens itself when its folder's manifest changes (checked at most
    every `check_every` seconds), so `promptdex index` can run while the API serves; searches never block."""

    def __init__(self, path: Path, *, model: str, mmap: bool = False, nprobe: int = 16,
                 check_every: float = 2.0) -> None:
        self.path, self.model, self.mmap, self.nprobe, self.check_every = path, model, mmap, nprobe, check_every
        self._bundle: Bundle | None = None
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def _manifest_stamp(self) -> tuple[int, int] | None:
        try:
            stat = (self.path / MANIFEST).stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Reopen the bundle when its manifest changed; True when a new generation was loaded."""
        now = time.monotonic()
        if not force and self._bundle is not None and now - self._checked < self.check_every:
            return False
        with self._lock:
            self._checked = now
            stamp = self._manifest_stamp()
            if stamp is None:
                if self._bundle is None:
                    raise IndexMissing(f"no index bundle at {self.path}: run `promptdex index` first")
                return False
            if stamp == self._stamp and self._bundle is not None:
                return False
            bundle = Bundle.open(self.path, model=self.model, mmap=self.mmap, nprobe=self.nprobe)
            self._bundle, self._stamp = bundle, stamp  # a search holding the old bundle finishes with it
            logger.info("loaded bundle %s generation %d (%d vectors)", bundle.manifest.name,
                        bundle.manifest.generation, bundle.count)
            return True

    @property
    def bundle(self) -> Bundle:
        self.reload_if_changed()
        if self._bundle is None:
            raise IndexMissing(f"no index bundle at {self.path}: run `promptdex index` first")
        return self._bundle

    @property
    def count(self) -> int:
        return self.bundle.count

    def search(self, vector: Vectors, k: int) -> tuple[Ids, NDArray[np.float32]]:
        """Database ids and inner-product scores of the `k` nearest entries, best first."""
        return self.bundle.search(vector, k)


class IndexerService:
    """What the search API needs from the indexer, built once in the app's lifespan.

    - `embedders.clip` embeds query texts and uploaded images into the image bundle's space;
      `embedders.prompt` embeds query texts into the prompt bundle's space;
    - `images` (ids = image ids) and `prompts` (ids = prompt ids) are self-reloading bundles;
    - `keyword` ranks prompt ids for a text query and suggests words.
    """

    def __init__(self, settings: Settings, embedders: Embedders, keyword: KeywordIndex, *, mmap: bool = False,
                 check_every: float = 2.0) -> None:
        self.settings, self.embedders, self.keyword = settings, embedders, keyword
        nprobe = settings.indexer.nprobe
        self.images = BundleHandle(settings.indexes_path / IMAGE_BUNDLE, model=embedders.clip.model_id, mmap=mmap,
                                   nprobe=nprobe, check_every=check_every)
        self.prompts = BundleHandle(settings.indexes_path / PROMPT_BUNDLE, model=embedders.prompt.model_id,
                                    mmap=mmap, nprobe=nprobe, check_every=check_every)

    @classmethod
    def from_settings(cls, settings: Settings, connect: ConnectionSource, *, mmap: bool = False) -> IndexerService:
        """Load the embedders the settings name (tiny or real) and the configured keyword back end."""
        return cls(settings, load_embedders(settings), open_keyword_index(settings, connect), mmap=mmap)

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        """CLIP text vectors (for searching images by text)."""
        return self.embedders.clip.embed_text(texts)

    def embed_images(self, images: Sequence[Image.Image]) -> Vectors:
        """CLIP image vectors (for searching by an uploaded image)."""
        return self.embedders.clip.embed_images(images)

    def embed_prompts(self, texts: Sequence[str]) -> Vectors:
        """Sentence vectors (for searching prompts by meaning)."""
        return self.embedders.prompt.embed_text(texts)

    def search_images(self, vector: Vectors, k: int) -> tuple[Ids, NDArray[np.float32]]:
        return self.images.search(vector, k)

    def search_prompts(self, vector: Vectors, k: int) -> tuple[Ids, NDArray[np.float32]]:
        return self.prompts.search(vector, k)
