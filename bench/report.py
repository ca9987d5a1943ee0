"""Render BENCHMARKS.md from one run's results.json: `python -m bench.report [RESULTS] [--out BENCHMARKS.md]`.

Every figure in the document comes from that one file, so the document always matches one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TARGETS = {
    "hybrid": "p99 <= 100 ms at >= 100 requests/s",
    "knn": "p99 <= 10 ms at recall@10 >= 0.95",
    "keyword": "p99 <= 50 ms",
    "build": "<= 10 minutes for 1M vectors",
    "memory": "private memory <= 1.4 GiB at 1M images",
    "open_loop": "p99 <= 100 ms under an open-loop offered load of 50 requests/s",
}
RUNTIME_NAMES = {"torch": "torch", "onnx": "ONNX Runtime"}
CLIP_RETRIEVAL_QPS, CLIP_RETRIEVAL_MS = 20, 50.0  # clip-retrieval's published figure, the hybrid anchor


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    r = b / a
    return f"{r:,.0f}x faster" if r >= 10 else (f"{r:.1f}x faster" if r >= 1 else f"{1 / r:.1f}x slower")


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(data: dict[str, Any], results_path: str) -> str:
    f = data["figures"]
    m = data["machine"]
    n_images = f["corpus"]["images"]
    run_cmd = data["command"]
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks")
    add("")
    add(f"The figures down to the one-shot sections come from one run: `{run_cmd}` (results file "
        f"`{results_path}`, rendered by `python -m bench.report`). Started " + str(data.get("started_at")) + ", took "
        + _f((data.get("total_s") or 0) / 60) + " minutes.")
    add("")
    add(f"Machine: {m['cpu']}, **{m['cores']} cores**, {m['memory_gib']} GiB RAM, no GPU lent to this task "
        f"(so no GPU figure), {m['os']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".")
    add("The machine was shared with other engineers' test runs; the HTTP test reports how much CPU other "
        "processes took during its window.")
    if data.get("load_average"):
        add("Load average (1, 5, 15 min) when each group of figures was stored: "
            + "; ".join(f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in data["load_average"].items())
            + " (2 cores: above 2 means work was queueing for the CPU).")
    add("")
    add("Reproduce: `make bench-full` (1,000,000 images; writes `bench/results/full/results.json`, then this file "
        "with `python -m bench.report bench/results/full/results.json --out BENCHMARKS.md`). `make bench` is the "
        "same at 100,000 images (about 9 minutes; `bench/results/quick/`, its own BENCHMARKS.md there). Every run uses "
        "its own data dir and embedded PostgreSQL under its results folder.")
    add("")

    # summary ------------------------------------------------------------------------------------------------
    http = f.get("http", {})
    load = http.get("load", {})
    knn = f.get("knn", {})
    kw = f.get("keyword", {})
    build = f.get("build", {}).get("image_bundle", {})
    mem = http.get("memory_after_load", {})
    before = f.get("http_before", {})
    kw_p99 = max((kw[g]["latency"]["p99_ms"] for g in ("1_word", "2_word", "4_word") if g in kw), default=None)
    add("## Targets")
    add("")
    add("| target | figure | baseline (same run) | result |")
    add("|---|---|---|---|")
    if load:
        ok = (load.get("p99_ms") or 1e9) <= 100 and load.get("throughput_rps", 0) >= 100
        c = load.get("cpu", {})
        per_request = c.get("api_ms_per_request", 0) + c.get("postgres_ms_per_request", 0) + c.get(
            "client_ms_per_request", 0)
        bound_text = (f": CPU-bound, {per_request:.0f} ms of CPU per request caps {c.get('cores', 2)} cores at "
                      f"about {c.get('cores', 2) * 1000 / per_request:.0f} requests/s (see below)"
                      if per_request else ": bounded by CPU per query, see below")
        add(f"| hybrid over HTTP: {TARGETS['hybrid']} | {_f(load.get('throughput_rps'))} req/s, p50 "
            f"{_f(load.get('p50_ms'))} ms, p99 {_f(load.get('p99_ms'))} ms ({load.get('clients')} clients, "
            f"{_f(load.get('duration_s'))} s) | clip-retrieval (published): about {CLIP_RETRIEVAL_MS:.0f} ms at about "
            f"{CLIP_RETRIEVAL_QPS} queries/s ({_f(load.get('throughput_rps', 0) / CLIP_RETRIEVAL_QPS, 2)}x its "
            f"throughput, p50 {_ratio(load.get('p50_ms'), CLIP_RETRIEVAL_MS)}) | "
            f"{_met(ok)}{'' if ok else bound_text} |")
    if knn:
        ok = knn["latency"]["p99_ms"] <= 10 and knn["recall_at_10"] >= 0.95
        probe = f", nprobe {knn['nprobe']}" if "IVF" in knn["index"] else " (exact: below the threshold)"
        add(f"| kNN k=50: {TARGETS['knn']} | `{knn['index']}`{probe}: recall@10 "
            f"{knn['recall_at_10']:.3f}, p50 {_f(knn['latency']['p50_ms'], 2)} ms, p99 "
            f"{_f(knn['latency']['p99_ms'], 2)} ms | exact IndexFlatIP: p50 "
            f"{_f(knn['baseline']['latency']['p50_ms'])} ms, p99 {_f(knn['baseline']['latency']['p99_ms'])} ms "
            f"({_ratio(knn['latency']['p50_ms'], knn['baseline']['latency']['p50_ms'])} at p50) | {_met(ok)} |")
    if kw:
        ok = kw_p99 is not None and kw_p99 <= 50
        add(f"| keyword top-50: {TARGETS['keyword']} | worst group p99 {_f(kw_p99)} ms (all "
            f"{kw['all']['latency']['n']:,} queries: p50 {_f(kw['all']['latency']['p50_ms'])} ms, p99 "
            f"{_f(kw['all']['latency']['p99_ms'])} ms) | sequential ILIKE scan: p50 "
            f"{_f(kw['1_word']['baseline'].get('p50_ms'))} ms (1 word) | {_met(ok)} |")
    if build:
        minutes = (build["build_s"] + build["save_s"]) / 60
        ok = minutes <= 10
        add(f"| index build: {TARGETS['build']} | {_f(build['vectors'])} vectors: {_f(minutes)} min (train and "
            f"convert {_f(build['train_and_convert_s'])} s, add {_f(build['build_s'] - build['train_and_convert_s'])}"
            f" s, save {_f(build['save_s'])} s) | IndexFlatIP add: {_f(build.get('baseline_flat_build_s'), 2)} s "
            f"({_ratio(build['build_s'] + build['save_s'], build.get('baseline_flat_build_s'))}; it trains "
            f"and compresses nothing) "
            f"| {_met(ok) if n_images >= 1_000_000 else 'n/a below 1M'} |")
    if mem:
        start = http.get("memory_after_start", {})
        verdict = _met(mem["anon_mib"] <= 1.4 * 1024)
        add(f"| API memory: {TARGETS['memory']} | private (anonymous) {_f(mem['anon_mib'] / 1024, 2)} GiB after the "
            f"load test (RSS {_f(mem['rss_mib'] / 1024, 2)} GiB, of which file-backed {_f(mem['file_mib'] / 1024, 2)}"
            f" GiB: shared pages of mapped bundles and libraries); {n_images:,} images; right after start private "
            f"{_f(start.get('anon_mib', 0) / 1024, 2)} GiB | before (torch) after the load: private "
            f"{_f(before.get('memory_after_load', {}).get('anon_mib', 0) / 1024, 2)} GiB | "
            f"{verdict if n_images >= 1_000_000 else 'n/a below 1M'} |")
    open_loop = http.get("open_loop", {})
    if open_loop:
        ok = (open_loop.get("p99_ms") or 1e9) <= 100 and not open_loop.get("errors")
        add(f"| hybrid over HTTP: {TARGETS['open_loop']} | {_f(open_loop.get('throughput_rps'))} req/s answered, p50 "
            f"{_f(open_loop.get('p50_ms'))} ms, p99 {_f(open_loop.get('p99_ms'))} ms (latency from each request's "
            f"scheduled time) | - | {_met(ok)} |")
    add("")

    # corpus -------------------------------------------------------------------------------------------------
    c = f["corpus"]
    load_f = c["load"]
    add("## Corpus")
    add("")
    add(f"`bench/synth.py`: {c['images']:,} images over {c['prompts']:,} distinct prompts "
        f"({c['vocabulary_terms']:,} vocabulary terms: Zipf subjects, styles, modifiers, artists, scenes and a "
        f"long tail of rare words). Words per prompt: mean {c['prompt_words']['mean']}, median "
        f"{c['prompt_words']['median']}, p90 {c['prompt_words']['p90']}, range {c['prompt_words']['min']}-"
        f"{c['prompt_words']['max']}. Images per prompt: mean {c['images_per_prompt']['mean']}, max "
        f"{c['images_per_prompt']['max']:,} (Zipf), {c['images_per_prompt']['prompts_with_one_image_pct']}% of "
        "prompts have one image. Parameters follow A1111 usage (Euler a and DPM++ 2M most, 512x512 most, "
        "20-30 steps, cfg 7), 40 models (Zipf).")
    add("")
    add("Most common words (share of prompts): "
        + ", ".join(f"{w} {s:.0%}" for w, s in c["common_words"]) + ".")
    add("")
    v = f.get("vectors", {})
    if v:
        add("Vectors are compositional, not i.i.d.: each vocabulary term has a latent vector, a prompt's vector "
            "is the weighted sum of its terms' plus a shared mean direction, an image's is its prompt's plus "
            "per-image variation, all through a mixing matrix with a decaying spectrum. Measured on this run: "
            f"cosine of a random pair {v['random_pair_cosine']}; share of variance in the top 10/50/100 "
            f"principal components {v['variance_in_top_10_50_100_components']}; mean cosine to the 1st/10th/50th "
            f"neighbour: image queries {v['image_queries_cosine_nn1_nn10_nn50']}, text queries (1-4 terms, "
            f"across a modality gap) {v['text_queries_cosine_nn1_nn10_nn50']}.")
        add("")
    add("| step | figure | command |")
    add("|---|---|---|")
    add(f"| synthesise prompts / vectors | {_f(c['synth_prompts_s'])} s / {_f(c['synth_vectors_s'])} s | "
        f"`{run_cmd}` |")
    add(f"| COPY into PostgreSQL (`store.bulk_load(rows=...)`) | {_f(load_f['copy_s'])} s, "
        f"{_f(load_f['copy_images_per_s'])} images/s | same |")
    add(f"| perceptual hashes + VACUUM ANALYZE | {_f(load_f['phash_and_analyze_s'])} s | same |")
    kwi = load_f.get("keyword_index", {})
    add(f"| keyword vocabulary (`PostgresKeywordIndex.update`) | {_f(kwi.get('seconds'))} s, "
        f"{_f(kwi.get('terms'))} terms, pg_trgm {kwi.get('pg_trgm')} | same |")
    add(f"| database size | {_f(load_f['database_mib'])} MiB (images {_f(load_f['images_table_mib'])}, prompts "
        f"{_f(load_f['prompts_table_mib'])}) | same |")
    add("")

    # kNN ----------------------------------------------------------------------------------------------------
    if knn:
        add("## Vector kNN (k=50), one query at a time, one thread")
        add("")
        add(f"{knn['queries']:,} queries (half new images of existing prompts, half short text queries); recall@10 "
            f"against exact `IndexFlatIP` on the same vectors (ground truth). Index: the bundle built by the "
            f"indexer's own code path (`Bundle.add` in chunks of 10,000, defaults "
            f"`{data['settings']['approx_factory']}` above {data['settings']['exact_threshold']:,} vectors).")
        add("")
        add("| index | recall@10 | recall@10 image / text queries | p50 ms | p99 ms | ratio to exact (p50) |")
        add("|---|---|---|---|---|---|")
        add(f"| `{knn['index']}` nprobe {knn['nprobe']} | {knn['recall_at_10']:.3f} | "
            f"{knn['recall_at_10_image_queries']:.3f} / {knn['recall_at_10_text_queries']:.3f} | "
            f"{_f(knn['latency']['p50_ms'], 2)} | {_f(knn['latency']['p99_ms'], 2)} | "
            f"{_ratio(knn['latency']['p50_ms'], knn['baseline']['latency']['p50_ms'])} |")
        add(f"| exact IndexFlatIP ({knn['baseline']['queries']:,} queries) | 1.000 | 1.000 / 1.000 | "
            f"{_f(knn['baseline']['latency']['p50_ms'], 2)} | {_f(knn['baseline']['latency']['p99_ms'], 2)} | 1x |")
        add("")
        if knn.get("nprobe_sweep"):
            add("nprobe sweep (same queries):")
            add("")
            add("| nprobe | recall@10 | p50 ms | p99 ms |")
            add("|---|---|---|---|")
            for row in knn["nprobe_sweep"]:
                add(f"| {row['nprobe']} | {row['recall_at_10']:.3f} | {_f(row['p50_ms'], 2)} | "
                    f"{_f(row['p99_ms'], 2)} |")
            add("")

    # build ----------------------------------------------------------------------------------------------------
    b = f.get("build", {})
    inc = f.get("incremental_add", {})
    if b:
        add("## Index build and incremental add")
        add("")
        add("| bundle | vectors | index | build (s) | of which train + convert (s) | save (s) | file (MiB) | "
            "baseline IndexFlatIP add (s) |")
        add("|---|---|---|---|---|---|---|---|")
        for name, row in b.items():
            add(f"| {name} | {row['vectors']:,} x {row['dim']} | `{row['index_type']}` | {_f(row['build_s'])} | "
                f"{_f(row['train_and_convert_s'])} | {_f(row['save_s'])} | {_f(row['file_mib'])} | "
                f"{_f(row.get('baseline_flat_build_s'), 2)} |")
        add("")
        if inc:
            add(f"Incremental add of {inc['vectors']:,} vectors to the saved image bundle: open {_f(inc['open_s'], 2)}"
                f" s, add {_f(inc['add_s'], 3)} s, save {_f(inc['save_s'], 2)} s (baseline: IndexFlatIP add "
                f"{_f(inc['baseline_flat_add_s'], 4)} s: the add itself "
                f"{_ratio(inc['add_s'], inc['baseline_flat_add_s'])}, as it encodes every vector).")
            add("")

    # keyword --------------------------------------------------------------------------------------------------
    if kw:
        add("## Keyword top-50")
        add("")
        add("`PostgresKeywordIndex.search(q, 50)` through a connection pool; queries are adjacent words cut from "
            "prompts picked by image popularity (so common words come up as often as in prompts), plus queries "
            "made only of the 20 most common words. Baseline: a sequential scan with `ILIKE` for every word, "
            "shortest prompts first (`" + "SELECT id FROM prompts WHERE text ILIKE ALL(...) ORDER BY length(text),"
            " id LIMIT 50`), on the same queries (the first of each group, as many as the ILIKE scan n column gives).")
        add("")
        add("| queries | n | p50 ms | p99 ms | mean results | ILIKE scan n | ILIKE p50 ms | ILIKE p99 ms | "
            "ratio (p50) | examples |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for g in ("1_word", "2_word", "4_word", "common_words"):
            if g not in kw:
                continue
            r = kw[g]
            add(f"| {g.replace('_', ' ')} | {r['latency']['n']:,} | {_f(r['latency']['p50_ms'], 2)} | "
                f"{_f(r['latency']['p99_ms'], 2)} | {r['mean_results']} | {r['baseline'].get('n', 0):,} | "
                f"{_f(r['baseline'].get('p50_ms'))} | {_f(r['baseline'].get('p99_ms'))} | "
                f"{_ratio(r['latency']['p50_ms'], r['baseline'].get('p50_ms'))} | "
                + ", ".join(f"`{e}`" for e in r["examples"][:3]) + " |")
        wc = kw.get("with_common_word", {}).get("latency", {})
        if wc.get("n"):
            add(f"| any query holding a top-20 word | {wc['n']:,} | {_f(wc['p50_ms'], 2)} | {_f(wc['p99_ms'], 2)} "
                "| | | | | | |")
        add("")

    # HTTP -----------------------------------------------------------------------------------------------------
    before = f.get("http_before", {})
    if http:
        _render_http(add, http, before)
    # memory ---------------------------------------------------------------------------------------------------
    if mem:
        _render_memory(add, f, http, before, n_images)

    # ingest ---------------------------------------------------------------------------------------------------
    ing = f.get("ingest", {})
    if ing:
        imp, clip, clip_onnx = ing["import"], ing["clip_image_embedding"], ing.get("clip_image_embedding_onnx", {})
        prev = imp.get("previous", {})
        add("## Import and embedding throughput")
        add("")
        add(f"`promptdex import` of {imp['files']:,} files ({imp['distinct_sources']} metadata fixtures copied into "
            f"distinct files, {_f(imp['mib'])} MiB, {imp['workers']} workers), then the image loading of "
            "`promptdex index` without CLIP (decode, thumbnail, perceptual hash, CLIP input). Before: the previous "
            "pipeline, measured in the same run (import decodes every file in full and writes its thumbnail; index "
            "decodes the thumbnail again). After: import reads each file once and decodes no pixels unless it must "
            f"({imp.get('decoded_at_import', '-')} files: stealth-metadata candidates and broken containers); index "
            "decodes each image once, reduced (JPEG draft mode, integer reduce), for all three.")
        add("")
        add("| what | before | after | after / before |")
        add("|---|---|---|---|")
        add(f"| `promptdex import` (files/s) | {_f(prev.get('images_per_s'))} | {_f(imp['images_per_s'])} | "
            f"{_side(prev.get('images_per_s'), imp['images_per_s'])} |")
        add(f"| ... CPU per file, with its PostgreSQL backend (ms) | {_f(prev.get('cpu_ms_per_file'))} | "
            f"{_f(imp.get('cpu_ms_per_file'))} | "
            f"{_side(prev.get('cpu_ms_per_file'), imp.get('cpu_ms_per_file'), 1, False)} |")
        il, ilp = imp.get("index_loading", {}), imp.get("index_loading_previous", {})
        add(f"| index image loading (images/s) | {_f(ilp.get('images_per_s'))} | {_f(il.get('images_per_s'))} | "
            f"{_side(ilp.get('images_per_s'), il.get('images_per_s'))} |")
        both = imp.get("import_and_index_loading_s", {})
        add(f"| import + index loading, all files (s) | {_f(both.get('previous'))} | {_f(both.get('now'))} | "
            f"{_side(both.get('previous'), both.get('now'), 1, False)} |")
        add(f"| CLIP ViT-B-32 image embedding, CPU ({clip['threads']} threads, batch {clip['batch']}, 224 px, random "
            f"weights): images/s, torch before, ONNX Runtime after | {_f(clip['images_per_s'], 1)} | "
            f"{_f(clip_onnx.get('images_per_s'), 1)} | {_side(clip['images_per_s'], clip_onnx.get('images_per_s'))} |")
        one, one_onnx = clip.get("baseline_one_per_call_images_per_s"), clip_onnx.get(
            "baseline_one_per_call_images_per_s")
        add(f"| ... one image per model call (images/s) | {_f(one, 1)} | {_f(one_onnx, 1)} | {_side(one, one_onnx)} |")
        add(f"| CLIP ViT-B-32 image embedding, GPU | {clip['gpu']} | | |")
        add("")
        add(f"Targets: import >= 200 files/s ({_met(imp['images_per_s'] >= 200)}: {_f(imp['images_per_s'])}; "
            f"Infinite Image Browsing's published 200,000 images in 20 minutes is "
            f"{_f(imp['baseline']['images_per_s'])} files/s); CLIP image embedding on the CPU >= 30 images/s "
            f"({_met(max(clip['images_per_s'], clip_onnx.get('images_per_s') or 0) >= 30)}: "
            f"{_f(max(clip['images_per_s'], clip_onnx.get('images_per_s') or 0), 1)}; "
            f"{_f(clip.get('cpu_ms_per_image'))} ms of CPU per image on torch, "
            f"{_f(clip_onnx.get('cpu_ms_per_image'))} on ONNX Runtime). Load average at the start and end of the "
            f"import: {imp.get('load_average_1min', '-')}.")
        add("")
    if data.get("one_shot"):  # bench/ONE_SHOT.md: sections of benches that run on their own, each with its command
        add(data["one_shot"])
        add("")
    if data.get("notes"):
        add("## Notes")
        add("")
        for note in data["notes"]:
            add(note)
            add("")
    return "\n".join(lines).rstrip() + "\n"


def _cpu_total(load: dict[str, Any]) -> float:
    c = load.get("cpu", {})
    return float(c.get("api_ms_per_request", 0) + c.get("postgres_ms_per_request", 0)
                 + c.get("client_ms_per_request", 0))


def _per_call(http: dict[str, Any], model: str) -> Any:
    b = http.get("load", {}).get("batches", {}).get(model) or http.get("batches", {}).get(model, {})
    return round(b["queries"] / b["batches"], 1) if b.get("batches") else None


def _side(a: Any, b: Any, digits: int = 1, higher_is_better: bool = True) -> str:
    """The ratio column: after over before."""
    if not a or not b:
        return "-"
    r = b / a if higher_is_better else a / b
    return f"{r:.2f}x" + ("" if abs(r - 1) < 0.02 else (" better" if r > 1 else " worse"))


def _render_http(add: Any, http: dict[str, Any], before: dict[str, Any]) -> None:
    load, seq = http.get("load", {}), http.get("sequential", {})
    b_load, b_seq = before.get("load", {}), before.get("sequential", {})
    rt = http.get("runtimes", {})
    after_name = " + ".join(sorted({RUNTIME_NAMES.get(v, v) for v in rt.values()})) or "default"
    add("## Hybrid search over HTTP")
    add("")
    add("`promptdex serve` (uvicorn, one process) against the corpus above, with the CLIP ViT-B-32 text tower "
        "(full size, random weights from a fixed seed, 512-d) and the real all-MiniLM-L6-v2 as query embedders, the "
        "image bundle and a prompt bundle of 384-d synthetic prompt vectors. The load generator (`bench/loadgen.py`, "
        "raw HTTP/1.1 on asyncio, keep-alive) runs in its own process on loopback. The API ran twice on the same "
        f"corpus in this run: **before**, `PROMPTDEX_INDEXER__RUNTIME=torch` (the encoders as before issue 15), and "
        f"**after**, the default (`auto`: {after_name} on this CPU). Both have the same query cache, batching and "
        "SQL; the distinct-query loads never repeat a query, so the cache never answers them.")
    add("")
    add("| measurement | before: torch | after: default | after / before |")
    add("|---|---|---|---|")

    def row(what: str, x: Any, y: Any, digits: int = 1, higher: bool = True) -> None:
        add(f"| {what} | {_f(x, digits)} | {_f(y, digits)} | {_side(x, y, digits, higher)} |")

    row(f"{load.get('clients')} clients, distinct queries: throughput (req/s)", b_load.get("throughput_rps"),
        load.get("throughput_rps"))
    row("... p50 ms", b_load.get("p50_ms"), load.get("p50_ms"), higher=False)
    row("... p99 ms", b_load.get("p99_ms"), load.get("p99_ms"), higher=False)
    row("one client, one request at a time: p50 ms", b_seq.get("p50_ms"), seq.get("p50_ms"), higher=False)
    row("... p99 ms", b_seq.get("p99_ms"), seq.get("p99_ms"), higher=False)
    for key, what in (("api_ms_per_request", "API process"), ("postgres_ms_per_request", "PostgreSQL"),
                      ("client_ms_per_request", "load generator")):
        row(f"CPU per request under load: {what} (ms)", b_load.get("cpu", {}).get(key), load.get("cpu", {}).get(key),
            2, higher=False)
    row("CPU per request under load: all (ms)", _cpu_total(b_load), _cpu_total(load), 2, higher=False)
    cores = load.get("cpu", {}).get("cores", 2)
    row(f"CPU bound on {cores} cores (req/s)", cores * 1000 / _cpu_total(b_load) if _cpu_total(b_load) else None,
        cores * 1000 / _cpu_total(load) if _cpu_total(load) else None)
    for model, what in (("clip", "CLIP text"), ("prompt", "MiniLM")):
        row(f"queries per model call under load: {what}", _per_call(before, model), _per_call(http, model))
    row("API private memory after the loads (MiB)", before.get("memory_after_load", {}).get("anon_mib"),
        http.get("memory_after_load", {}).get("anon_mib"), 0, higher=False)
    row("API start, models loaded (s)", before.get("start_s"), http.get("start_s"), 1, higher=False)
    add("")
    loads = [("distinct", f"{load.get('clients')} clients, distinct queries", load),
             ("zipf", f"{http.get('load_zipf', {}).get('clients')} clients, Zipf query log", http.get("load_zipf", {})),
             ("open", f"open loop, {_f(http.get('open_loop', {}).get('offered_rps'), 0)} req/s offered, distinct "
                      "queries", http.get("open_loop", {}))]
    add("The default runtime under three loads (the Zipf log draws "
        f"{_f(http.get('load_zipf', {}).get('log', {}).get('length'))} queries from "
        f"{_f(http.get('load_zipf', {}).get('log', {}).get('distinct'))} distinct ones, the k-th most popular in "
        f"proportion to 1/k^{http.get('load_zipf', {}).get('log', {}).get('exponent', 1.0)}, as real search traffic "
        "repeats; the open loop sends at a fixed rate whatever the answers and counts latency from each request's "
        "scheduled time):")
    add("")
    add("| load | requests | throughput req/s | p50 ms | p99 ms | errors | query cache hit rate | CPU ms/request "
        "(API + PostgreSQL + client) |")
    add("|---|---|---|---|---|---|---|---|")
    for _, what, r in loads:
        if not r:
            continue
        hit = r.get("cache", {}).get("hit_rate")
        add(f"| {what} | {r.get('requests', 0):,} | {_f(r.get('throughput_rps'))} | {_f(r.get('p50_ms'))} | "
            f"{_f(r.get('p99_ms'))} | {sum((r.get('errors') or {}).values())} | "
            f"{'-' if hit is None else f'{hit:.1%}'} | {_f(_cpu_total(r), 2)} |")
    add("")
    cpu = load.get("cpu", {})
    if cpu:
        total = _cpu_total(load)
        add(f"CPU during the distinct-query load (after; {cpu['cores']} cores, {_f(cpu['window_s'])} s window, "
            f"machine {cpu['machine_busy_pct']}% busy): API process {_f(cpu['api_s'])} s, PostgreSQL "
            f"{_f(cpu['postgres_s'])} s, load generator {_f(cpu['client_s'])} s, other processes on the machine "
            f"{_f(cpu['other_processes_s'])} s. **Bound:** one hybrid request costs {_f(total, 1)} ms of CPU in all, "
            f"so {cpu['cores']} cores serve at most about {_f(cpu['cores'] * 1000 / total if total else None, 0)} "
            f"requests/s however the work is scheduled; 100 requests/s needs <= {cpu['cores'] * 10} ms.")
        add("")
    prof, b_prof = http.get("profile", {}), before.get("profile", {})
    if prof:
        add(f"Where the CPU of one hybrid query goes (search service in-process, one query at a time, "
            f"{prof['queries']} queries, so no batching across requests): API process "
            f"{_f(b_prof.get('api_process_cpu_ms'), 1)} ms before, {_f(prof['api_process_cpu_ms'], 1)} ms after; "
            f"PostgreSQL {_f(b_prof.get('postgres_cpu_ms'), 1)} ms before, {_f(prof['postgres_cpu_ms'], 1)} ms after.")
        add("")
        trips = any("round_trips" in r for r in prof["stages"].values())
        add("| stage | CPU ms per query, before | after | wall ms per query, before | after |"
            + (" database round trips per query |" if trips else ""))
        add("|---|---|---|---|---|" + ("---|" if trips else ""))
        for key, r in prof["stages"].items():
            o = b_prof.get("stages", {}).get(key, {})
            add(f"| {r['what']} | {_f(o.get('cpu_ms'), 2)} | {_f(r['cpu_ms'], 2)} | {_f(o.get('wall_ms'), 2)} | "
                f"{_f(r['wall_ms'], 2)} |" + (f" {_f(r.get('round_trips'), 2)} |" if trips else ""))
        add(f"| PostgreSQL server processes | {_f(b_prof.get('postgres_cpu_ms'), 2)} | "
            f"{_f(prof['postgres_cpu_ms'], 2)} | | |" + (" |" if trips else ""))
        if trips and "round_trips" in prof:
            add(f"| all database round trips (before: {_f(b_prof.get('round_trips'), 2)}) | | | | | "
                f"{_f(prof['round_trips'], 2)} |")
        add("")
    comp = b_prof.get("compute", {})
    if comp:
        names = {"clip": "CLIP ViT-B-32 text tower", "prompt": "MiniLM"}
        add(f"What the torch query embeddings' CPU is made of (before), on {comp['queries']} of the queries one at a "
            f"time: floating-point operations counted by torch's `FlopCounterMode`, CPU in matrix products from "
            f"torch's profiler, and the bytes of weights those products read. One core's fp32 rate on the towers' "
            f"own shape (512 x 2048) with the weights in cache: {_f(comp['gemm_gflops_one_query_rows'])} GFLOP/s at "
            f"one query's 7 rows, {_f(comp['gemm_gflops_batched_rows'])} GFLOP/s at sixteen queries' 112 rows.")
        add("")
        add("| query model | GFLOP per query | weights of its products (MiB) | matrix products, one query per "
            "call (ms) | their rate (GFLOP/s, weights GB/s) | arithmetic floor, perfectly batched (ms) | "
            "measured CPU per query (ms) |")
        add("|---|---|---|---|---|---|---|")
        for key, m in comp["models"].items():
            add(f"| {names.get(key, key)} | {m['gflop_per_query']:.3f} | {_f(m['weights_mib'])} | "
                f"{_f(m['products_ms'], 1)} | {_f(m['products_gflops'])}, {_f(m['weights_gb_per_s'])} | "
                f"{_f(m['floor_ms_batched'], 1)} | {_f(m['measured_cpu_ms'], 1)} |")
        add("")


def _render_memory(add: Any, f: dict[str, Any], http: dict[str, Any], before: dict[str, Any], n_images: int) -> None:
    mem, start = http.get("memory_after_load", {}), http.get("memory_after_start", {})
    add("## API memory")
    add("")
    add(f"Resident memory of the API process (`/proc/PID/status`), {n_images:,} images, default runtime: right after "
        f"start {_f(start.get('rss_mib'))} MiB (private {_f(start.get('anon_mib'))} MiB); after the loads "
        f"{_f(mem['rss_mib'])} MiB (private {_f(mem['anon_mib'])} MiB, file-backed {_f(mem['file_mib'])} MiB: shared "
        f"libraries and memory-mapped files), peak {_f(mem['peak_rss_mib'])} MiB. Before (torch): after the load "
        f"{_f(before.get('memory_after_load', {}).get('rss_mib'))} MiB (private "
        f"{_f(before.get('memory_after_load', {}).get('anon_mib'))} MiB).")
    add("")
    for key, title in (("memory_floor_before", "before: torch"), ("memory_floor", "after: default")):
        floor = f.get(key)
        if not floor:
            continue
        add(f"What that memory is made of, {title}: a fresh process (`bench/memfloor.py`, the API's environment) "
            "loads what the API loads, one step at a time (MiB).")
        add("")
        add("| after | RSS | private (anonymous) | file-backed |")
        add("|---|---|---|---|")
        for st in floor["steps"]:
            add(f"| {st['step']} | {_f(st['rss_mib'], 0)} | {_f(st['anon_mib'], 0)} | {_f(st['file_mib'], 0)} |")
        add("")
        pm, bf = floor["parameters_mib"], floor["bundle_files_mib"]
        if floor.get("runtime", "torch") == "torch":
            add(f"Model weights in fp32: CLIP ViT-B-32 {_f(pm.get('clip_all_mib'), 0)} MiB (of which the vision tower "
                f"{_f(pm.get('clip_vision_mib'), 0)} MiB), MiniLM {_f(pm.get('minilm_mib'), 0)} MiB. Bundle files: "
                + ", ".join(f"{k} {_f(v, 0)} MiB" for k, v in bf.items()) + ".")
        else:
            add(f"ONNX files (fp32): CLIP text tower {_f(pm.get('clip_text_mib'), 0)} MiB, vision tower (loaded on "
                f"the first search by image) {_f(pm.get('clip_vision_mib'), 0)} MiB, MiniLM "
                f"{_f(pm.get('minilm_mib'), 0)} MiB. Bundle files: "
                + ", ".join(f"{k} {_f(v, 0)} MiB" for k, v in bf.items()) + ".")
        add("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=Path("bench/results/full/results.json"))
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    one_shot = Path(__file__).with_name("ONE_SHOT.md")
    if one_shot.is_file():
        text = one_shot.read_text().strip()
        data["one_shot"] = text.split("-->", 1)[1].strip() if text.startswith("<!--") else text  # minus its comment
    notes = Path(__file__).with_name("NOTES.md")
    if notes.is_file():
        data.setdefault("notes", []).append(notes.read_text().strip())
    args.out.write_text(render(data, str(args.results)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
