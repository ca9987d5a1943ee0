"""Search orchestration (no FastAPI here): keyword, semantic and hybrid ranking, filters, cursors, similar."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from psycopg_pool import ConnectionPool

from promptdex import store
from promptdex.errors import InvalidInput, NotFound
from promptdex.ranking import Candidates, RankedImage, Ranking, Sort, Source, rank_images
from promptdex.records import Image, ImageFilter
from search_api.engines import Engines

logger = logging.getLogger(__name__)

RRF_K = 60
MAX_OFFSET = 5000
NEAR_DUPLICATE_BITS = 4  # perceptual hashes this close (of 64 bits) are one picture (re-encoded, resized)
_MASK64 = (1 << 64) - 1
ROW_SLACK = 8  # rows read past the page: near-duplicates collapsed before its end move it by up to this many


class Mode(StrEnum):
    HYBRID = "hybrid"
    KEYWORD = "keyword"
    SEMANTIC = "semantic"


@dataclass(frozen=True)
class SearchRequest:
    q: str = ""
    mode: Mode = Mode.HYBRID
    filters: ImageFilter = field(default_factory=ImageFilter)
    sort: Sort = Sort.RELEVANCE
    seed: int = 0
    limit: int = 50
    cursor: str | None = None

    def fingerprint(self) -> str:
        body = json.dumps([self.q, self.mode, self.filters.model_dump(mode="json"), self.sort, self.seed],
                          sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]


@dataclass
class Hit:
    image: Image
    score: float | None


@dataclass
class SearchPage:
    hits: list[Hit]
    next_cursor: str | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode())


def encode_cursor(data: dict[str, Any], secret: bytes) -> str:
    """An opaque page cursor: its JSON, signed with the server secret (HMAC-SHA256) so it cannot be forged."""
    body = _b64(json.dumps(data, separators=(",", ":")).encode())
    return body + "." + _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest()[:18])


_NOT_OURS = "cursor: not a cursor this API returned (pass next_cursor unchanged)"


def decode_cursor(cursor: str, fingerprint: str, secret: bytes) -> dict[str, Any]:
    """The cursor's fields after checking its signature, its query and every field's type and range."""
    body, _, signature = cursor.partition(".")
    try:
        expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest()[:18])
        if not signature or not hmac.compare_digest(signature.encode(), expected.encode()):
            raise InvalidInput(_NOT_OURS)
        data = json.loads(_unb64(body))
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidInput(_NOT_OURS) from exc
    if not isinstance(data, dict):
        raise InvalidInput(_NOT_OURS)
    if data.get("f") != fingerprint:
        raise InvalidInput("cursor: it belongs to another query; pass it only with the same q, mode, filters and sort")
    for name in ("o", "m", "i"):
        value = data.get(name)
        if name in data and (type(value) is not int or not 0 <= value <= 2**63 - 1):
            raise InvalidInput(_NOT_OURS)
    if "c" in data:
        try:
            datetime.fromisoformat(str(data["c"]))
        except ValueError as exc:
            raise InvalidInput(_NOT_OURS) from exc
    return data


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: sum of 1/(k + rank) over the lists an id appears in, best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], -pair[0]))


class SearchService:
    """Answers searches from the corpus (PostgreSQL), the keyword index and the FAISS bundles."""

    def __init__(self, *, pool: ConnectionPool[Any], engines: Engines, secret: bytes) -> None:
        self.pool = pool
        self.engines = engines
        self.secret = secret

    # -- SQL ------------------------------------------------------------------------------------

    def _rank(self, lists: Sequence[Candidates], filters: ImageFilter, max_id: int | None, per_list: int, *,
              order: Sort = Sort.RELEVANCE, seed: int = 0, rows: tuple[int, int] = (0, 0)) -> Ranking:
        """The candidates filtered, fused, ordered, with the rows of the window: one statement, one round trip."""
        with self.pool.connection() as conn:
            return rank_images(conn, lists=lists, filters=filters, max_id=max_id, per_list=per_list, order=order,
                               seed=seed, rows=rows, rrf_k=RRF_K)

    def _hydrate(self, ids: Sequence[int]) -> dict[int, Image]:
        with self.pool.connection() as conn:
            return store.get_images(conn, ids=ids)

    def _images(self, candidates: Sequence[RankedImage]) -> dict[int, Image]:
        """The rows of these candidates: those the ranking statement brought, the others (rare: more than
        ROW_SLACK near-duplicates collapsed before the page's end) read now."""
        images = {c.id: c.image for c in candidates if c.image is not None}
        absent = [c.id for c in candidates if c.image is None]
        if absent:
            images.update(self._hydrate(absent))
        return images

    # -- rankings ---------------------------------------------------------------------------------

    def _with_vector(self, vector: NDArray[np.float32], filters: ImageFilter, max_id: int | None, n: int, *,
                     before: Sequence[Candidates] = (), after: Sequence[Candidates] = (),
                     exclude: set[int] | None = None, order: Sort = Sort.RELEVANCE, seed: int = 0,
                     rows: tuple[int, int] = (0, 0)) -> tuple[Ranking, dict[int, float]]:
        """The ranking with the nearest images by CLIP vector as one of its lists (between `before` and `after`),
        and the FAISS score of each; widens k until `n` of the neighbours survive the filters."""
        # with no filter and nothing excluded, almost every neighbour survives: ask for few more than needed
        # (the safe-mode bounds rarely reject one; where they do, k widens below)
        k = max(n + 8, 16) if filters.is_empty(besides_safety=True) and not exclude else max(n * 2, 64)
        while True:
            ids, scores = self.engines.image_search(vector, k)
            candidates = Candidates(Source.IMAGES, [i for i in ids if not exclude or i not in exclude])
            ranking = self._rank([*before, candidates, *after], filters, max_id, n, order=order, seed=seed,
                                 rows=rows)
            if ranking.kept[len(before)] >= n or len(ids) < k or k >= self.engines.image_count():
                return ranking, dict(zip(ids, scores, strict=True))
            max_id = ranking.max_id  # the wider search keeps the snapshot
            k *= 4

    def _ranked(self, req: SearchRequest, max_id: int | None, n: int,
                rows: tuple[int, int]) -> tuple[Ranking, dict[int, float] | None]:
        """The ranking of a query, and the score of each prompt where scores are the prompts' (keyword mode)."""
        q = req.q.strip()
        order = req.sort
        if req.mode is Mode.KEYWORD:
            prompts = self.engines.keyword_search(q, n)
            ranking = self._rank([Candidates(Source.PROMPTS, [p for p, _ in prompts])], req.filters, max_id, n,
                                 order=order, seed=req.seed, rows=rows)
            return ranking, dict(prompts)
        clip_vector, prompt_vector = self.engines.start_text_embeddings(q)  # the models work during the keyword SQL
        before = []
        if req.mode is Mode.HYBRID:
            before.append(Candidates(Source.PROMPTS, [p for p, _ in self.engines.keyword_search(q, n)]))
        vector = clip_vector.result()
        prompt_ids, _ = self.engines.prompt_search(prompt_vector.result(), n)
        ranking, _ = self._with_vector(vector, req.filters, max_id, n, before=before,
                                       after=[Candidates(Source.PROMPTS, prompt_ids)], order=order, seed=req.seed,
                                       rows=rows)
        return ranking, None

    # -- public -----------------------------------------------------------------------------------

    def search(self, req: SearchRequest) -> SearchPage:
        if not req.q.strip() and req.sort in (Sort.RELEVANCE, Sort.NEWEST, Sort.OLDEST):
            return self._browse(req)
        fp = req.fingerprint()
        state = decode_cursor(req.cursor, fp, self.secret) if req.cursor else {}
        offset = int(state.get("o", 0))
        max_id = int(state.get("m", 0)) or None  # None: the ranking statement takes the snapshot
        if offset > MAX_OFFSET:
            raise InvalidInput(f"cursor: results past {MAX_OFFSET} are not served; narrow the query")
        want = offset + req.limit + 1
        # collapsing only drops candidates, so the page's rows sit at or after `offset` before it
        rows = (offset, offset + req.limit + ROW_SLACK)
        prompt_scores: dict[int, float] | None = None
        if req.q.strip():
            ranking, prompt_scores = self._ranked(req, max_id, max(want, 100), rows)
        else:  # random browse
            ranking = self._rank([Candidates(Source.ALL)], req.filters, max_id, MAX_OFFSET + 201,
                                 order=Sort.RANDOM, seed=req.seed, rows=rows)
        ranked = self._collapse(ranking.images, want)
        page = ranked[offset:offset + req.limit]
        images = self._images(page)

        def score(c: RankedImage) -> float | None:
            if not req.q.strip():
                return None
            if prompt_scores is not None:
                return prompt_scores.get(c.prompt_id) if c.prompt_id is not None else None
            return c.score

        hits = [Hit(images[c.id], score(c)) for c in page if c.id in images]
        more = len(ranked) > offset + req.limit
        cursor = (encode_cursor({"f": fp, "o": offset + req.limit, "m": ranking.max_id}, self.secret)
                  if more else None)
        return SearchPage(hits, cursor)

    def _collapse(self, ranked: Sequence[RankedImage], need: int) -> list[RankedImage]:
        """Drop near-duplicates (perceptual hashes within NEAR_DUPLICATE_BITS) of a better-ranked result."""
        kept: list[RankedImage] = []
        kept_hashes: list[int] = []
        for candidate in ranked:
            h = candidate.phash
            if h is not None:
                h &= _MASK64
                if any((h ^ other).bit_count() <= NEAR_DUPLICATE_BITS for other in kept_hashes):
                    continue
                kept_hashes.append(h)
            kept.append(candidate)
            if len(kept) >= need:  # what is past the page is never compared
                break
        return kept

    def _browse(self, req: SearchRequest) -> SearchPage:
        fp = req.fingerprint()
        after = None
        if req.cursor:
            state = decode_cursor(req.cursor, fp, self.secret)
            if "c" not in state or "i" not in state:
                raise InvalidInput(_NOT_OURS)
            after = (datetime.fromisoformat(state["c"]), int(state["i"]))
        order: store.Order = "oldest" if req.sort is Sort.OLDEST else "newest"
        with self.pool.connection() as conn:
            images = store.filter_images(conn, filters=req.filters, order=order, limit=req.limit + 1, after=after)
        page = images[: req.limit]
        cursor = None
        if len(images) > req.limit:
            last = page[-1]
            cursor = encode_cursor({"f": fp, "c": last.created_at.isoformat(), "i": last.id}, self.secret)
        return SearchPage([Hit(im, None) for im in page], cursor)

    def image(self, image_id: int) -> Image:
        with self.pool.connection() as conn:
            image = store.get_image(conn, image_id=image_id)
        if image is None:
            raise NotFound(f"no image with id {image_id}")
        return image

    def paths(self, image_id: int) -> list[str]:
        """The files (absolute paths) that hold an imported image's content; none for generated images, whose file
        lives in the images store under its hash."""
        with self.pool.connection() as conn:
            return [p for p in store.image_paths(conn, image_id=image_id) if p.startswith("/")]

    def similar(self, image_id: int, k: int, filters: ImageFilter | None = None) -> list[Hit]:
        """Nearest images by CLIP vector, without the image itself and its exact duplicates."""
        self.image(image_id)
        vector = self.engines.image_vectors([image_id]).get(image_id)
        if vector is None:
            raise NotFound(f"image {image_id} is not in the image index yet: run `promptdex index`")
        return self._nearest(vector, k, filters or ImageFilter(), exclude={image_id})

    def by_vector(self, vector: NDArray[np.float32], k: int, filters: ImageFilter | None = None) -> list[Hit]:
        return self._nearest(vector, k, filters or ImageFilter(), exclude=set())

    def _nearest(self, vector: NDArray[np.float32], k: int, filters: ImageFilter, exclude: set[int]) -> list[Hit]:
        n = k + 8
        ranking, scores = self._with_vector(vector, filters, None, n, exclude=exclude, rows=(0, n))
        found = [c for c in ranking.images if scores[c.id] < 0.9999 or not exclude][:k]  # exact duplicates
        images = self._images(found)
        return [Hit(images[c.id], float(scores[c.id])) for c in found if c.id in images]

    def suggest(self, q: str, limit: int) -> list[tuple[str, float]]:
        return self.engines.keyword_suggest(q, limit)
