"""FAISS index bundles: a folder with the index and its manifest. Ids are database ids; saves are atomic."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from indexer.embedders.base import Vectors
from promptdex.errors import IndexMismatch, IndexMissing, InvalidInput, PromptdexError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
Ids = NDArray[np.int64]
# An approximate index with a refine stage ranks k * REFINE_K_FACTOR candidates from its compressed codes, then
# re-ranks them with the finer stored codes (see BENCHMARKS.md: 10 loses almost nothing against 20 at 1M).
REFINE_K_FACTOR = 10


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "faiss": str(faiss.__version__), "numpy": np.__version__}
    for package in ("promptdex", "torch", "open-clip-torch", "sentence-transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class Manifest:
    """What a bundle holds: written next to the index, read before it. `index_file` names the current index."""

    name: str
    kind: str
    model: str
    dim: int
    metric: str = "inner_product"
    count: int = 0
    index_type: str = "flat"
    index_file: str = ""
    generation: int = 0
    built_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    versions: dict[str, str] = field(default_factory=library_versions)
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def read_manifest(path: Path) -> Manifest | None:
    """The manifest of the bundle folder `path`, or None when there is no bundle there."""
    try:
        return Manifest.from_json(json.loads((path / MANIFEST).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise PromptdexError(f"{path / MANIFEST}: not a bundle manifest ({exc})") from exc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(dest: Path, write: Any) -> None:
    """Write via a temporary file in the same folder, fsync it, then rename over `dest`."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    write(tmp)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, dest)


def _read_index(file: Path, index_type: str, *, mmap: bool) -> Any:
    """Read an index file; memory-mapped, the big arrays stay in the file's pages (shared with the page cache):
    inverted lists of a plain IVF index, else the flat codes (exact vectors, a refine stage's codes)."""
    if not mmap:
        return faiss.read_index(str(file))
    ivf_lists = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    flat_codes = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | faiss.IO_FLAG_READ_ONLY
    order = [ivf_lists, flat_codes] if "IVF" in index_type and "Refine" not in index_type else [flat_codes, ivf_lists]
    try:
        return faiss.read_index(str(file), order[0])
    except RuntimeError:
        return faiss.read_index(str(file), order[1])


def _is_ivf(index: Any) -> bool:
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def _refine_of(index: Any) -> Any:
    """The IndexRefine inside an id map, or None."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
    return inner if isinstance(inner, faiss.IndexRefine) else None


class Bundle:
    """A FAISS index whose ids are database ids, with its manifest. Exact (flat) below `exact_threshold`
    vectors, approximate (`approx_factory`, IVF by default) above it; memory-mapped bundles are read-only."""

    def __init__(self, path: Path, manifest: Manifest, index: Any, *, read_only: bool = False) -> None:
        self.path, self.manifest, self.index, self.read_only = path, manifest, index, read_only

    @classmethod
    def create(cls, path: Path, *, name: str, kind: str, model: str, dim: int, generation: int = 0) -> Bundle:
        """A new empty exact bundle (nothing is written until `save`)."""
        manifest = Manifest(name=name, kind=kind, model=model, dim=dim, generation=generation)
        return cls(path, manifest, faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def open(cls, path: Path, *, model: str | None = None, mmap: bool = False, nprobe: int = 16) -> Bundle:
        """Load a bundle in memory or memory-mapped. With `model`, a bundle built by another model is refused."""
        manifest = read_manifest(path)
        if manifest is None:
            raise IndexMissing(f"no index bundle at {path}: run `promptdex index` first")
        if model is not None and manifest.model != model:
            raise IndexMismatch(
                f"bundle {manifest.name!r} at {path} was built with {manifest.model}, but the loaded embedder is "
                f"{model}: run `promptdex index --rebuild`, or load the model the bundle was built with")
        try:
            index = _read_index(path / manifest.index_file, manifest.index_type, mmap=mmap)
        except RuntimeError as exc:
            raise PromptdexError(f"bundle {manifest.name!r}: cannot read {path / manifest.index_file}: {exc}") from exc
        if index.d != manifest.dim or index.ntotal != manifest.count:
            raise PromptdexError(f"bundle {manifest.name!r} at {path}: the index has {index.ntotal} vectors of "
                                 f"dim {index.d}, its manifest says {manifest.count} of dim {manifest.dim}")
        bundle = cls(path, manifest, index, read_only=mmap)
        bundle.set_nprobe(nprobe)
        return bundle

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def set_nprobe(self, nprobe: int) -> None:
        """Search breadth: inverted lists probed (and the refine factor of an index with a refine stage)."""
        try:
            faiss.extract_index_ivf(self.index).nprobe = nprobe
        except RuntimeError:
            pass  # exact index: nothing to tune
        refine = _refine_of(self.index)
        if refine is not None:
            refine.k_factor = REFINE_K_FACTOR

    def ids(self) -> Ids:
        """Every id in the bundle."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def _check(self, vectors: Vectors) -> Vectors:
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise InvalidInput(f"bundle {self.manifest.name!r} holds {self.dim}-dimensional vectors, "
                               f"got an array of shape {array.shape}")
        return array

    def add(self, vectors: Vectors, ids: Ids | list[int], *, exact_threshold: int | None = None,
            approx_factory: str = "IVF{nlist},Flat") -> None:
        """Add vectors under their database ids; past `exact_threshold` vectors the bundle turns approximate."""
        if self.read_only:
            raise PromptdexError(f"bundle {self.manifest.name!r} is memory-mapped (read-only); open it in memory")
        array, id_array = self._check(vectors), np.asarray(ids, dtype=np.int64)
        if len(id_array) != len(array):
            raise InvalidInput(f"{len(array)} vectors but {len(id_array)} ids")
        if len(array) == 0:
            return
        self.index.add_with_ids(array, id_array)
        if exact_threshold is not None and self.manifest.index_type == "flat" and self.count > exact_threshold:
            self.make_approximate(approx_factory)

    def vectors(self) -> tuple[Ids, Vectors]:
        """(ids, vectors) of every entry; only exact bundles keep the vectors themselves."""
        if self.manifest.index_type != "flat":
            raise PromptdexError(f"bundle {self.manifest.name!r} is approximate: its vectors are not stored exactly")
        flat = faiss.downcast_index(self.index.index)
        return self.ids(), flat.reconstruct_n(0, self.count)

    def make_approximate(self, approx_factory: str = "IVF{nlist},Flat") -> None:
        """Rebuild as an approximate index (trained on the vectors held now), keeping ids.

        `approx_factory` is a FAISS factory string; `{nlist}` becomes 2*sqrt(count) inverted lists and `{pq}`
        dim/2 product-quantizer sub-vectors (2 dimensions each)."""
        ids, vectors = self.vectors()
        nlist = max(1, min(int(2 * math.sqrt(len(ids))), len(ids) // 39))  # FAISS wants >= 39 points a list
        spec = approx_factory.format(nlist=nlist, pq=max(1, self.dim // 2))
        index = faiss.index_factory(self.dim, f"IDMap2,{spec}", faiss.METRIC_INNER_PRODUCT)
        sample = vectors if len(vectors) <= 256 * nlist else vectors[np.random.default_rng(0).choice(
            len(vectors), 256 * nlist, replace=False)]
        index.train(sample)
        index.add_with_ids(vectors, ids)
        self.index = index
        self.manifest.index_type = spec
        refine = _refine_of(index)
        if refine is not None:
            refine.k_factor = REFINE_K_FACTOR
        logger.info("bundle %s is now approximate (%s, %d vectors)", self.manifest.name, spec, len(ids))

    def remove(self, ids: Ids | list[int]) -> int:
        """Remove entries by id; returns how many were removed."""
        if self.read_only:
            raise PromptdexError(f"bundle {self.manifest.name!r} is memory-mapped (read-only)")
        if self.manifest.index_type == "flat":
            return int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))
        return self._remove_by_rebuild(np.asarray(ids, dtype=np.int64))

    def _remove_by_rebuild(self, ids: Ids) -> int:
        """Approximate indexes under the id map cannot remove in place (IVF keeps the old positions, a refine
        stage cannot remove at all): re-add every other vector, as stored, to an empty copy of the trained index."""
        all_ids = self.ids()
        keep = ~np.isin(all_ids, ids)
        removed = int((~keep).sum())
        if removed == 0:
            return 0
        inner = faiss.downcast_index(self.index.index)
        if _is_ivf(inner):
            faiss.extract_index_ivf(inner).make_direct_map()
        vectors = inner.reconstruct_n(0, inner.ntotal)[keep]
        fresh = faiss.clone_index(inner)
        fresh.reset()
        if _is_ivf(fresh):
            faiss.extract_index_ivf(fresh).make_direct_map(False)  # the copy needs no direct map
        index = faiss.IndexIDMap2(fresh)
        index.add_with_ids(vectors, all_ids[keep])
        self.index = index
        return removed

    def search(self, vector: Vectors, k: int) -> tuple[Ids, NDArray[np.float32]]:
        """The ids and inner-product scores of the `k` nearest entries to one vector, best first."""
        ids, scores = self.search_batch(np.asarray(vector, dtype=np.float32).reshape(1, -1), k)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def search_batch(self, vectors: Vectors, k: int) -> tuple[Ids, NDArray[np.float32]]:
        """(ids, scores) arrays of shape (n, k) for n query vectors; missing neighbours have id -1."""
        queries = self._check(vectors)
        if k < 1:
            raise InvalidInput(f"k must be at least 1 (got {k})")
        if self.count == 0:
            return np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
        scores, ids = self.index.search(queries, min(k, self.count))
        return ids.astype(np.int64), scores.astype(np.float32)

    def save(self) -> Manifest:
        """Write the index beside the old one, fsync, rename; then the manifest the same way (the commit point)."""
        if self.read_only:
            raise PromptdexError(f"bundle {self.manifest.name!r} is memory-mapped (read-only)")
        self.path.mkdir(parents=True, exist_ok=True)
        on_disk = read_manifest(self.path)
        generation = max(self.manifest.generation, on_disk.generation if on_disk else 0) + 1
        index_file = f"index-{generation:06d}.faiss"
        _write_atomic(self.path / index_file, lambda tmp: faiss.write_index(self.index, str(tmp)))
        self.manifest.generation, self.manifest.index_file = generation, index_file
        self.manifest.count, self.manifest.updated_at = self.count, _now()
        self.manifest.versions = library_versions()
        text = json.dumps(self.manifest.to_json(), indent=1)
        _write_atomic(self.path / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        _fsync_dir(self.path)
        for old in self.path.iterdir():
            if old.name != index_file and (old.name.startswith("index-") or old.name.endswith(".tmp")):
                old.unlink(missing_ok=True)  # readers that mapped an old file keep it until they close it
        logger.info("saved bundle %s: %d vectors, generation %d", self.manifest.name, self.count, generation)
        return self.manifest
