"""How good can a code of a given size be on the bench's synthetic CLIP-like vectors? Each FAISS factory string is
trained, filled and searched on its own, one query at a time on one thread (k=50), and scored by recall@10 against
exact search, over the bench's own queries (bench.synth.make_queries: half new images of existing prompts, half
short text queries across the modality gap). Flat codes (no inverted lists) are searched exhaustively: the best
that code could do as a refine stage. An `L:` prefix builds the index for L2 distance (IVFPQR, `IVF{n},PQa+b`, has
no inner-product search; on unit vectors L2 ranks as inner product does).

Beside recall it reports why a code misses: the spread of its score error (the code's inner product with the query
minus the true one, over the true top 50) against the gap between the true 10th and 11th neighbours' scores. A
code whose error is larger than that gap cannot keep the top 10 in order, however many candidates it re-ranks.

    python -m bench.refine_codes --images 200000 --out bench/results/refine-codes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench import synth
from bench.ann import K, _one_by_one, recall_at
from bench.common import finish, log, machine, summary_ms

CODES = ("PQ128np", "OPQ128,PQ128np", "PCAR256,SQ4", "SQ4", "SQ8", "OPQ64_256,IVF{nlist},PQ64x4fs,Refine(PQ128np)",
         "L:IVF{nlist},PQ32+128", "L:IVF{nlist},PQ64+128", "IVF{nlist},PQ256x4fs,Refine(SQ8)")


def score_error(index: Any, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> float | None:
    """Standard deviation of (decoded vector . query - vector . query) over each query's true top 50, for codes
    that can decode (sa_decode); None for the others."""
    neighbours = vectors[truth.reshape(-1)]
    try:
        decoded = index.sa_decode(index.sa_encode(neighbours))
    except RuntimeError:
        return None
    repeated = np.repeat(queries, truth.shape[1], axis=0)
    return float(np.std(np.sum((decoded - neighbours) * repeated, axis=1)))


def measure(code: str, x: np.ndarray, sample: np.ndarray, q: np.ndarray, kinds: np.ndarray, truth: np.ndarray,
            nprobes: list[int]) -> list[dict[str, Any]]:
    l2 = code.startswith("L:")
    spec = code.removeprefix("L:").format(nlist=int(2 * np.sqrt(len(x))))
    started = time.perf_counter()
    index = faiss.index_factory(x.shape[1], spec, faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(x)
    build_s = time.perf_counter() - started
    ivf = faiss.try_extract_index_ivf(index)
    error = score_error(index, x, q, truth) if ivf is None else None
    size = round(len(faiss.serialize_index(index)) / len(x), 1)  # the index file (codes, ids, codebooks) a vector
    rows = []
    for nprobe in nprobes if ivf is not None else [0]:
        for k_factor in (10, 40) if hasattr(faiss.downcast_index(index), "k_factor") else [0]:
            if ivf is not None:
                ivf.nprobe = nprobe
            if k_factor:
                setattr(faiss.downcast_index(index), "k_factor", k_factor)  # noqa: B010 (SWIG attribute)
            found, lat = _one_by_one(index.search, q, K, f"{spec} nprobe {nprobe} k_factor {k_factor}")
            rows.append({"code": code, "factory": spec, "bytes_per_vector": size, "nprobe": nprobe,
                         "k_factor": k_factor,
                         "recall_at_10": round(recall_at(found, truth), 4),
                         "recall_at_10_image": round(recall_at(found[kinds == "image"], truth[kinds == "image"]), 4),
                         "recall_at_10_text": round(recall_at(found[kinds == "text"], truth[kinds == "text"]), 4),
                         "score_error_std": None if error is None else round(error, 5), "build_s": round(build_s, 1),
                         **summary_ms(lat)})
            log(json.dumps(rows[-1]))
    return rows


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--nprobe", type=_ints, default=[64, 128])
    parser.add_argument("--codes", help="';'-separated FAISS factory strings, {nlist} for 2*sqrt(count) lists, an L: "
                        "prefix for L2 (default: the table's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/refine-codes"))
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    corpus = synth.make_corpus(args.images, max(1, args.images * 3 // 10), seed=0)
    space = synth.VectorSpace(corpus, 512, salt=512)
    x = np.vstack(list(synth.make_vectors(corpus, space))).astype(np.float32)
    queries, kind_list = synth.make_queries(corpus, space, args.queries)
    q, kinds = np.ascontiguousarray(queries, dtype=np.float32), np.asarray(kind_list)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    scores, truth = flat.search(q, K)
    gaps = scores[:, 9] - scores[:, 10]
    sample = x[np.random.default_rng(1).choice(len(x), min(len(x), args.train), replace=False)]
    rows: list[dict[str, Any]] = []
    for code in args.codes.split(";") if args.codes else CODES:
        rows += measure(code, x, sample, q, kinds, truth, args.nprobe)
    result = {"command": "python -m bench.refine_codes " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "images": args.images, "queries": args.queries, "train": args.train,
              "gap_10_11": {"median": round(float(np.median(gaps)), 5),
                            "median_image": round(float(np.median(gaps[kinds == "image"])), 5),
                            "median_text": round(float(np.median(gaps[kinds == "text"])), 5)},
              "top10_score_mean": {"image": round(float(scores[kinds == "image", :10].mean()), 4),
                                   "text": round(float(scores[kinds == "text", :10].mean()), 4)},
              "rows": rows}
    finish(args.out, result, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
