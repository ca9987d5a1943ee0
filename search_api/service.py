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
from psycopg import sql
from psycopg_pool import ConnectionPool

from promptdex import store
from promptdex.errors import InvalidInput, NotFound
from promptdex.records import Image, ImageFilter
from search_api.engines import Engines

logger = logging.getLogger(__name__)

RRF_K = 60
MAX_OFFSET = 5000
NEAR_DUPLICATE_BITS = 4  # perceptual hashes this close (of 64 bits) are one picture (re-encoded, resized)
_MASK64 = (1 << 64) - 1


class Mode(StrEnum):
    HYBRID = "hybrid"
    KEYWORD = "keyword"
    SEMANTIC = "semantic"


class Sort(StrEnum):
    RELEVANCE = "relevance"
    NEWEST = "newest"
    OLDEST = "oldest"
    RANDOM = "random"


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

    # -- SQL helpers ----------------------------------------------------------------------------

    def _max_id(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) AS m FROM images").fetchone()
        return int(row["m"]) if row else 0

    def _keep(self, ids: Sequence[int], filters: ImageFilter, max_id: int) -> list[int]:
        """`ids` in order, without those the filters exclude or newer than the snapshot."""
        if not ids:
            return []
        where, args = store.filter_clause(filters)
        cond = (where + sql.SQL(" AND ")) if args else sql.SQL("WHERE ")
        query = sql.SQL("SELECT i.id FROM images i ") + cond + sql.SQL("i.id = ANY(%s) AND i.id <= %s")
        with self.pool.connection() as conn:
            allowed = {int(r["id"]) for r in conn.execute(query, (*args, list(ids), max_id)).fetchall()}
        return [i for i in ids if i in allowed]

    def _images_of_prompts(self, prompt_ids: Sequence[int], filters: ImageFilter, max_id: int,
                           limit: int) -> list[int]:
        if not prompt_ids:
            return []
        where, args = store.filter_clause(filters)
        cond = (where + sql.SQL(" AND ")) if args else sql.SQL("WHERE ")
        # newest `limit` images of each prompt at most (index images_prompt_recent): a popular prompt's
        # thousands of images are never all read
        query = (
            sql.SQL("SELECT x.id FROM unnest(%s::bigint[]) WITH ORDINALITY AS k(pid, r) CROSS JOIN LATERAL "
                    "(SELECT i.id FROM images i ")
            + cond + sql.SQL("i.prompt_id = k.pid AND i.id <= %s ORDER BY i.id DESC LIMIT %s) x "
                             "ORDER BY k.r, x.id DESC LIMIT %s")
        )
        with self.pool.connection() as conn:
            rows = conn.execute(query, (list(prompt_ids), *args, max_id, limit, limit)).fetchall()
        return [int(r["id"]) for r in rows]

    def _hydrate(self, ids: Sequence[int]) -> dict[int, Image]:
        with self.pool.connection() as conn:
            return store.get_images(conn, ids=ids)

    # -- rankings ---------------------------------------------------------------------------------

    def _keyword_ranked(self, q: str, filters: ImageFilter, max_id: int, n: int) -> tuple[list[int], dict[int, float]]:
        prompts = self.engines.keyword_search(q, n)
        ids = self._images_of_prompts([p for p, _ in prompts], filters, max_id, n)
        return ids, {}

    def _vector_ranked(self, vector: NDArray[np.float32], filters: ImageFilter, max_id: int, n: int,
                       exclude: set[int] | None = None) -> tuple[list[int], dict[int, float]]:
        """Nearest images by CLIP vector, filtered; widens k until enough survive the filters."""
        # with no filter and nothing excluded, almost every neighbour survives: ask for few more than needed
        k = max(n + 8, 16) if filters.is_empty() and not exclude else max(n * 2, 64)
        while True:
            ids, scores = self.engines.image_search(vector, k)
            candidates = [i for i in ids if not exclude or i not in exclude]
            kept = self._keep(candidates, filters, max_id)
            if len(kept) >= n or len(ids) < k or k >= self.engines.image_count():
                score_of = dict(zip(ids, scores, strict=True))
                return kept[:n], {i: score_of[i] for i in kept[:n]}
            k *= 4

    def _prompt_vector_ranked(self, vector: NDArray[np.float32], filters: ImageFilter, max_id: int,
                              n: int) -> list[int]:
        prompt_ids, _ = self.engines.prompt_search(vector, n)
        return self._images_of_prompts(prompt_ids, filters, max_id, n)

    def _ranked(self, req: SearchRequest, max_id: int, n: int) -> list[tuple[int, float | None]]:
        q = req.q.strip()
        if req.mode is Mode.KEYWORD:
            prompts = self.engines.keyword_search(q, n)
            score_of_prompt = dict(prompts)
            ids = self._images_of_prompts([p for p, _ in prompts], req.filters, max_id, n)
            with self.pool.connection() as conn:
                rows = conn.execute("SELECT id, prompt_id FROM images WHERE id = ANY(%s)", (ids,)).fetchall()
            pid = {int(r["id"]): int(r["prompt_id"]) for r in rows}
            return [(i, score_of_prompt.get(pid[i])) for i in ids if i in pid]
        lists = []
        clip_vector, prompt_vector = self.engines.start_text_embeddings(q)  # the models work during the SQL
        if req.mode is Mode.HYBRID:
            lists.append(self._keyword_ranked(q, req.filters, max_id, n)[0])
        lists.append(self._vector_ranked(clip_vector.result(), req.filters, max_id, n)[0])
        lists.append(self._prompt_vector_ranked(prompt_vector.result(), req.filters, max_id, n))
        return [(i, s) for i, s in rrf(lists)]

    # -- public -----------------------------------------------------------------------------------

    def search(self, req: SearchRequest) -> SearchPage:
        if not req.q.strip() and req.sort in (Sort.RELEVANCE, Sort.NEWEST, Sort.OLDEST):
            return self._browse(req)
        fp = req.fingerprint()
        state = decode_cursor(req.cursor, fp, self.secret) if req.cursor else {}
        offset = int(state.get("o", 0))
        max_id = int(state.get("m", 0)) or self._max_id()
        if offset > MAX_OFFSET:
            raise InvalidInput(f"cursor: results past {MAX_OFFSET} are not served; narrow the query")
        want = offset + req.limit + 1
        if req.q.strip():
            ranked = self._ranked(req, max_id, max(want, 100))
        else:  # random browse
            ranked = [(i, None) for i in self._keep(self._all_ids(req.filters, max_id), req.filters, max_id)]
        ranked = self._order(ranked, req)
        ranked = self._collapse(ranked, offset + req.limit + 1)
        page = ranked[offset:offset + req.limit]
        images = self._hydrate([i for i, _ in page])
        hits = [Hit(images[i], s) for i, s in page if i in images]
        more = len(ranked) > offset + req.limit
        cursor = encode_cursor({"f": fp, "o": offset + req.limit, "m": max_id}, self.secret) if more else None
        return SearchPage(hits, cursor)

    def _all_ids(self, filters: ImageFilter, max_id: int) -> list[int]:
        where, args = store.filter_clause(filters)
        cond = (where + sql.SQL(" AND ")) if args else sql.SQL("WHERE ")
        with self.pool.connection() as conn:
            rows = conn.execute(sql.SQL("SELECT i.id FROM images i ") + cond + sql.SQL("i.id <= %s LIMIT %s"),
                                (*args, max_id, MAX_OFFSET + 201)).fetchall()
        return [int(r["id"]) for r in rows]

    def _order(self, ranked: list[tuple[int, float | None]], req: SearchRequest) -> list[tuple[int, float | None]]:
        if req.sort is Sort.RELEVANCE:
            return ranked
        if req.sort is Sort.RANDOM:
            def key(pair: tuple[int, float | None]) -> str:
                return hashlib.sha256(f"{req.seed}:{pair[0]}".encode()).hexdigest()
            return sorted(ranked, key=key)
        images = self._hydrate([i for i, _ in ranked])
        newest = req.sort is Sort.NEWEST
        return sorted(
            (pair for pair in ranked if pair[0] in images),
            key=lambda pair: (images[pair[0]].created_at, pair[0]), reverse=newest,
        )

    def _collapse(self, ranked: list[tuple[int, float | None]], need: int) -> list[tuple[int, float | None]]:
        """Drop near-duplicates (perceptual hashes within NEAR_DUPLICATE_BITS) of a better-ranked result."""
        kept: list[tuple[int, float | None]] = []
        kept_hashes: list[int] = []
        for start in range(0, len(ranked), 256):
            chunk = ranked[start:start + 256]
            with self.pool.connection() as conn:
                rows = conn.execute("SELECT id, phash FROM images WHERE id = ANY(%s)",
                                    ([i for i, _ in chunk],)).fetchall()
            phash = {int(r["id"]): r["phash"] for r in rows}
            for pair in chunk:
                h = phash.get(pair[0])
                if h is not None:
                    h &= _MASK64
                    if any((h ^ other).bit_count() <= NEAR_DUPLICATE_BITS for other in kept_hashes):
                        continue
                    kept_hashes.append(h)
                kept.append(pair)
                if len(kept) >= need:  # what is past the page is never compared
                    return kept
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
        ids, scores = self._vector_ranked(vector, filters, self._max_id(), k + 8, exclude=exclude)
        ids = [i for i in ids if scores[i] < 0.9999 or not exclude]  # exact duplicates of the query image
        images = self._hydrate(ids[:k])
        return [Hit(images[i], float(scores[i])) for i in ids[:k] if i in images]

    def suggest(self, q: str, limit: int) -> list[tuple[str, float]]:
        return self.engines.keyword_suggest(q, limit)
