"""Build the benchmark corpus: synthetic rows into the benchmark's own embedded PostgreSQL (COPY), the keyword
index, and the two FAISS bundles the API loads (CLIP image vectors and prompt vectors)."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from tqdm import tqdm

from bench import synth
from bench.common import log
from indexer.bundles import Bundle
from indexer.keyword.postgres import PostgresKeywordIndex
from promptdex import store
from promptdex.db import Database
from promptdex.settings import Settings

CLIP_MODEL_ID = "open_clip:ViT-B-32:random"  # what load_clip gives for ViT-B-32 with no pretrained weights
PROMPT_MODEL_ID = "sentence-transformers:all-MiniLM-L6-v2"
LOAD_CHUNK = 50_000


def open_pool(db: Database, size: int = 4) -> ConnectionPool[Any]:
    pool: ConnectionPool[Any] = ConnectionPool(db.url, min_size=1, max_size=size, open=False,
                                               kwargs={"row_factory": dict_row, "autocommit": True})
    pool.open(wait=True, timeout=30)
    return pool


def load_rows(db: Database, corpus: synth.Corpus) -> dict[str, Any]:
    """COPY every image row through `store.bulk_load(rows=...)`, then give each image a perceptual hash (what
    `promptdex index` stores) and analyse. Returns timings."""
    n = corpus.n_images
    t0 = time.perf_counter()
    with db.connect() as conn, tqdm(total=n, desc="COPY images", unit="img", file=sys.stderr) as bar:
        for start in range(0, n, LOAD_CHUNK):
            added = store.bulk_load(conn, rows=synth.copy_rows(corpus, corpus.seed, start=start,
                                                               stop=start + LOAD_CHUNK))
            conn.commit()
            bar.update(added)
    copy_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    log("perceptual hashes for every image, then VACUUM ANALYZE (minutes at 1M images, no progress to show)")
    with db.connect(autocommit=True) as conn:
        # phash: 64 random-looking bits per image; the API compares them to collapse near-duplicates
        conn.execute("UPDATE images SET phash = ('x' || substr(sha256, 1, 16))::bit(64)::bigint")
        conn.execute("VACUUM ANALYZE images")
        conn.execute("VACUUM ANALYZE prompts")
        row = conn.execute("SELECT count(*) AS n, (SELECT count(*) FROM prompts) AS p FROM images").fetchone()
        sizes = conn.execute("SELECT pg_total_relation_size('images') AS i, pg_total_relation_size('prompts') AS p, "
                             "pg_database_size(current_database()) AS d").fetchone()
    after_s = time.perf_counter() - t1
    assert row is not None and sizes is not None
    log(f"loaded {row['n']} images, {row['p']} prompts: COPY {copy_s:.0f} s, phash + analyse {after_s:.0f} s")
    return {"images": int(row["n"]), "prompts": int(row["p"]), "copy_s": round(copy_s, 1),
            "copy_images_per_s": round(n / copy_s), "phash_and_analyze_s": round(after_s, 1),
            "images_table_mib": round(sizes["i"] / 2**20), "prompts_table_mib": round(sizes["p"] / 2**20),
            "database_mib": round(sizes["d"] / 2**20)}


def build_keyword(db: Database, pool: ConnectionPool[Any]) -> dict[str, Any]:
    """`PostgresKeywordIndex.update`: the vocabulary of prompt words (what `promptdex index` does)."""
    keyword = PostgresKeywordIndex(pool.connection)
    t0 = time.perf_counter()
    with db.connect() as conn:
        total = keyword.pending(conn)
        with tqdm(total=total, desc="keyword vocabulary", unit="prompt", file=sys.stderr) as bar:
            added = keyword.update(conn, batch=20_000, progress=bar.update)
        conn.commit()
        terms = conn.execute("SELECT count(*) AS n FROM prompt_terms").fetchone()
        conn.execute("ANALYZE prompt_terms")
        conn.commit()
    seconds = time.perf_counter() - t0
    return {"prompts": added, "terms": int(terms["n"]) if terms else 0, "seconds": round(seconds, 1),
            "pg_trgm": keyword._pg_trgm}


def ids_in_corpus_order(db: Database, corpus: synth.Corpus) -> np.ndarray:
    """The database id of synthetic image i, for every i (bulk_load inserts in sha256 order, not image order)."""
    import hashlib

    with db.connect() as conn:
        found = {r["sha256"]: int(r["id"]) for r in conn.execute("SELECT id, sha256 FROM images").fetchall()}
    out = np.empty(corpus.n_images, dtype=np.int64)
    for i in range(corpus.n_images):
        out[i] = found[hashlib.sha256(f"synthetic-{corpus.seed}-{i}".encode()).hexdigest()]
    return out


def prompt_ids_in_corpus_order(db: Database, corpus: synth.Corpus) -> np.ndarray:
    with db.connect() as conn:
        found = {r["text"]: int(r["id"]) for r in conn.execute("SELECT id, text FROM prompts").fetchall()}
    return np.asarray([found[p] for p in corpus.prompts], dtype=np.int64)


def build_bundle(settings: Settings, name: str, kind: str, model: str, vectors: np.ndarray, ids: np.ndarray,
                 *, chunk: int = 10_000, desc: str = "") -> tuple[Bundle, dict[str, Any]]:
    """Add vectors to a new bundle in chunks of `chunk` (as `promptdex index` hands them over between
    checkpoints) with the configured exact threshold and approximate factory; then save. Returns timings."""
    s = settings.indexer
    path = settings.indexes_path / name
    bundle = Bundle.create(path, name=name, kind=kind, model=model, dim=vectors.shape[1])
    t0 = time.perf_counter()
    convert_s = 0.0
    with tqdm(total=len(ids), desc=desc or f"build {name}", unit="vec", file=sys.stderr) as bar:
        for start in range(0, len(ids), chunk):
            was = bundle.manifest.index_type
            c0 = time.perf_counter()
            bundle.add(vectors[start:start + chunk], ids[start:start + chunk], exact_threshold=s.exact_threshold,
                       approx_factory=s.approx_factory)
            if bundle.manifest.index_type != was:
                convert_s = time.perf_counter() - c0
            bar.update(min(chunk, len(ids) - start))
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    bundle.save()
    save_s = time.perf_counter() - t1
    size = sum(p.stat().st_size for p in path.iterdir() if p.name.startswith("index-"))
    return bundle, {"vectors": len(ids), "dim": int(vectors.shape[1]), "index_type": bundle.manifest.index_type,
                    "build_s": round(build_s, 1), "train_and_convert_s": round(convert_s, 1),
                    "save_s": round(save_s, 1), "file_mib": round(size / 2**20, 1)}
