"""Vector kNN: the bundle's index against exact IndexFlatIP (recall@10, latency), build and incremental add."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from bench.common import summary_ms
from indexer.bundles import Bundle

K = 50


def exact_index(vectors: np.ndarray, ids: np.ndarray) -> Any:
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    flat.add_with_ids(vectors, ids)
    return flat


def _one_by_one(search: Any, queries: np.ndarray, k: int, desc: str) -> tuple[np.ndarray, list[float]]:
    found = np.zeros((len(queries), k), dtype=np.int64)
    lat: list[float] = []
    for i in tqdm(range(len(queries)), desc=desc, unit="q", file=sys.stderr, mininterval=2):
        t0 = time.perf_counter()
        _, ids = search(queries[i:i + 1], k)
        lat.append(time.perf_counter() - t0)
        found[i] = ids[0]
    return found, lat


def recall_at(found: np.ndarray, truth: np.ndarray, at: int = 10) -> float:
    return float(np.mean([len(set(f[:at].tolist()) & set(t[:at].tolist())) / at
                          for f, t in zip(found, truth, strict=True)]))


def knn(bundle_path: Path, model: str, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, kinds: list[str],
        nprobe: int, baseline_queries: int) -> dict[str, Any]:
    """One query at a time, one thread (as a request does): the bundle as the API opens it, and exact search."""
    faiss.omp_set_num_threads(1)
    bundle = Bundle.open(bundle_path, model=model, nprobe=nprobe)
    found, lat = _one_by_one(bundle.index.search, queries, K, f"kNN {bundle.manifest.index_type}")
    flat = exact_index(vectors, ids)
    faiss.omp_set_num_threads(2)
    _, truth = flat.search(queries, K)  # ground truth, batched
    faiss.omp_set_num_threads(1)
    _, base_lat = _one_by_one(flat.search, queries[:baseline_queries], K, "kNN exact IndexFlatIP")
    kind = np.asarray(kinds)
    out = {
        "index": bundle.manifest.index_type, "nprobe": nprobe, "k": K, "queries": len(queries),
        "recall_at_10": round(recall_at(found, truth), 4),
        "recall_at_10_image_queries": round(recall_at(found[kind == "image"], truth[kind == "image"]), 4),
        "recall_at_10_text_queries": round(recall_at(found[kind == "text"], truth[kind == "text"]), 4),
        "recall_at_50": round(recall_at(found, truth, 50), 4),
        "latency": summary_ms(lat), "baseline": {"index": "IndexFlatIP (exact)", "latency": summary_ms(base_lat),
                                                  "queries": len(base_lat)},
    }
    faiss.omp_set_num_threads(2)
    return out


def nprobe_sweep(bundle_path: Path, model: str, queries: np.ndarray, truth: np.ndarray,
                 nprobes: tuple[int, ...] = (32, 64, 96, 128, 192, 256, 384)) -> list[dict[str, Any]]:
    """Recall@10 and latency at several nprobe values (the tuning curve behind the chosen default)."""
    faiss.omp_set_num_threads(1)
    bundle = Bundle.open(bundle_path, model=model)
    rows = []
    for nprobe in nprobes:
        bundle.set_nprobe(nprobe)
        found, lat = _one_by_one(bundle.index.search, queries, K, f"nprobe {nprobe}")
        rows.append({"nprobe": nprobe, "recall_at_10": round(recall_at(found, truth), 4), **summary_ms(lat)})
    faiss.omp_set_num_threads(2)
    return rows


def incremental_add(bundle_path: Path, model: str, vectors: np.ndarray, ids: np.ndarray, scratch: Path,
                    settings_indexer: Any) -> dict[str, Any]:
    """Open the saved bundle in memory (as `promptdex index` does), add 10,000 vectors, save to a scratch copy."""
    t0 = time.perf_counter()
    bundle = Bundle.open(bundle_path, model=model)
    open_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    bundle.add(vectors, ids, exact_threshold=settings_indexer.exact_threshold,
               approx_factory=settings_indexer.approx_factory)
    add_s = time.perf_counter() - t1
    shutil.rmtree(scratch, ignore_errors=True)
    bundle.path = scratch
    t2 = time.perf_counter()
    bundle.save()
    save_s = time.perf_counter() - t2
    shutil.rmtree(scratch, ignore_errors=True)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    t3 = time.perf_counter()
    flat.add_with_ids(vectors, ids)
    base_s = time.perf_counter() - t3
    return {"vectors": len(ids), "open_s": round(open_s, 2), "add_s": round(add_s, 3), "save_s": round(save_s, 2),
            "baseline_flat_add_s": round(base_s, 4)}
