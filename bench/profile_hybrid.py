"""Where a hybrid query's CPU goes: the search service in-process, one query at a time, each stage timed.

Run as its own process while the API is idle (`python -m bench.profile_hybrid --queries F --out F`). Stages are
the engine calls (CLIP text tower, MiniLM, FAISS, keyword search) and the SQL helpers of the search service;
process CPU time (all threads) is summed per stage, and PostgreSQL's own CPU is read from its processes. Round
trips to PostgreSQL are counted per stage: every statement a connection sends (the pool's liveness check on
checkout, as the API's pool does it, included) and every transaction command (BEGIN, COMMIT).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

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


# SQL helpers of the search service, before (one statement each) and after issue 15 (one ranking statement)
SQL_HELPERS = ("_max_id", "_keep", "_images_of_prompts", "_collapse", "_hydrate", "_rank")


class CountingCursor(psycopg.Cursor[Any]):
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.round_trips += 1
        return super().execute(*args, **kwargs)


class CountingConnection(psycopg.Connection[Any]):
    """A connection that counts what it sends: statements (through its cursors) and transaction commands."""

    round_trips = 0  # all connections together: the profile runs one query at a time

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = CountingCursor

    def _exec_command(self, *args: Any, **kwargs: Any) -> Any:  # BEGIN, COMMIT, ROLLBACK (psycopg internals)
        CountingConnection.round_trips += 1
        return super()._exec_command(*args, **kwargs)


class Meter:
    def __init__(self) -> None:
        self.cpu: dict[str, float] = {k: 0.0 for k in STAGES}
        self.wall: dict[str, float] = {k: 0.0 for k in STAGES}
        self.trips: dict[str, int] = {k: 0 for k in STAGES}

    def wrap(self, obj: Any, name: str, stage: str) -> None:
        inner: Callable[..., Any] = getattr(obj, name)

        def measured(*args: Any, **kwargs: Any) -> Any:
            c0, w0 = time.thread_time(), time.perf_counter()  # this thread's CPU (models run one thread each)
            r0 = CountingConnection.round_trips
            try:
                return inner(*args, **kwargs)
            finally:
                self.cpu[stage] += time.thread_time() - c0
                self.wall[stage] += time.perf_counter() - w0
                if not stage.startswith("embed_"):  # the model calls run beside the request in their own threads
                    self.trips[stage] += CountingConnection.round_trips - r0

        setattr(obj, name, measured)


def _gemm_gflops(rows: int, inner: int, outer: int, repeat: int = 200) -> float:
    """Best-of-five GFLOP/s of one fp32 `linear` (rows x inner times inner x outer) on the calling thread."""
    import torch

    x, w, b = torch.randn(rows, inner), torch.randn(outer, inner), torch.randn(outer)
    best = float("inf")
    with torch.inference_mode():
        torch.nn.functional.linear(x, w, b)
        for _ in range(5):
            t0 = time.thread_time()
            for _ in range(repeat):
                torch.nn.functional.linear(x, w, b)
            best = min(best, (time.thread_time() - t0) / repeat)
    return 2 * rows * inner * outer / best / 1e9


def _weight_mib(module: Any) -> float:
    """MiB of the 2-d weights of a module's matrix products (embedding tables excluded: a query reads a few rows)."""
    import torch

    total = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.Embedding):
            continue
        for name, p in sub.named_parameters(recurse=False):
            if p.dim() == 2 and "embedding" not in name:
                total += p.numel() * p.element_size()
    return total / 2**20


def compute_floor(engines: Any, queries: list[str], measured_ms: dict[str, float]) -> dict[str, Any]:
    """What a query embedding's CPU is made of, against what one core can do: the bound on hybrid CPU per query.

    Per query model, on real queries one at a time: floating-point operations (torch's FlopCounterMode), the CPU
    spent in matrix products (aten addmm/mm/bmm/linear, torch's profiler) and the bytes of weights those products
    read. The core's arithmetic rate is an fp32 product of the towers' own shape (512 -> 2048) with its weights
    in cache, at one query's 7 rows and at sixteen queries' 112 rows: the floor a perfectly batched call could
    reach. One query's products run far below it: the weights do not fit the cache and are streamed from memory
    for a handful of rows.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    calls = {"clip": engines.indexer.embed_text, "prompt": engines.indexer.embed_prompts}
    models = {"clip": engines.indexer.embedders.clip.model, "prompt": engines.indexer.embedders.prompt.model}
    torch.set_num_threads(1)
    one, batch = _gemm_gflops(7, 512, 2048), _gemm_gflops(112, 512, 2048, repeat=40)
    out: dict[str, Any] = {"gemm_gflops_one_query_rows": round(one, 1), "gemm_gflops_batched_rows": round(batch, 1),
                           "queries": len(queries), "models": {}}
    for name, call in calls.items():
        call(queries[:1])  # warm: a first call may run one-off checks (the trimmed CLIP path checks itself)
        flops = 0
        for q in queries:
            counter = FlopCounterMode(display=False)
            with counter:
                call([q])
            flops += counter.get_total_flops()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for q in queries:
                call([q])
        products_us = sum(e.self_cpu_time_total for e in prof.key_averages()
                          if e.key in ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"))
        products_ms = products_us / 1000 / len(queries)
        f = flops / len(queries)
        # the CLIP text tower's blocks (its 512 x 512 output projection, 1 MiB, is a bare parameter: left out)
        weights = _weight_mib(models[name].transformer if name == "clip" else models[name])
        out["models"][name] = {
            "gflop_per_query": round(f / 1e9, 3), "weights_mib": round(weights, 1),
            "products_ms": round(products_ms, 2), "products_gflops": round(f / products_ms / 1e6, 1),
            "weights_gb_per_s": round(weights * 2**20 / products_ms / 1e6, 1),
            "floor_ms_batched": round(f / batch / 1e6, 2), "measured_cpu_ms": round(measured_ms[name], 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--no-compute", action="store_true",
                        help="leave out what the query embeddings are made of (the database stages only)")
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
    # as the API's pool: connections checked as they leave it (one round trip each)
    pool: ConnectionPool[Any] = ConnectionPool(database.url, min_size=1, max_size=4, open=False,
                                               kwargs={"row_factory": dict_row, "autocommit": True},
                                               connection_class=CountingConnection,
                                               check=ConnectionPool.check_connection)
    pool.open(wait=True)
    engines = load_engines(settings, pool.connection)
    service = SearchService(pool=pool, engines=engines, secret=b"bench")
    queries = json.loads(args.queries.read_text())
    for q in queries[-20:]:  # warm up: models, bundles, caches of PostgreSQL
        service.search(SearchRequest(q=q))
    meter = Meter()
    # the query embeddings run in the batching threads of the engines: measure the model calls themselves
    meter.wrap(engines.indexer, "embed_text", "embed_clip_text")
    meter.wrap(engines.indexer, "embed_prompts", "embed_prompt")
    for name in ("image_search", "prompt_search", "keyword_search"):
        meter.wrap(engines, name, name)
    for name in SQL_HELPERS:
        if hasattr(service, name):
            meter.wrap(service, name, "sql")
    pg_pid = database.embedded.server_pid() if database.embedded else None
    todo = queries[: args.n]
    # the batchers' worker threads start on first use: rebuild them so the wrapped model calls are used
    from search_api.engines import _Batcher

    engines._batchers = {"clip": _Batcher(engines.indexer.embed_text, "clip"),
                         "prompt": _Batcher(engines.indexer.embed_prompts, "prompt")}
    pg0, c0, w0, t0 = tree_cpu(pg_pid), time.process_time(), time.perf_counter(), time.thread_time()
    trips0 = CountingConnection.round_trips
    for q in todo:
        page = service.search(SearchRequest(q=q))
        r0, rw0 = time.thread_time(), time.perf_counter()
        SearchResponse(data=items(page.hits), next_cursor=page.next_cursor, took_ms=0.0).model_dump_json()
        meter.cpu["response"] += time.thread_time() - r0
        meter.wall["response"] += time.perf_counter() - rw0
    cpu, wall, pg = time.process_time() - c0, time.perf_counter() - w0, tree_cpu(pg_pid) - pg0
    trips = CountingConnection.round_trips - trips0
    request_thread = time.thread_time() - t0
    n = len(todo)
    stages = {k: {"what": STAGES[k], "cpu_ms": round(meter.cpu[k] * 1000 / n, 2),
                  "wall_ms": round(meter.wall[k] * 1000 / n, 2),
                  "round_trips": round(meter.trips[k] / n, 2)} for k in STAGES}
    in_request = sum(v for k, v in meter.cpu.items() if not k.startswith("embed_"))
    stages["python"] = {"what": "the rest of the search service (fusion, cursors, Python glue)",
                        "cpu_ms": round((request_thread - in_request) * 1000 / n, 2), "wall_ms": None}
    stages["threads"] = {"what": "other threads of the API process (pool, GC, libraries)",
                         "cpu_ms": round((cpu - request_thread - meter.cpu["embed_clip_text"]
                                          - meter.cpu["embed_prompt"]) * 1000 / n, 2), "wall_ms": None}
    measured = {"clip": meter.cpu["embed_clip_text"] * 1000 / n, "prompt": meter.cpu["embed_prompt"] * 1000 / n}
    result = {"queries": n, "api_process_cpu_ms": round(cpu * 1000 / n, 2), "wall_ms": round(wall * 1000 / n, 2),
              "postgres_cpu_ms": round(pg * 1000 / n, 2), "round_trips": round(trips / n, 2), "stages": stages,
              "compute": None if args.no_compute else compute_floor(engines, todo[:100], measured)}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), file=sys.stderr)
    pool.close()
    database.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
