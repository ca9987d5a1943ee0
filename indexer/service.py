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

from indexer.bundles import MANIFEST, Bundle, Ids, set_search_threads
from indexer.embedders import Embedders, Vectors, load_embedders
from indexer.indexing import IMAGE_BUNDLE, PROMPT_BUNDLE
from indexer.keyword import KeywordIndex, open_keyword_index
from indexer.keyword.base import ConnectionSource
from promptdex.errors import IndexCorrupt, IndexMissing, PromptdexError
from promptdex.settings import Settings

logger = logging.getLogger(__name__)


class BundleHandle:
    """A bundle kept open for searching. It reopens itself when its folder's manifest changes (checked at most
    every `check_every` seconds), so `promptdex index` can run while the API serves; searches never block.

    A new generation that cannot be opened (damaged, another model's) is reported by `problem` while the loaded one
    keeps serving; a memory-mapped file changed in place under a loaded bundle (which would crash the search that
    touches a page past its new end) makes the handle drop it: searches then raise IndexCorrupt, naming the file
    and `promptdex index --rebuild`, until a new generation is written. The checks cost a stat of the manifest
    every `check_every` seconds and an fstat of the index file per search."""

    def __init__(self, path: Path, *, model: str, mmap: bool = False, nprobe: int = 16, nprobe_share: float = 0.0,
                 check_every: float = 2.0) -> None:
        self.path, self.model, self.mmap, self.nprobe, self.check_every = path, model, mmap, nprobe, check_every
        self.nprobe_share = nprobe_share
        self._bundle: Bundle | None = None
        self._stamp: tuple[int, int] | None = None  # the manifest last opened, or last found unusable
        self._problem: tuple[type[PromptdexError], str] | None = None  # why the bundle on disk cannot be used
        self._checked = 0.0
        self._lock = threading.Lock()

    def _manifest_stamp(self) -> tuple[int, int] | None:
        try:
            stat = (self.path / MANIFEST).stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    def _open(self) -> tuple[Bundle, tuple[int, int] | None]:
        """Open the bundle on disk; when a save swaps the manifest while this reads it, open the new one."""
        def load() -> Bundle:
            return Bundle.open(self.path, model=self.model, mmap=self.mmap, nprobe=self.nprobe,
                               nprobe_share=self.nprobe_share)

        stamp = self._manifest_stamp()
        for _ in range(2):
            try:
                return load(), stamp
            except IndexCorrupt:
                now = self._manifest_stamp()
                if now == stamp:
                    raise
                stamp = now
        return load(), stamp

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Reopen the bundle when its manifest changed; True when a new generation was loaded. Never raises: what
        went wrong is kept for `bundle` and `problem`."""
        now = time.monotonic()
        if not force and self._bundle is not None and now - self._checked < self.check_every:
            return False
        with self._lock:
            self._checked = now
            stamp = self._manifest_stamp()
            if stamp is None:
                if self._bundle is None:
                    self._problem = None  # nothing built: IndexMissing
                return False
            if stamp == self._stamp and (self._bundle is not None or self._problem is not None):
                return False
            try:
                bundle, stamp = self._open()
            except PromptdexError as exc:
                self._stamp, self._problem = stamp, (type(exc), str(exc))
                serving = f"; still serving generation {self._bundle.manifest.generation}" if self._bundle else ""
                logger.error("bundle %s cannot be used%s: %s", self.path, serving, exc)
                return False
            self._bundle, self._stamp, self._problem = bundle, stamp, None  # a search holding the old one finishes
            logger.info("loaded bundle %s generation %d (%d vectors)", bundle.manifest.name,
                        bundle.manifest.generation, bundle.count)
            return True

    @property
    def problem(self) -> str | None:
        """Why the bundle on disk cannot be used (None: it is fine, or not built yet)."""
        return self._problem[1] if self._problem else None

    @property
    def bundle(self) -> Bundle:
        """The loaded bundle; IndexMissing, IndexCorrupt or IndexMismatch (a fresh one each time) when none is."""
        self.reload_if_changed()
        bundle = self._bundle
        if bundle is None:
            if self._problem is not None:
                kind, message = self._problem
                raise kind(message)
            raise IndexMissing(f"no index bundle at {self.path}: run `promptdex index` first")
        try:
            bundle.check_intact()
        except IndexCorrupt as exc:
            with self._lock:
                if self._bundle is bundle:
                    self._bundle, self._problem = None, (IndexCorrupt, str(exc))
                    logger.error("bundle %s dropped: %s", self.path, exc)
            raise
        return bundle

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
        nprobe, share = settings.indexer.nprobe, settings.indexer.nprobe_share
        self.images = BundleHandle(settings.indexes_path / IMAGE_BUNDLE, model=embedders.clip.model_id, mmap=mmap,
                                   nprobe=nprobe, nprobe_share=share, check_every=check_every)
        self.prompts = BundleHandle(settings.indexes_path / PROMPT_BUNDLE, model=embedders.prompt.model_id,
                                    mmap=mmap, nprobe=nprobe, nprobe_share=share, check_every=check_every)

    @classmethod
    def from_settings(cls, settings: Settings, connect: ConnectionSource, *, mmap: bool = False,
                      threads: int = 0) -> IndexerService:
        """Load the embedders the settings name (tiny or real, on the configured runtime) and the configured keyword
        back end. `threads` > 0 caps the threads of each model call and FAISS search (the API runs many at once)."""
        if threads > 0:
            set_search_threads(threads)
        embedders = load_embedders(settings, threads=threads, queries=True)
        return cls(settings, embedders, open_keyword_index(settings, connect), mmap=mmap)

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        """CLIP text vectors (for searching images by text); the padding after the last token is not computed."""
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
