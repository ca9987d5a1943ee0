"""The best a refine code can do: exhaustive recall@10 of each candidate code alone (no inverted lists, no fast-scan
stage) on the bench's synthetic CLIP-like vectors, against exact search.

    python -m bench.refine_codes --images 200000
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np

from bench import synth

CODES = ("PQ128np", "OPQ128,PQ128np", "PCAR256,SQ4", "SQ4", "PCAR128,SQ8", "PCAR192,SQ6", "PCAR160,SQ8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--codes", help="';'-separated FAISS factory strings (default: the table's)")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    corpus = synth.make_corpus(args.images, max(1, args.images * 3 // 10), seed=0)
    x = np.vstack(list(synth.make_vectors(corpus, synth.VectorSpace(corpus, 512, salt=512)))).astype(np.float32)
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), args.queries, replace=False)] + rng.normal(scale=0.01, size=(args.queries, 512))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    flat = faiss.IndexFlatIP(512)
    flat.add(x)
    _, truth = flat.search(q, 10)
    sample = x[rng.choice(len(x), args.train, replace=False)]
    for code in args.codes.split(";") if args.codes else CODES:
        started = time.perf_counter()
        index = faiss.index_factory(512, code, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.add(x)
        _, found = index.search(q, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist(), strict=True)])
        print(f"{code}\tbytes {index.sa_code_size()}\trecall@10 {recall:.3f}\t{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
