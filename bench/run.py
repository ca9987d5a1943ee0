"""The benchmark runner: `python -m bench.run --images N --prompts M --out bench/results/NAME`.

Builds a synthetic corpus in its own data dir under OUT (its own embedded PostgreSQL, never ./data), measures
kNN, keyword, hybrid-over-HTTP, index build and add, import and embedding throughput and the API's memory, each
beside its baseline, and writes every figure to OUT/results.json (rewritten after each step).
`python -m bench.report OUT/results.json` renders BENCHMARKS.md from it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from bench import synth
from bench.common import Results, log, machine, timed

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures" / "metadata"
PROFILE_QUERIES = 300  # hybrid queries profiled one at a time in-process (bench.profile_hybrid --n)
ZIPF_S = 1.0  # exponent of the query log's popularity (web search logs are close to 1)


def _zipf_log(corpus: synth.Corpus, exclude: set[str], seed: int, distinct: int = 5000,
              length: int = 30000) -> tuple[list[str], int]:
    """A query log where real search traffic's repeats show: `distinct` queries none of the other loads send,
    drawn `length` times with Zipf popularity (the k-th most popular in proportion to 1/k**ZIPF_S)."""
    pool: list[str] = []
    taken = set(exclude)
    for n in (1, 2, 3):
        for q in synth.keyword_queries(corpus, n, distinct, seed=202 + n):
            if q not in taken:
                taken.add(q)
                pool.append(q)
    pool = pool[:distinct]
    rng = np.random.default_rng([seed, 303])
    weights = 1.0 / np.arange(1, len(pool) + 1) ** ZIPF_S
    picks = rng.choice(len(pool), size=length, p=weights / weights.sum())
    return [pool[i] for i in picks], len(pool)


def _prepare_env(data_dir: Path) -> None:
    for key in [k for k in os.environ if k.startswith("PROMPTDEX_")]:
        del os.environ[key]
    os.environ.update(PROMPTDEX_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false")


def _corpus_stats(corpus: synth.Corpus) -> dict[str, Any]:
    lengths = corpus.prompt_lengths()
    per_prompt = np.bincount(corpus.image_prompt, minlength=len(corpus.prompts))
    return {"images": corpus.n_images, "prompts": len(corpus.prompts), "vocabulary_terms": len(corpus.terms),
            "prompt_words": {"mean": round(float(lengths.mean()), 1), "median": int(np.median(lengths)),
                             "p90": int(np.percentile(lengths, 90)), "min": int(lengths.min()),
                             "max": int(lengths.max())},
            "images_per_prompt": {"mean": round(float(per_prompt.mean()), 2), "max": int(per_prompt.max()),
                                  "prompts_with_one_image_pct": round(100 * float((per_prompt == 1).mean()), 1)},
            "common_words": [[w, round(s, 3)] for w, s in synth.common_words(corpus, 12)]}


def _vector_stats(vectors: np.ndarray, queries: np.ndarray, kinds: list[str], truth_scores: np.ndarray
                  ) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    a, b = vectors[rng.integers(0, len(vectors), 5000)], vectors[rng.integers(0, len(vectors), 5000)]
    sample = vectors[rng.integers(0, len(vectors), 20000)]
    ev = np.linalg.svd(sample - sample.mean(0), compute_uv=False) ** 2
    ev /= ev.sum()
    kind = np.asarray(kinds)
    out: dict[str, Any] = {"random_pair_cosine": round(float((a * b).sum(1).mean()), 3),
                           "variance_in_top_10_50_100_components": [round(float(ev[:k].sum()), 3)
                                                                    for k in (10, 50, 100)]}
    for name in ("image", "text"):
        s = truth_scores[kind == name]
        out[f"{name}_queries_cosine_nn1_nn10_nn50"] = [round(float(s[:, j].mean()), 3) for j in (0, 9, 49)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--prompts", type=int, default=30_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/quick"))
    parser.add_argument("--queries", type=int, default=1000, help="kNN and keyword queries per measurement")
    parser.add_argument("--baseline-queries", type=int, default=1000,
                        help="queries for each baseline (exact kNN; ILIKE scan per 1/2/4-word group; one-client HTTP)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--open-rate", type=float, default=50.0, help="requests/s of the open-loop load test")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the HTTP load test")
    parser.add_argument("--import-files", type=int, default=2000)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the corpus (data dir) afterwards")
    parser.add_argument("--setup-only", action="store_true", help="build the corpus and bundles, keep them, stop")
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    data_dir = out / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_env(data_dir)

    import faiss

    from bench import ann, hybrid, ingest, keyword
    from bench import corpus as corpus_mod
    from promptdex.db import migrate_schema, open_database
    from promptdex.settings import get_settings

    settings = get_settings(_env_file=None)
    s = settings.indexer
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Results(out / "results.json", {
        "command": command, "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "settings": {"exact_threshold": s.exact_threshold, "approx_factory": s.approx_factory, "nprobe": s.nprobe,
                     "pool_max_size": settings.db.pool_max_size},
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    })
    t_start = time.perf_counter()

    # 1. synthetic corpus ---------------------------------------------------------------------------------
    with timed("synthesise prompts") as t:
        corpus = synth.make_corpus(args.images, args.prompts, seed=args.seed)
    stats = _corpus_stats(corpus)
    stats["synth_prompts_s"] = round(t["seconds"], 1)
    with timed("synthesise vectors") as t:
        space = synth.VectorSpace(corpus, 512, salt=512)
        vectors = np.vstack(list(synth.make_vectors(corpus, space)))
        prompt_space = synth.VectorSpace(corpus, 384, salt=384)
        prompt_vectors = prompt_space.prompt_vectors
    stats["synth_vectors_s"] = round(t["seconds"], 1)

    # 2. PostgreSQL: COPY, keyword vocabulary -----------------------------------------------------------------
    database = open_database(settings)
    pg_pid = database.embedded.server_pid() if database.embedded else None
    load = corpus_mod.load_rows(database, corpus)
    pool = corpus_mod.open_pool(database)
    with timed("keyword vocabulary"):
        load["keyword_index"] = corpus_mod.build_keyword(database, pool)
    results.put("corpus", {**stats, "load": load})
    image_ids = corpus_mod.ids_in_corpus_order(database, corpus)
    prompt_ids = corpus_mod.prompt_ids_in_corpus_order(database, corpus)

    # 3. bundles: the indexer's path, timed ------------------------------------------------------------------
    from indexer.indexing import IMAGE_BUNDLE, PROMPT_BUNDLE

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    with timed("image bundle build"):
        _, image_build = corpus_mod.build_bundle(settings, IMAGE_BUNDLE, "image", corpus_mod.CLIP_MODEL_ID,
                                                 vectors, image_ids)
    flat = faiss.IndexFlatIP(512)
    t0 = time.perf_counter()
    flat.add(vectors)
    image_build["baseline_flat_build_s"] = round(time.perf_counter() - t0, 2)
    del flat
    with timed("prompt bundle build"):
        _, prompt_build = corpus_mod.build_bundle(settings, PROMPT_BUNDLE, "text", corpus_mod.PROMPT_MODEL_ID,
                                                  prompt_vectors, prompt_ids)
    results.put("build", {"image_bundle": image_build, "prompt_bundle": prompt_build})
    gc.collect()
    if args.setup_only:
        pool.close()
        database.close()
        log(f"corpus and bundles kept in {data_dir}")
        return 0

    # 4. kNN against exact ------------------------------------------------------------------------------------
    queries, kinds = synth.make_queries(corpus, space, args.queries)
    knn = ann.knn(settings.indexes_path / IMAGE_BUNDLE, corpus_mod.CLIP_MODEL_ID, vectors, image_ids, queries,
                  kinds, s.nprobe, args.baseline_queries)
    exact = ann.exact_index(vectors, image_ids)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    truth_scores, truth = exact.search(queries, ann.K)
    del exact
    gc.collect()
    if "IVF" in knn["index"]:
        knn["nprobe_sweep"] = ann.nprobe_sweep(settings.indexes_path / IMAGE_BUNDLE, corpus_mod.CLIP_MODEL_ID,
                                               queries, truth)
    results.put("knn", knn)
    results.put("vectors", _vector_stats(vectors, queries, kinds, truth_scores))

    # 5. incremental add of 10,000 -----------------------------------------------------------------------------
    rng = np.random.default_rng([args.seed, 77])
    extra = space.images(corpus.image_prompt[rng.integers(0, corpus.n_images, 10_000)], rng)
    extra_ids = np.arange(10_000, dtype=np.int64) + int(image_ids.max()) + 1
    with timed("incremental add"):
        results.put("incremental_add", ann.incremental_add(settings.indexes_path / IMAGE_BUNDLE,
                                                           corpus_mod.CLIP_MODEL_ID, extra, extra_ids,
                                                           out / "scratch-bundle", s))
    del vectors, extra
    gc.collect()

    # 6. keyword ----------------------------------------------------------------------------------------------
    groups = {f"{n}_word": synth.keyword_queries(corpus, n, args.queries) for n in (1, 2, 4)}
    common = [w for w, _ in synth.common_words(corpus, 20)]
    groups["common_words"] = [" ".join(np.random.default_rng([args.seed, i]).choice(common, size=1 + i % 2,
                                                                                      replace=False))
                              for i in range(200)]
    with timed("keyword"):
        results.put("keyword", keyword.run(pool, groups, common, args.baseline_queries))

    # 7. hybrid over HTTP: before (torch, as before issue 15) and after (the default: ONNX Runtime on the CPU) ------
    http_queries = []
    seen: set[str] = set()
    for n in (1, 2, 3, 4):
        for q in synth.keyword_queries(corpus, n, 6000, seed=101):
            if q not in seen:
                seen.add(q)
                http_queries.append(q)
    np.random.default_rng(5).shuffle(http_queries)
    n_seq = max(PROFILE_QUERIES, args.baseline_queries)  # the profile reads the first PROFILE_QUERIES
    warm, profile_q, load_q = http_queries[:50], http_queries[50:50 + n_seq], http_queries[50 + n_seq:]
    closed_q, open_q = load_q[: len(load_q) // 2], load_q[len(load_q) // 2:]  # disjoint: no cache hits across
    zipf_log, zipf_pool = _zipf_log(corpus, seen, args.seed)
    files = {"closed": out / "queries-load.json", "open": out / "queries-open.json", "zipf": out / "queries-zipf.json"}
    files["closed"].write_text(json.dumps(closed_q))
    files["open"].write_text(json.dumps(open_q))
    files["zipf"].write_text(json.dumps(zipf_log))
    (out / "queries-profile.json").write_text(json.dumps(profile_q))
    with timed("ONNX export of the query and image encoders (once; cached in the models dir)") as t:
        subprocess.run([sys.executable, "-c", "from indexer.embedders import load_embedders; "
                        "from promptdex.settings import get_settings; load_embedders(get_settings(), queries=True)"],
                       check=True, cwd=REPO, env=hybrid.server_env(data_dir, {"PROMPTDEX_INDEXER__RUNTIME": "onnx"}))
    results.put("onnx_export", {"seconds": round(t["seconds"], 1)})
    for runtime, key in (("torch", "http_before"), ("auto", "http")):
        server = hybrid.Server(data_dir, args.port, out / f"api-{runtime}.log", runtime=runtime)
        try:
            t0 = time.perf_counter()
            health = server.wait_ready()
            http: dict[str, Any] = {"runtime": runtime, "start_s": round(time.perf_counter() - t0, 1),
                                    "health": health, "memory_after_start": hybrid.api_memory(server)}
            for q in warm:
                server.get(f"/api/search?q={quote(q)}")
            http["sequential"] = hybrid.sequential(server, profile_q)
            results.put(key, http)
            with timed(f"profile ({runtime})"):
                prof_out = out / f"profile-{runtime}.json"
                compute = [] if health["models"]["runtime"]["clip"] == "torch" else ["--no-compute"]
                subprocess.run([sys.executable, "-m", "bench.profile_hybrid", "--queries",
                                str(out / "queries-profile.json"), "--out", str(prof_out), "--n",
                                str(PROFILE_QUERIES), *compute], check=True, cwd=REPO,
                               env=hybrid.server_env(data_dir, {"PROMPTDEX_INDEXER__RUNTIME": runtime}))
                http["profile"] = json.loads(prof_out.read_text())
            results.put(key, http)
            http["load"] = hybrid.load_test(server, pg_pid, files["closed"], out, clients=args.clients,
                                            duration=args.duration, name="distinct")
            if key == "http":
                http["load_zipf"] = hybrid.load_test(server, pg_pid, files["zipf"], out, clients=args.clients,
                                                     duration=args.duration, name="zipf")
                http["load_zipf"]["log"] = {"length": len(zipf_log), "distinct": zipf_pool, "exponent": ZIPF_S}
                http["open_loop"] = hybrid.load_test(server, pg_pid, files["open"], out, clients=args.clients,
                                                     duration=args.duration, rate=args.open_rate, name="open")
            http["memory_after_load"] = hybrid.api_memory(server)
            _, health_after = server.get("/api/health")
            http["cache"] = health_after["models"].get("query_cache", {})
            http["batches"] = health_after["models"].get("query_batches", {})
            http["runtimes"] = health_after["models"].get("runtime", {})
            results.put(key, http)
        finally:
            server.stop()
        with timed(f"memory floor ({runtime})"):
            floor_out = out / f"memory-floor-{runtime}.json"
            subprocess.run([sys.executable, "-m", "bench.memfloor", "--out", str(floor_out)], check=True, cwd=REPO,
                           env=hybrid.server_env(data_dir, {"PROMPTDEX_INDEXER__RUNTIME": runtime}))
            results.put("memory_floor" if key == "http" else "memory_floor_before", json.loads(floor_out.read_text()))

    # 8. import and embedding throughput --------------------------------------------------------------------
    from psycopg import sql as pgsql

    with database.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS promptdex_import_bench")
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier("promptdex_import_bench")))
    import_url = database.url.replace("/promptdex?", "/promptdex_import_bench?")
    import psycopg
    from psycopg.rows import dict_row

    folder = out / "import-files"
    made = ingest.make_import_folder(FIXTURES, folder, args.import_files)
    import_settings = get_settings(_env_file=None, thumbs_dir=out / "import-thumbs")
    with psycopg.connect(import_url, row_factory=dict_row) as conn:
        migrate_schema(conn)
        conn.commit()
        with timed("import"):
            imported = ingest.import_throughput(import_settings, conn, folder)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(out / "import-thumbs", ignore_errors=True)
    with timed("CLIP image embedding"):
        clip = ingest.clip_throughput(settings.models_path, runtime="torch")
        clip_onnx = ingest.clip_throughput(settings.models_path, runtime="onnx", onnx_dir=settings.onnx_path)
    results.put("ingest", {"import": {**made, **imported}, "clip_image_embedding": clip,
                           "clip_image_embedding_onnx": clip_onnx})

    pool.close()
    database.close()
    results.data["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results.data["total_s"] = round(time.perf_counter() - t_start, 1)
    results.save()
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    log(f"done in {results.data['total_s'] / 60:.1f} min: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
