"""Database work per search: round trips counted on the connections, and the fused ranking the statement returns.

The rankers are fakes (fixed lists from the keyword index and the bundles); the database is real.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from indexer.keyword import PostgresKeywordIndex
from promptdex import store
from promptdex.params import GenerationParams
from promptdex.records import ImageFilter, NewImage
from search_api.service import Mode, SearchRequest, SearchService, Sort, rrf

pytestmark = pytest.mark.integration

PROMPTS = ["a red fox in the snow", "a lighthouse in a storm", "a cat on a windowsill", "a city at night, neon rain"]


class CountingCursor(psycopg.Cursor[Any]):
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        assert isinstance(self.connection, CountingConnection)
        self.connection.statements += 1
        return super().execute(*args, **kwargs)


class CountingConnection(psycopg.Connection[Any]):
    """Counts what it sends: statements through its cursors, and transaction commands (BEGIN, COMMIT)."""

    statements = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = CountingCursor

    def _exec_command(self, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        return super()._exec_command(*args, **kwargs)


class Counted:
    """A pool whose connections count their statements, summed over every connection it handed out."""

    def __init__(self, url: str) -> None:
        self.pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=1, max_size=2, open=False, connection_class=CountingConnection,
            kwargs={"row_factory": dict_row, "autocommit": True})
        self.pool.open(wait=True)
        self.handed: list[CountingConnection] = []

    def connection(self) -> Any:
        outer = self

        class _Checkout:
            def __enter__(self) -> Any:
                self._cm = outer.pool.connection()
                conn = self._cm.__enter__()
                if conn not in outer.handed:
                    outer.handed.append(conn)
                return conn

            def __exit__(self, *exc: Any) -> Any:
                return self._cm.__exit__(*exc)

        return _Checkout()

    def statements(self) -> int:
        return sum(c.statements for c in self.handed)


class FakeEngines:
    """Rankers with fixed answers: keyword prompts, nearest images (with scores) and nearest prompts."""

    def __init__(self, keyword: Sequence[int], images: Sequence[int], prompts: Sequence[int], count: int) -> None:
        self.keyword, self.images, self.prompts, self.count = list(keyword), list(images), list(prompts), count
        self.image_calls: list[int] = []

    def start_text_embeddings(self, text: str) -> tuple[Future[Any], Future[Any]]:
        futures: list[Future[Any]] = [Future(), Future()]
        for f in futures:
            f.set_result(np.zeros(4, dtype=np.float32))
        return futures[0], futures[1]

    def keyword_search(self, q: str, limit: int) -> list[tuple[int, float]]:
        return [(p, 10.0 - i) for i, p in enumerate(self.keyword[:limit])]

    def image_search(self, vector: Any, k: int) -> tuple[list[int], list[float]]:
        self.image_calls.append(k)
        ids = self.images[:k]
        return ids, [1.0 - 0.001 * i for i in range(len(ids))]

    def prompt_search(self, vector: Any, k: int) -> tuple[list[int], list[float]]:
        ids = self.prompts[:k]
        return ids, [1.0] * len(ids)

    def image_count(self) -> int:
        return self.count


@pytest.fixture
def corpus(conn: Any) -> dict[str, Any]:
    """12 images over 4 prompts; images 0 and 4 (both of the fox) are near-duplicates (phash 1 bit apart), the
    others far apart."""
    images = [NewImage(sha256=f"{n:064x}", path=f"/x/{n}.png", width=64, height=64, format="png",
                       source="generated" if n % 2 else "a1111",
                       params=GenerationParams(prompt=PROMPTS[n % 4], steps=10 + n, seed=n, model=f"m{n % 3}"))
              for n in range(12)]
    store.bulk_load(conn, images=images)
    ids = [int(r["id"]) for r in conn.execute("SELECT id FROM images ORDER BY sha256").fetchall()]
    hashes = [int.from_bytes(hashlib.sha256(bytes([n])).digest()[:8], "big", signed=True) for n in range(12)]
    hashes[4] = hashes[0] ^ 1
    for image_id, phash in zip(ids, hashes, strict=True):
        conn.execute("UPDATE images SET phash = %s WHERE id = %s", (phash, image_id))
    assert all(bin((a ^ b) & (2**64 - 1)).count("1") > 4 for i, a in enumerate(hashes) for j, b in enumerate(hashes)
               if i < j and {i, j} != {0, 4})
    prompt_of = {int(r["id"]): int(r["prompt_id"]) for r in conn.execute("SELECT id, prompt_id FROM images")}
    return {"ids": ids, "prompt_of": prompt_of}


@pytest.fixture
def counted(database_url: str, db: Any) -> Iterator[Counted]:
    pool = Counted(database_url)
    yield pool
    pool.pool.close()


def service_with(counted: Counted, engines: FakeEngines) -> SearchService:
    service = SearchService(pool=counted.pool, engines=engines, secret=b"0123456789abcdef")  # type: ignore[arg-type]
    service.pool = counted  # type: ignore[assignment]
    return service


def test_a_hybrid_search_is_one_statement(counted: Counted, corpus: dict[str, Any]) -> None:
    ids, prompt_of = corpus["ids"], corpus["prompt_of"]
    prompts = sorted(set(prompt_of.values()))
    engines = FakeEngines(keyword=prompts[:2], images=ids[::-1], prompts=prompts[2:], count=len(ids))
    service = service_with(counted, engines)
    page = service.search(SearchRequest(q="fox", mode=Mode.HYBRID, limit=5))
    assert counted.statements() == 1  # snapshot, filters, three lists, fusion, hashes and rows together
    assert len(page.hits) == 5 and page.next_cursor
    before = counted.statements()
    second = service.search(SearchRequest(q="fox", mode=Mode.HYBRID, limit=5, cursor=page.next_cursor))
    assert counted.statements() - before == 1
    assert not {h.image.id for h in page.hits} & {h.image.id for h in second.hits}


def test_the_fused_order_is_reciprocal_rank_fusion_and_near_duplicates_collapse(counted: Counted,
                                                                                  corpus: dict[str, Any]) -> None:
    ids, prompt_of = corpus["ids"], corpus["prompt_of"]
    prompts = sorted(set(prompt_of.values()))
    engines = FakeEngines(keyword=[prompts[0], prompts[3]], images=[ids[5], ids[0], ids[4], ids[9]],
                          prompts=[prompts[1]], count=len(ids))
    page = service_with(counted, engines).search(SearchRequest(q="fox", limit=50))

    def images_of(prompt_list: list[int]) -> list[int]:  # newest first within a prompt, prompts in rank order
        return [i for p in prompt_list for i in sorted((i for i in ids if prompt_of[i] == p), reverse=True)]

    expected = rrf([images_of(engines.keyword), engines.images, images_of(engines.prompts)])
    first_of_pair = next(i for i, _ in expected if i in (ids[0], ids[4]))
    order = [(i, s) for i, s in expected if i not in (ids[0], ids[4]) or i == first_of_pair]
    assert [(h.image.id, h.score) for h in page.hits] == order


def test_filters_sorts_and_widening(counted: Counted, corpus: dict[str, Any]) -> None:
    ids = corpus["ids"]
    engines = FakeEngines(keyword=[], images=ids, prompts=[], count=len(ids))
    service = service_with(counted, engines)
    page = service.search(SearchRequest(q="x", mode=Mode.SEMANTIC, filters=ImageFilter(source="generated"),
                                        sort=Sort.OLDEST, limit=50))
    assert all(h.image.source == "generated" for h in page.hits) and len(page.hits) == 6
    created = [(h.image.created_at, h.image.id) for h in page.hits]
    assert created == sorted(created)
    # the first 200 neighbours are not in the corpus (deleted since the bundle was built): k widens, once
    absent = [10**9 + i for i in range(300)]
    wide = FakeEngines(keyword=[], images=absent + ids, prompts=[], count=10**6)
    before = counted.statements()
    page = service_with(counted, wide).search(SearchRequest(q="x", mode=Mode.SEMANTIC,
                                                            filters=ImageFilter(model="m0"), limit=50))
    assert wide.image_calls == [200, 800] and counted.statements() - before == 2
    assert sorted(h.image.id for h in page.hits) == sorted(ids[n] for n in range(0, 12, 3))


def test_a_warm_keyword_search_is_one_statement_and_sees_a_new_vocabulary(db: Any, conn: Any) -> None:
    ids = [conn.execute("INSERT INTO prompts (text) VALUES (%s) RETURNING id", (t,)).fetchone()["id"] for t in PROMPTS]
    PostgresKeywordIndex(lambda: db.connect(autocommit=True)).update(conn)
    pool = Counted(db.url)
    try:
        index = PostgresKeywordIndex(pool.connection)
        assert index.search("lighthouse storm", 10)  # fills the cache: counts, then the ranked tiers
        before = pool.statements()
        assert [p for p, _ in index.search("storm lighthouse", 10)] == [ids[1]]
        assert pool.statements() - before == 1  # the words' counts came from the cache
        # a typo: not in the vocabulary, so its alternatives ("lighthouse") are searched too, and cached
        assert [p for p, _ in index.search("lighthuose", 10)] == [ids[1]]
        # another process indexes a prompt holding the typo: the cached facts are stale and must not be used
        new_id = conn.execute("INSERT INTO prompts (text) VALUES ('a lighthuose on a cliff') RETURNING id"
                              ).fetchone()["id"]
        PostgresKeywordIndex(lambda: db.connect(autocommit=True)).update(conn)
        assert [p for p, _ in index.search("lighthuose", 10)] == [new_id]  # a word now: no alternatives
    finally:
        pool.pool.close()
