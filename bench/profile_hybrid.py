"""Where a hybrid query's CPU goes: the search service in-process, one query at a time, each stage timed.

Run as its own process while the API is idle (`python -m bench.profile_hybrid --queries F --out F`). Stages are
the engine calls (CLIP text tower, MiniLM, FAISS, keyword search) and the SQL helpers of the search service;
process CPU time (all threads) is summed per stage, and PostgreSQL's own CPU is read from its processes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import tree_cpu

STAGES = {
    "embed_clip_text": "CLIP ViT-B-32 text tower (query)",
    "embed_prompt": "MiniLM prompt embedding (query)",
    "image_search": "FAISS image kNN",
    "prompt_search": "FAISS prompt kNN",
    "keyword_search": "keyword search (PostgreSQL FTS + vocabulary)",
    "sql": "other SQL (filters, prompt images, near-duplicates, rows)",
    "response": "response models (SearchItem, JSON)",
}


class Meter:
    def __init__(self) -> None:
        self.cpu: dict[str, float] = {k: 0.0 for k in STAGES}
        self.wall: dict[str, float] = {k: 0.0 for k in STAGES}

    def wrap(self, obj: Any, name: str, stage: str) -> None:
        inner: Callable[..., Any] = getattr(obj, name)

        def measured(*args: Any, **kwargs: Any) -> Any:
            c0, w0 = time.thread_time(), time.perf_counter()  # this thread's CPU (models run one thread each)
            try:
                return inner(*args, **kwargs)
            finally:
                self.cpu[stage] += time.thread_time() - c0
                self.wall[stage] += time.perf_counter() - w0

        setattr(obj, name, measured)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args(argv)

    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    from promptdex.db import open_database
    from promptdex.settings import get_settings
    from search_api.engines import load_engines
    from search_api.routes_search import items
    from search_api.schemas import SearchResponse
    from search_api.service import SearchRequest, SearchService

    settings = get_settings()
    database = open_database(settings)
    pool: ConnectionPool[Any] = ConnectionPool(database.url, min_size=1, max_size=4, open=False,
                                               kwargs={"row_factory": dict_row, "autocommit": True})
    pool.open(wait=True)
    engines = load_engines(settings, pool.connection)
    service = SearchService(pool=pool, engines=engines)
    queries = json.loads(args.queries.read_text())
    for q in queries[-20:]:  # warm up: models, bundles, caches of PostgreSQL
        service.search(SearchRequest(q=q))
    meter = Meter()
    # the query embeddings run in the batching threads of the engines: measure the model calls themselves
    meter.wrap(engines.indexer, "embed_text", "embed_clip_text")
    meter.wrap(engines.indexer, "embed_prompts", "embed_prompt")
    for name in ("image_search", "prompt_search", "keyword_search"):
        meter.wrap(engines, name, name)
    for name in ("_max_id", "_keep", "_images_of_prompts", "_collapse", "_hydrate"):
        meter.wrap(service, name, "sql")
    pg_pid = database.embedded.server_pid() if database.embedded else None
    todo = queries[: args.n]
    # the batchers' worker threads start on first use: rebuild them so the wrapped model calls are used
    from search_api.engines import _Batcher

    engines._batchers = {"clip": _Batcher(engines.indexer.embed_text, "clip"),
                         "prompt": _Batcher(engines.indexer.embed_prompts, "prompt")}
    pg0, c0, w0, t0 = tree_cpu(pg_pid), time.process_time(), time.perf_counter(), time.thread_time()
    for q in todo:
        page = service.search(SearchRequest(q=q))
        r0, rw0 = time.thread_time(), time.perf_counter()
        SearchResponse(data=items(page.hits), next_cursor=page.next_cursor, took_ms=0.0).model_dump_json()
        meter.cpu["response"] += time.thread_time() - r0
        meter.wall["response"] += time.perf_counter() - rw0
    cpu, wall, pg = time.process_time() - c0, time.perf_counter() - w0, tree_cpu(pg_pid) - pg0
    request_thread = time.thread_time() - t0
    n = len(todo)
    stages = {k: {"what": STAGES[k], "cpu_ms": round(meter.cpu[k] * 1000 / n, 2),
                  "wall_ms": round(meter.wall[k] * 1000 / n, 2)} for k in STAGES}
    in_request = sum(v for k, v in meter.cpu.items() if not k.startswith("embed_"))
    stages["python"] = {"what": "the rest of the search service (fusion, cursors, Python glue)",
                        "cpu_ms": round((request_thread - in_request) * 1000 / n, 2), "wall_ms": None}
    stages["threads"] = {"what": "other threads of the API process (pool, GC, libraries)",
                         "cpu_ms": round((cpu - request_thread - meter.cpu["embed_clip_text"]
                                          - meter.cpu["embed_prompt"]) * 1000 / n, 2), "wall_ms": None}
    result = {"queries": n, "api_process_cpu_ms": round(cpu * 1000 / n, 2), "wall_ms": round(wall * 1000 / n, 2),
              "postgres_cpu_ms": round(pg * 1000 / n, 2), "stages": stages}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), file=sys.stderr)
    pool.close()
    database.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
