"""Compact bundles: bytes a vector, recall@10 against exact IndexFlatIP, latency (k=50, one query at a time, one
thread) and build time of candidate approximate layouts, on bench/synth.py's vectors.

`python -m bench.compact --images 100000 --layout 'OPQ64_256,IVF{nlist},PQ64x4fs,Refine(PQ128)' ...`"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench import synth
from bench.ann import K, _one_by_one, exact_index, recall_at
from bench.common import summary_ms
from indexer.bundles import Bundle


def measure(layout: str, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            scratch: Path, nprobes: tuple[int, ...]) -> list[dict[str, Any]]:
    shutil.rmtree(scratch, ignore_errors=True)
    faiss.omp_set_num_threads(2)
    bundle = Bundle.create(scratch, name="bench", kind="image", model="synth", dim=vectors.shape[1])
    t0 = time.perf_counter()
    bundle.add(vectors, ids)
    bundle.make_approximate(layout)
    build_s = time.perf_counter() - t0
    manifest = bundle.save()
    size = sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file())
    faiss.omp_set_num_threads(1)
    opened = Bundle.open(scratch, model="synth")
    rows = []
    for nprobe in nprobes:
        opened.set_nprobe(nprobe)
        found, lat = _one_by_one(opened.index.search, queries, K, f"{manifest.index_type} nprobe {nprobe}")
        rows.append({"layout": manifest.index_type, "count": len(ids), "nprobe": nprobe,
                     "bytes_per_vector": round(size / len(ids), 1), "bundle_mib": round(size / 2**20, 1),
                     "recall_at_10": round(recall_at(found, truth), 4), "build_s": round(build_s, 1),
                     **summary_ms(lat)})
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--prompts", type=int, default=30_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--layout", action="append", required=True, help="FAISS factory string (repeatable)")
    parser.add_argument("--nprobe", type=int, action="append", help="repeatable (default 64, 128)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench-compact-scratch"))
    parser.add_argument("--out", type=Path, help="JSON lines of the results")
    args = parser.parse_args()
    corpus = synth.make_corpus(args.images, args.prompts)
    space = synth.VectorSpace(corpus, 512, salt=512)
    vectors = np.vstack(list(synth.make_vectors(corpus, space)))
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    queries, _ = synth.make_queries(corpus, space, args.queries)
    faiss.omp_set_num_threads(2)
    _, truth = exact_index(vectors, ids).search(queries, K)
    rows = [r for layout in args.layout for r in measure(layout, vectors, ids, queries, truth, args.scratch,
                                                         tuple(args.nprobe or (64, 128)))]
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
