"""The indexer's surface for the search API: embedders, open bundles that reload themselves, the keyword index."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from indexer.bundles import MANIFEST, Bundle, Ids
from indexer.embedders import Embedder, Embedders, Vectors, l2_normalize, load_embedders
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

    def __init__(self, path: Path, *, model: str, mmap: bool = False, nprobe: int = 16,
                 check_every: float = 2.0) -> None:
        self.path, self.model, self.mmap, self.nprobe, self.check_every = path, model, mmap, nprobe, check_every
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
        stamp = self._manifest_stamp()
        for _ in range(2):
            try:
                return Bundle.open(self.path, model=self.model, mmap=self.mmap, nprobe=self.nprobe), stamp
            except IndexCorrupt:
                now = self._manifest_stamp()
                if now == stamp:
                    raise
                stamp = now
        return Bundle.open(self.path, model=self.model, mmap=self.mmap, nprobe=self.nprobe), stamp

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


def _trim_ready(model: Any) -> bool:
    """Whether `model` is an open_clip CLIP whose text tower is causal and pools the EOT token (argmax)."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask", "text_projection")
    return (all(getattr(model, name, None) is not None for name in needed)
            and getattr(model, "text_pool_type", None) == "argmax")


def encode_text_trimmed(model: Any, tokens: Any) -> Any:
    """open_clip's `encode_text` run on the tokens up to the last EOT of the batch only.

    The text tower attends causally and pools the EOT token, so the padding after it never reaches the output:
    dropping it gives the same vectors (to float rounding) for a fraction of the work (a 3-word query is 6
    tokens, not 77). Same steps as `CLIP.encode_text`, with the positions and the mask cut to that length.
    """
    import torch

    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


class TrimmedTextEncoder:
    """CLIP query-text embedding without the padding tokens, checked once against the full `embed_text`
    (falls back to it when the model is not an argmax-pooled causal open_clip CLIP, or the check fails)."""

    CHECK = ("a red fox in fresh snow, watercolor", "cyberpunk city", "a")

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._ok: bool | None = None

    def _usable(self) -> bool:
        if self._ok is None:
            model = getattr(self.embedder, "model", None)
            self._ok = bool(_trim_ready(model) and getattr(self.embedder, "tokenizer", None) is not None)
            if self._ok:
                try:
                    full = self.embedder.embed_text(list(self.CHECK))
                    trimmed = self._embed(list(self.CHECK))
                    self._ok = bool(np.abs(full - trimmed).max() < 1e-4)
                except Exception as exc:  # noqa: BLE001 - any surprise means: use the model's own path
                    logger.warning("query text trimming disabled: %s: %s", type(exc).__name__, exc)
                    self._ok = False
            logger.info("CLIP query texts are embedded %s", "without padding" if self._ok else "in full")
        return self._ok

    def _embed(self, texts: Sequence[str]) -> Vectors:
        import torch

        embedder: Any = self.embedder
        with torch.inference_mode():
            tokens = embedder.tokenizer(list(texts)).to(embedder.device)
            features = encode_text_trimmed(embedder.model, tokens)
        return l2_normalize(features.float().cpu().numpy())

    def __call__(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return self.embedder.embed_text(texts)
        return self._embed(texts) if self._usable() else self.embedder.embed_text(texts)


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
        self._query_text = TrimmedTextEncoder(embedders.clip)

    @classmethod
    def from_settings(cls, settings: Settings, connect: ConnectionSource, *, mmap: bool = False) -> IndexerService:
        """Load the embedders the settings name (tiny or real) and the configured keyword back end."""
        return cls(settings, load_embedders(settings), open_keyword_index(settings, connect), mmap=mmap)

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        """CLIP text vectors (for searching images by text); the padding after the last token is not computed."""
        return self._query_text(texts)

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
