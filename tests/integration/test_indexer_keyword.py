"""Keyword index back ends: ranking, typos, prefixes, suggestions; Meilisearch only with PROMPTDEX_TEST_MEILI_URL."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from indexer.keyword import KeywordIndex, MeiliKeywordIndex, PostgresKeywordIndex, open_keyword_index
from promptdex.errors import ConfigError

pytestmark = [pytest.mark.integration, pytest.mark.external_db]  # CI also runs these on Debian PostgreSQL 15

PROMPTS = [
    "cyberpunk city at night, neon rain, wet streets",
    "a quiet city park in spring, cherry blossoms",
    "portrait of an old fisherman, dramatic lighting",
    "cyberpunk samurai with a glowing katana",
    "rain over a mountain lake, misty, cinematic",
    "watercolor painting of a cat sleeping on a windowsill",
]


def add_prompts(conn: Any, texts: list[str]) -> dict[str, int]:
    ids = {}
    for text in texts:
        ids[text] = conn.execute("INSERT INTO prompts (text) VALUES (%s) RETURNING id", (text,)).fetchone()["id"]
    return ids


@pytest.fixture
def keyword(db: Any, conn: Any) -> tuple[PostgresKeywordIndex, dict[str, int]]:
    ids = add_prompts(conn, PROMPTS)
    index = PostgresKeywordIndex(lambda: db.connect(autocommit=True))
    assert index.update(conn) == len(PROMPTS)
    return index, ids


def test_a_prompt_with_the_query_words_ranks_above_one_without(keyword: tuple[Any, dict[str, int]]) -> None:
    index, ids = keyword
    results = index.search("cyberpunk city rain", limit=10)
    order = [prompt_id for prompt_id, _ in results]
    assert order[0] == ids[PROMPTS[0]]  # holds all three words
    assert set(order) >= {ids[PROMPTS[1]], ids[PROMPTS[3]], ids[PROMPTS[4]]}  # each holds one
    assert ids[PROMPTS[2]] not in order and ids[PROMPTS[5]] not in order  # hold none
    scores = dict(results)
    assert scores[ids[PROMPTS[0]]] > scores[ids[PROMPTS[1]]]
    assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)


def test_typos_prefixes_and_suggestions(keyword: tuple[Any, dict[str, int]], conn: Any) -> None:
    index, ids = keyword
    assert {i for i, _ in index.search("cyberpnk", 5)} == {ids[PROMPTS[0]], ids[PROMPTS[3]]}
    assert [i for i, _ in index.search("fishermn portrait", 5)][0] == ids[PROMPTS[2]]
    assert {i for i, _ in index.search("waterco", 5)} == {ids[PROMPTS[5]]}  # the last word is a prefix
    assert index.suggest("cyb") == ["cyberpunk"]
    assert index.suggest("ci", 5) == ["city", "cinematic"]  # most used first
    assert index.search("", 5) == [] and index.search("the a of", 5) == []  # stop words only
    assert index.search("zzzzqqq", 5) == []


def test_update_is_incremental_and_rebuild_recounts(keyword: tuple[Any, dict[str, int]], conn: Any) -> None:
    index, _ = keyword
    assert index.update(conn) == 0
    [new_id] = add_prompts(conn, ["a lighthouse in a storm"]).values()
    assert index.update(conn) == 1 and index.pending(conn) == 0
    assert [i for i, _ in index.search("lighthouse", 3)] == [new_id]
    city = conn.execute("SELECT prompts FROM prompt_terms WHERE term = 'city'").fetchone()["prompts"]
    index.rebuild(conn)
    assert index.pending(conn) == len(PROMPTS) + 1
    assert index.update(conn) == len(PROMPTS) + 1
    assert conn.execute("SELECT prompts FROM prompt_terms WHERE term = 'city'").fetchone()["prompts"] == city


def test_backend_setting_picks_the_back_end(settings: Any, db: Any) -> None:
    connect = lambda: db.connect(autocommit=True)  # noqa: E731
    assert isinstance(open_keyword_index(settings, connect), PostgresKeywordIndex)
    settings.indexer.keyword_backend = "meilisearch"
    with pytest.raises(ConfigError, match="PROMPTDEX_INDEXER__MEILI_URL"):
        open_keyword_index(settings, connect)
    settings.indexer.keyword_backend = "elastic"
    with pytest.raises(ConfigError, match="accepted: postgres, meilisearch"):
        open_keyword_index(settings, connect)


MEILI_URL = os.environ.get("PROMPTDEX_TEST_MEILI_URL")


@pytest.mark.skipif(not MEILI_URL, reason="set PROMPTDEX_TEST_MEILI_URL to a Meilisearch server to run this")
def test_meilisearch_back_end(conn: Any) -> None:
    ids = add_prompts(conn, PROMPTS)
    index: KeywordIndex = MeiliKeywordIndex(str(MEILI_URL), os.environ.get("PROMPTDEX_TEST_MEILI_KEY"),
                                            index_name=f"promptdex-test-{uuid.uuid4().hex[:8]}")
    try:
        assert index.update(conn) == len(PROMPTS) and index.update(conn) == 0
        order = [i for i, _ in index.search("cyberpunk city rain", 10)]
        assert order[0] == ids[PROMPTS[0]] and ids[PROMPTS[2]] not in order
        assert ids[PROMPTS[3]] in [i for i, _ in index.search("cyberpnk", 5)]
        assert "cyberpunk" in index.suggest("cyb")
    finally:
        assert isinstance(index, MeiliKeywordIndex)
        index.client.delete_index(index.index_name)
