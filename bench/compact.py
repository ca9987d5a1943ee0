"""Compact bundles against the standard layout, in one run, on bench/synth.py's vectors (the 1M benchmark's).

Each layout is built by the indexer's own path (`Bundle.add` in chunks of 10,000 with the exact threshold, so it turns
approximate at 210,000 vectors, then takes the rest), saved, reopened in memory and searched one query at a time on
one thread (k=50) over a grid of nprobe and refine k_factor; recall@10 is against exact IndexFlatIP on the same
vectors. Bytes a vector are the saved index file (codes, ids, refine codes, OPQ matrix, centroids) over the count.
With `--retrain`, each layout is then retrained as `promptdex index` does for an outgrown bundle (from its own stored
codes, streamed) and, for comparison, built afresh from the original vectors with the same number of lists.

Every layout runs in its own process (its peak RSS is its own); the vectors, queries and ground truth are made once
and cached (`--cache`).

    python -m bench.compact --images 1000000 --prompts 300000 --out bench/results/compact --retrain compact
"""

from __future__ import annotations

import argparse
import ctypes
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

import faiss
import numpy as np

from bench import synth
from bench.ann import K, _one_by_one, exact_index, recall_at
from bench.common import Results, log, machine, memory_of, summary_ms
from indexer.bundles import COMPACT_FACTORY, Bundle, _refine_of

STANDARD = "IVF{nlist},PQ{pq}x4fs,Refine(SQ8)"
LAYOUTS = {"standard": STANDARD, "compact": COMPACT_FACTORY}


def prepare(args: argparse.Namespace) -> Path:
    """Vectors, queries and exact ground truth in a cache folder (made once per size)."""
    cache = args.cache / f"{args.images}-{args.prompts}-{args.queries}"
    if (cache / "truth.npy").exists():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    corpus = synth.make_corpus(args.images, args.prompts)
    space = synth.VectorSpace(corpus, 512, salt=512)
    vectors = np.vstack(list(synth.make_vectors(corpus, space)))
    queries, kinds = synth.make_queries(corpus, space, args.queries)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    exact = exact_index(vectors, ids)
    _, truth = exact.search(queries, K)
    faiss.omp_set_num_threads(1)
    _, lat = _one_by_one(exact.search, queries[:args.baseline_queries], K, "exact IndexFlatIP")
    np.save(cache / "vectors.npy", vectors)
    np.save(cache / "queries.npy", queries)
    (cache / "kinds.json").write_text(json.dumps(kinds))
    (cache / "exact.json").write_text(json.dumps({"index": "IndexFlatIP (exact)", **summary_ms(lat)}))
    np.save(cache / "truth.npy", truth)
    return cache


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.name.startswith("index-"))


def sweep(bundle: Bundle, queries: np.ndarray, kinds: np.ndarray, truth: np.ndarray, nprobes: list[int],
          k_factors: list[int]) -> list[dict[str, Any]]:
    """recall@10 (all, image and text queries), latency; one query at a time, one thread."""
    faiss.omp_set_num_threads(1)
    rows = []
    refine = _refine_of(bundle.index)
    for nprobe in nprobes:
        for k_factor in k_factors if refine is not None else [0]:
            bundle.set_nprobe(nprobe)
            if refine is not None:
                refine.k_factor = k_factor
            found, lat = _one_by_one(bundle.index.search, queries, K, f"nprobe {nprobe} k_factor {k_factor}")
            rows.append({"nprobe": nprobe, "k_factor": k_factor, "recall_at_10": round(recall_at(found, truth), 4),
                         "recall_at_10_image": round(recall_at(found[kinds == "image"], truth[kinds == "image"]), 4),
                         "recall_at_10_text": round(recall_at(found[kinds == "text"], truth[kinds == "text"]), 4),
                         **summary_ms(lat), "load_average": [round(x, 2) for x in os.getloadavg()]})
            log(json.dumps(rows[-1]))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


def _facts(bundle: Bundle, path: Path) -> dict[str, Any]:
    size = _size(path)
    ivf = faiss.extract_index_ivf(bundle.index)
    return {"index_type": bundle.manifest.index_type, "count": bundle.count, "nlist": int(ivf.nlist),
            "trained_count": bundle.manifest.trained_count, "file_bytes": size,
            "bytes_per_vector": round(size / bundle.count, 1), "file_mib": round(size / 2**20, 1)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, measure and (optionally) retrain one layout; run in its own process."""
    cache, scratch = Path(spec["cache"]), Path(spec["scratch"])
    vectors = np.load(cache / "vectors.npy")
    queries, truth = np.load(cache / "queries.npy"), np.load(cache / "truth.npy")
    kinds = np.asarray(json.loads((cache / "kinds.json").read_text()))
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    nprobes, k_factors = spec["nprobe"], spec["k_factor"]
    _trim()
    rss0 = memory_of(os.getpid())
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    shutil.rmtree(scratch, ignore_errors=True)
    bundle = Bundle.create(scratch, name="bench", kind="image", model="synth", dim=vectors.shape[1])
    t0 = time.perf_counter()
    convert_s = 0.0
    for start in range(0, len(ids), spec["chunk"]):
        was = bundle.manifest.index_type
        c0 = time.perf_counter()
        bundle.add(vectors[start:start + spec["chunk"]], ids[start:start + spec["chunk"]],
                   exact_threshold=spec["exact_threshold"], approx_factory=spec["factory"])
        if bundle.manifest.index_type != was:
            convert_s = time.perf_counter() - c0
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    bundle.save()
    save_s = time.perf_counter() - t1
    built = memory_of(os.getpid())
    out: dict[str, Any] = {"name": spec["name"], "factory": spec["factory"], **_facts(bundle, scratch),
                           "build_s": round(build_s, 1), "train_and_convert_s": round(convert_s, 1),
                           "add_after_convert_s": round(build_s - convert_s, 1), "save_s": round(save_s, 1),
                           "build_peak_rss_mib": built["peak_rss_mib"],
                           "build_peak_above_vectors_mib": round(built["peak_rss_mib"] - rss0["rss_mib"], 1),
                           "vectors_mib": round(vectors.nbytes / 2**20, 1),
                           "build_load_average": [round(x, 2) for x in os.getloadavg()]}
    del bundle
    _trim()
    before = memory_of(os.getpid())
    opened = Bundle.open(scratch, model="synth")
    out["open_in_memory_anon_mib"] = round(memory_of(os.getpid())["anon_mib"] - before["anon_mib"], 1)
    out["sweep"] = sweep(opened, queries, kinds, truth, nprobes, k_factors)
    if spec["retrain"]:
        _trim()
        rss1 = memory_of(os.getpid())["rss_mib"]
        t2 = time.perf_counter()
        opened.retrain(spec["factory"])
        retrain_s = time.perf_counter() - t2
        opened.save()
        out["retrained"] = {**_facts(opened, scratch), "retrain_s": round(retrain_s, 1),
                            "peak_rss_mib": memory_of(os.getpid())["peak_rss_mib"], "rss_before_mib": rss1,
                            "load_average": [round(x, 2) for x in os.getloadavg()],
                            "sweep": sweep(opened, queries, kinds, truth, spec["retrain_nprobe"], k_factors)}
        del opened
        _trim()
        fresh = Bundle.create(scratch, name="bench", kind="image", model="synth", dim=vectors.shape[1])
        fresh.add(vectors, ids)
        t3 = time.perf_counter()
        fresh.make_approximate(spec["factory"])
        fresh_s = time.perf_counter() - t3
        fresh.save()
        out["fresh_from_originals"] = {**_facts(fresh, scratch), "build_s": round(fresh_s, 1),
                                       "load_average": [round(x, 2) for x in os.getloadavg()],
                                       "sweep": sweep(fresh, queries, kinds, truth, spec["retrain_nprobe"],
                                                      k_factors)}
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--prompts", type=int, default=300_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--baseline-queries", type=int, default=100)
    parser.add_argument("--layout", action="append", help="NAME=FACTORY (repeatable; default: standard and compact)")
    parser.add_argument("--nprobe", type=_ints, default=[32, 64, 96, 128, 192, 256])
    parser.add_argument("--k-factor", type=_ints, default=[10, 20, 40])
    parser.add_argument("--retrain", action="append", default=[], metavar="NAME",
                        help="also retrain this layout and build it afresh from the originals (repeatable)")
    parser.add_argument("--retrain-nprobe", type=_ints, default=[64, 128, 192])
    parser.add_argument("--exact-threshold", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench-compact-cache"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench-compact-scratch"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/compact"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(child(json.loads(args.child))) + "\n")
        return 0
    layouts = dict(item.split("=", 1) for item in args.layout) if args.layout else LAYOUTS
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    command = "python -m bench.compact " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Results(path, {"command": command, "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                             "machine": machine(), "params": {k: str(v) for k, v in vars(args).items()}})
    if previous.get("params", {}).get("images") == str(args.images):  # layouts of an earlier run at the same size
        results.data["figures"] = previous.get("figures", {})
        results.data["load_average"] = previous.get("load_average", {})
        results.data["earlier_commands"] = [*previous.get("earlier_commands", []), previous.get("command")]
    t0 = time.perf_counter()
    cache = prepare(args)
    results.put("exact", json.loads((cache / "exact.json").read_text()))
    for name, factory in layouts.items():
        spec = {"name": name, "factory": factory, "cache": str(cache), "scratch": str(args.scratch / name),
                "nprobe": args.nprobe, "k_factor": args.k_factor, "retrain": name in args.retrain,
                "retrain_nprobe": args.retrain_nprobe, "exact_threshold": args.exact_threshold, "chunk": args.chunk}
        log(f"layout {name}: {factory}")
        done = subprocess.run([sys.executable, "-m", "bench.compact", "--child", json.dumps(spec)],
                              stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            log(f"layout {name} failed with exit code {done.returncode}")
            continue
        results.put(f"layout:{name}", json.loads(done.stdout.strip().splitlines()[-1]))
    results.data["seconds"] = round(time.perf_counter() - t0, 1)
    results.save()
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
