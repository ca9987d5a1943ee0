"""Precomputed CLIP image embeddings (clip-retrieval / LAION style) for `promptdex import-dataset --embeddings DIR`.

DIR holds `.npy` files of vectors (`img_emb/img_emb_0.npy`, ... or beside the tables) and, for each, a metadata
parquet with one row per vector in the same order (`metadata/metadata_0.parquet`, ...), paired by the number in their
names. A row's key column (`key`, `image_name`, `image_path` or `file_name`; `--embeddings-key` to choose) names the
image; it is matched to a dataset item by file name without suffix (`0001.jpg`, `/data/x/0001.jpg` and `0001` are
one image). The vectors go straight into the image bundle, with the crash-safe order `promptdex index` uses (the
bundle saved, then its new ids recorded), refused unless `--embeddings-model` is the bundle's model (or, with no
bundle yet, the configured CLIP model) and the dimension is its dimension. Images the embeddings do not cover are
left for `promptdex index`. Memory: the vectors are memory-mapped; the keys are kept as 8-byte hashes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from indexer.bundles import Bundle, Verify, layout_factory, read_manifest, sweep, verify_bundle
from indexer.datasets.core import DatasetError
from indexer.indexing import _LOCK, IMAGE_BUNDLE, SPECS, BundleReport, _commit, reconcile
from indexer.keyword.base import rows
from promptdex.errors import PromptdexError
from promptdex.settings import Settings

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
KEY_COLUMNS = ("key", "image_name", "image_path", "file_name")
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def norm_key(value: str) -> str:
    """An image's name as embeddings and items are matched: the file name up to its first dot."""
    return Path(str(value)).name.split(".", 1)[0]


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(norm_key(value).encode(), digest_size=8).digest(), "little", signed=True)


def _number(path: Path) -> int:
    match = _NUMBER.search(path.stem)
    return int(match.group(1)) if match else -1


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    vectors = sorted((root / "img_emb").glob("*.npy")) if (root / "img_emb").is_dir() else sorted(root.glob("*.npy"))
    tables = (sorted((root / "metadata").glob("*.parquet")) if (root / "metadata").is_dir()
              else sorted(root.glob("*.parquet")))
    if not vectors:
        raise DatasetError(f"--embeddings {root}: no .npy files (expected img_emb/img_emb_N.npy, or .npy files "
                           "beside their metadata parquet)")
    by_number = {_number(t): t for t in tables}
    pairs = []
    for file in vectors:
        table = by_number.get(_number(file))
        if table is None:
            raise DatasetError(f"{file}: no metadata parquet with the same number beside it (expected "
                               f"metadata/metadata_{_number(file)}.parquet): its vectors cannot be matched to images")
        pairs.append((file, table))
    return pairs


@dataclass(frozen=True)
class EmbeddingModel:
    model_id: str
    dim: int


class Embeddings:
    """The vectors of a clip-retrieval folder, looked up by image key."""

    def __init__(self, root: Path, *, key_column: str | None = None) -> None:
        import pyarrow.parquet as pq

        self.root = root.expanduser().absolute()
        if not self.root.is_dir():
            raise DatasetError(f"--embeddings {self.root}: no such folder")
        self.files: list[np.ndarray[Any, Any]] = []
        hashes, file_of, row_of = [], [], []
        self.dim = 0
        for number, (file, table) in enumerate(_pairs(self.root)):
            try:
                vectors = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{file}: not a readable .npy file ({exc})") from None
            if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
                raise DatasetError(f"{file}: expected a 2-D array of float vectors, found shape {vectors.shape} "
                                   f"of {vectors.dtype}")
            if self.dim and vectors.shape[1] != self.dim:
                raise DatasetError(f"{file}: vectors of dimension {vectors.shape[1]}, but the files before it hold "
                                   f"dimension {self.dim}")
            self.dim = int(vectors.shape[1])
            meta = pq.ParquetFile(table)
            rows = meta.metadata.num_rows
            if rows != vectors.shape[0]:
                raise DatasetError(f"{file} holds {vectors.shape[0]} vectors but {table} has {rows} rows: they must be "
                                   "in the same order, one row per vector")
            names = list(meta.schema_arrow.names)
            column = key_column or next((c for c in KEY_COLUMNS if c in names), None)
            if column is None or column not in names:
                raise DatasetError(f"{table}: no column {column or KEY_COLUMNS[0]!r} naming each vector's image "
                                   f"(--embeddings-key); its columns are {', '.join(names)}")
            keys = meta.read(columns=[column]).column(column).to_pylist()
            hashes.append(np.fromiter((_hash(str(k)) for k in keys), np.int64, count=len(keys)))
            file_of.append(np.full(len(keys), number, np.int32))
            row_of.append(np.arange(len(keys), dtype=np.int64))
            self.files.append(vectors)
        all_hashes = np.concatenate(hashes)
        order = np.argsort(all_hashes, kind="stable")
        self.hashes = all_hashes[order]
        self.file_of, self.row_of = np.concatenate(file_of)[order], np.concatenate(row_of)[order]
        self.count = int(all_hashes.size)

    def vector(self, key: str) -> np.ndarray[Any, Any] | None:
        """The L2-normalised vector of the image `key` names, or None."""
        target = _hash(key)
        at = int(np.searchsorted(self.hashes, target))
        if at >= self.count or self.hashes[at] != target:
            return None
        vector = np.asarray(self.files[int(self.file_of[at])][int(self.row_of[at])], dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else None


def bundle_model(settings: Settings) -> EmbeddingModel:
    """The image bundle's model and dimension, or (no bundle yet) the configured CLIP model's (loaded for it)."""
    manifest = read_manifest(settings.indexes_path / IMAGE_BUNDLE)
    if manifest is not None:
        return EmbeddingModel(manifest.model, manifest.dim)
    from indexer.embedders import clip_from_settings

    embedder = clip_from_settings(settings)
    return EmbeddingModel(embedder.model_id, embedder.dim)


class EmbeddingSink:
    """Adds precomputed vectors to the image bundle during an import (`core.VectorSink`). Holds `promptdex index`'s
    lock from `open` to `close`, so the two never write the bundle at once."""

    def __init__(self, conn: Conn, settings: Settings, embeddings: Embeddings, model: str) -> None:
        self.settings, self.embeddings = settings, embeddings
        self.spec = SPECS[0]
        self.path = settings.indexes_path / IMAGE_BUNDLE
        self.unsaved: list[int] = []
        self.uncovered = 0
        locked = rows(conn, "SELECT pg_try_advisory_lock(%s) AS ok", (_LOCK,))
        if not locked or not locked[0]["ok"]:
            raise PromptdexError("another `promptdex index` (or an import with --embeddings) is running on this "
                                 "database; wait for it to finish")
        try:
            target = bundle_model(settings)
            if model != target.model_id:
                where = ("the image bundle at " + str(self.path)) if read_manifest(self.path) else \
                    "the configured CLIP model (PROMPTDEX_INDEXER__CLIP_MODEL, __CLIP_PRETRAINED)"
                raise DatasetError(f"--embeddings-model {model}: {where} is {target.model_id}; vectors of another "
                                   "model cannot be searched beside its vectors (embed the images with "
                                   "`promptdex index` instead, or configure the model the embeddings came from)")
            if embeddings.dim != target.dim:
                raise DatasetError(f"--embeddings {embeddings.root}: vectors of dimension {embeddings.dim}, but "
                                   f"{target.model_id} makes {target.dim}")
            sweep(self.path)
            verify_bundle(self.path, mode=Verify.FULL)
            if read_manifest(self.path) is not None:
                self.bundle = Bundle.open(self.path, model=target.model_id, nprobe=settings.indexer.nprobe,
                                          verify=Verify.QUICK)
            else:
                self.bundle = Bundle.create(self.path, name=IMAGE_BUNDLE, kind="image", model=target.model_id,
                                            dim=target.dim)
            reconcile(conn, self.spec, self.bundle, BundleReport(IMAGE_BUNDLE, model=target.model_id))
        except BaseException:
            self._unlock(conn)
            raise

    def _unlock(self, conn: Conn) -> None:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
        except psycopg.Error:  # the connection is gone: so is its lock
            pass

    def add(self, conn: Conn, pairs: list[tuple[int, str]]) -> int:
        if not pairs:
            return 0
        ids = [i for i, _ in pairs]
        found = rows(conn, "SELECT item_id FROM index_entries WHERE bundle = %s AND item_id = ANY(%s)",
                     (IMAGE_BUNDLE, ids))
        known = {int(r["item_id"]) for r in found} | set(self.unsaved)
        new_ids, vectors = [], []
        for image_id, key in pairs:
            if image_id in known:
                continue
            vector = self.embeddings.vector(key)
            if vector is None:
                self.uncovered += 1
                continue
            known.add(image_id)
            new_ids.append(image_id)
            vectors.append(vector)
        if new_ids:
            s = self.settings.indexer
            self.bundle.add(np.stack(vectors), new_ids, exact_threshold=s.exact_threshold,
                            approx_factory=layout_factory(s.bundle_layout, s.approx_factory))
            self.unsaved += new_ids
        return len(new_ids)

    def due(self) -> bool:
        return len(self.unsaved) >= self.settings.indexer.checkpoint_every

    def commit(self, conn: Conn) -> None:
        if self.unsaved or read_manifest(self.path) is None:
            _commit(conn, self.spec, self.bundle, self.unsaved)
            self.unsaved = []

    def close(self, conn: Conn) -> None:
        self._unlock(conn)
