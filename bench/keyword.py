"""Keyword top-50: the PostgreSQL keyword index (FTS + vocabulary) against a sequential ILIKE scan."""

from __future__ import annotations

import sys
import time
from typing import Any

from psycopg_pool import ConnectionPool
from tqdm import tqdm

from bench.common import summary_ms
from indexer.keyword.postgres import PostgresKeywordIndex

LIMIT = 50
# The baseline: every word as a substring, shortest prompts first (a cheap relevance order), which makes
# PostgreSQL read every prompt: what a search box without an index does.
BASELINE_SQL = ("SELECT id FROM prompts WHERE text ILIKE ALL(%s) ORDER BY length(text), id LIMIT %s")


def _like(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def run(pool: ConnectionPool[Any], groups: dict[str, list[str]], common: list[str],
        baseline_per_group: int) -> dict[str, Any]:
    """Latency of `PostgresKeywordIndex.search(q, 50)` per query group (1, 2, 4 words), each beside the ILIKE
    baseline on the first `baseline_per_group` queries of the group. `common` are the corpus's most common words."""
    index = PostgresKeywordIndex(pool.connection)
    index.search("warm up", LIMIT)
    common_set = set(common)
    out: dict[str, Any] = {}
    all_lat: list[float] = []
    common_lat: list[float] = []
    for name, queries in groups.items():
        lat, hits = [], 0
        for q in tqdm(queries, desc=f"keyword {name}", unit="q", file=sys.stderr, mininterval=2):
            t0 = time.perf_counter()
            found = index.search(q, LIMIT)
            elapsed = time.perf_counter() - t0
            lat.append(elapsed)
            hits += len(found)
            if set(q.split()) & common_set:
                common_lat.append(elapsed)
        all_lat += lat
        base = []
        with pool.connection() as conn:
            for q in tqdm(queries[:baseline_per_group], desc=f"ILIKE {name}", unit="q", file=sys.stderr,
                          mininterval=2):
                t0 = time.perf_counter()
                conn.execute(BASELINE_SQL, ([_like(w) for w in q.split()], LIMIT)).fetchall()
                base.append(time.perf_counter() - t0)
        out[name] = {"latency": summary_ms(lat), "mean_results": round(hits / len(queries), 1),
                     "examples": queries[:5], "baseline": summary_ms(base)}
    out["all"] = {"latency": summary_ms(all_lat)}
    out["with_common_word"] = {"latency": summary_ms(common_lat), "common_words": common}
    return out
