"""FAISS index bundles: a folder with the index and its manifest. Ids are database ids; saves are atomic.

The manifest records the index file's size and sha256, so a damaged file is found before FAISS reads it (a
truncated memory-mapped file would otherwise crash the process on first touch). Opening checks the size and the
digest of a few sampled windows (`Verify.QUICK`, a few MiB whatever the size) or the whole file (`Verify.FULL`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import weakref
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from importlib import metadata
from io import BufferedReader
from pathlib import Path
from typing import IO, Any, TypeVar

import faiss
import numpy as np
from numpy.typing import NDArray

from indexer.embedders.base import Vectors
from promptdex.errors import IndexCorrupt, IndexMismatch, IndexMissing, InvalidInput, PromptdexError
from promptdex.storage import write_atomic as _write_atomic  # a module name the fault tests patch

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 2  # 2: the manifest holds the index file's size, sha256 and sampled digest; 1 (no checksum) still opens
REBUILD = "run `promptdex index --rebuild` to rebuild it from the database"
_INDEX_NAME = re.compile(r"index-(\d{6,})\.faiss")
_HEAD = 1 << 20  # the quick check reads the first and last MiB (headers, id map) ...
_WINDOW, _WINDOWS = 1 << 16, 8  # ... and 8 windows of 64 KiB spread between them
Ids = NDArray[np.int64]
T = TypeVar("T")
# An approximate index with a refine stage ranks k * REFINE_K_FACTOR candidates from its compressed codes, then
# re-ranks them with the finer stored codes (see BENCHMARKS.md: 10 loses almost nothing against 20 at 1M).
REFINE_K_FACTOR = 10
# ~170 bytes a 512-d vector: 32 of fast-scan codes on a 256-d rotation, dim/4 of refine codes (bench/compact.py)
COMPACT_FACTORY = "OPQ64_256,IVF{nlist},PQ64x4fs,Refine(PQ{refine}np)"  # np: no polysemous training (slow, unused here)
RETRAIN_GROWTH = 4  # an approximate bundle holding more than this many times its training count is retrained
# Training vectors: FAISS's k-means uses at most 256 a list; past TRAIN_CAP (512 MiB of 512-d float32) fewer, but
# never under 64 a list (FAISS wants 39).
TRAIN_PER_LIST, TRAIN_MIN_PER_LIST, TRAIN_CAP = 256, 64, 262_144
READD_CHUNK = 65_536  # vectors decoded at a time when re-adding an index's vectors to a new one (128 MiB at 512-d)


def layout_factory(layout: str, standard: str) -> str:
    """The FAISS factory string of a bundle layout: `standard` (the configured factory) or `compact`."""
    return COMPACT_FACTORY if layout == "compact" else standard


def outgrown(manifest: Manifest, count: int) -> bool:
    """True when an approximate bundle of `count` vectors has outgrown the inverted lists it was trained with
    (older manifests record no training count: never)."""
    return manifest.index_type != "flat" and 0 < manifest.trained_count * RETRAIN_GROWTH < count


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
    index_bytes: int = 0
    index_sha256: str = ""
    index_probe: str = ""  # sha256 of the size and the windows the quick check reads
    runtimes: list[str] = field(default_factory=list)  # what ran the encoder that filled it (for the record only)
    trained_count: int = 0  # vectors the approximate index was trained on (0: exact, or an older manifest)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        runtimes = known.get("runtimes")
        known["runtimes"] = sorted({str(r) for r in runtimes}) if isinstance(runtimes, list) else []
        return cls(**known)

    def note_runtime(self, runtime: str) -> None:
        """Record that `runtime` ran the encoder that added vectors (a bundle serves under any runtime)."""
        if runtime and runtime not in self.runtimes:
            self.runtimes = sorted({*self.runtimes, runtime})


_FIELD_TYPES: dict[str, type] = {"name": str, "kind": str, "model": str, "dim": int, "count": int,
                                 "index_type": str, "index_file": str, "generation": int, "index_bytes": int,
                                 "index_sha256": str, "index_probe": str,
                                 "trained_count": int}


def _manifest_problem(data: Any) -> str | None:
    """What makes `data` not a manifest this code can use, or None."""
    if not isinstance(data, dict):
        return "it is not a JSON object"
    for name in ("name", "kind", "model", "dim", "index_file"):
        if name not in data:
            return f"it has no {name!r} field"
    for name, kind in _FIELD_TYPES.items():
        value = data.get(name)
        negative = type(value) is int and value < 0
        if value is not None and (type(value) is not kind or negative):
            return f"its {name!r} field is not a {'non-negative integer' if kind is int else 'string'}"
    if not _INDEX_NAME.fullmatch(data["index_file"]):
        return "its 'index_file' is not a file name like index-000001.faiss"
    return None


def set_search_threads(threads: int) -> None:
    """Threads of one FAISS call (OpenMP). The API sets 1: it runs many searches at once, and OpenMP's pool would
    only fight the other requests for the same cores."""
    faiss.omp_set_num_threads(threads)


def read_manifest(path: Path) -> Manifest | None:
    """The manifest of the bundle folder `path`, or None when there is no bundle there (IndexCorrupt if damaged)."""
    file = path / MANIFEST
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise IndexCorrupt(f"{file} is damaged (not UTF-8 text): {REBUILD}") from exc
    except OSError as exc:
        raise IndexCorrupt(f"{file} cannot be read ({exc.strerror or type(exc).__name__}): check that the account "
                           f"running promptdex may read it, or {REBUILD}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IndexCorrupt(f"{file} is damaged: not a bundle manifest ({exc.msg}, line {exc.lineno} column "
                           f"{exc.colno}: truncated or overwritten): {REBUILD}") from exc
    problem = _manifest_problem(data)
    if problem is not None:
        raise IndexCorrupt(f"{file} is not a bundle manifest ({problem}): {REBUILD}")
    return Manifest.from_json(data)


def highest_generation(path: Path) -> int:
    """The highest generation the folder's manifest or any file in it (committed or not) was given: a save takes a
    higher one, so it never writes over a file that a reader may have mapped."""
    found = 0
    try:
        manifest = read_manifest(path)
        found = manifest.generation if manifest else 0
    except IndexCorrupt:
        pass  # damaged: the file names still tell
    try:
        names = [entry.name for entry in path.iterdir()]
    except OSError:
        return found
    for name in names:
        match = re.search(r"index-(\d+)\.faiss", name)
        if match:
            found = max(found, int(match.group(1)))
    return found


def sweep(path: Path) -> list[str]:
    """Remove what interrupted saves left in a bundle folder: temporary files, and index files its manifest does not
    name (none when the manifest is damaged: a rebuild replaces them). Only with no save running (the index lock)."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return []
    try:
        manifest = read_manifest(path)
    except IndexCorrupt:
        manifest = None
    removed = []
    for entry in entries:
        orphan = manifest is not None and _INDEX_NAME.fullmatch(entry.name) and entry.name != manifest.index_file
        if entry.is_file() and (entry.name.endswith(".tmp") or orphan):
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    if removed:
        logger.warning("%s: removed %d files an interrupted save left: %s", path, len(removed), ", ".join(removed))
    return removed


class Verify(StrEnum):
    """How much of an index file to check against its manifest before reading it."""

    QUICK = "quick"  # the size, and the sha256 of the first and last MiB and 8 windows between: a few MiB read
    FULL = "full"  # the sha256 of the whole file (streamed): about 0.7 s per 500 MB from the page cache


def _windows(size: int) -> list[tuple[int, int]]:
    """(offset, length) of what the quick check reads: all of a small file."""
    if size <= 2 * _HEAD + _WINDOWS * _WINDOW:
        return [(0, size)]
    spread = [((size * i) // (_WINDOWS + 1), _WINDOW) for i in range(1, _WINDOWS + 1)]
    return [(0, _HEAD), *spread, (size - _HEAD, _HEAD)]


def _probe(fd: int, size: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    for offset, length in _windows(size):
        while length > 0:
            chunk = os.pread(fd, min(length, _HEAD), offset)
            if not chunk:
                break  # shorter than `size`: the digest differs
            digest.update(chunk)
            offset, length = offset + len(chunk), length - len(chunk)
    return digest.hexdigest()


def _check_file(handle: BufferedReader, file: Path, manifest: Manifest, mode: Verify) -> None:
    """Raise IndexCorrupt, naming the file, when the open index file is not the one the manifest describes."""
    if not manifest.index_sha256:
        logger.info("%s has no checksum in its manifest (written by an older promptdex): it gets one at the next "
                    "save", file)
        return
    damaged = f"bundle {manifest.name!r}: {file} is damaged"
    size = os.fstat(handle.fileno()).st_size
    if size != manifest.index_bytes:
        raise IndexCorrupt(f"{damaged}: it is {size} bytes, its manifest says {manifest.index_bytes} (truncated or "
                           f"overwritten): {REBUILD}")
    if mode is Verify.QUICK:
        ok = _probe(handle.fileno(), size) == manifest.index_probe
    else:
        handle.seek(0)
        ok = hashlib.file_digest(handle, "sha256").hexdigest() == manifest.index_sha256
    if not ok:
        raise IndexCorrupt(f"{damaged}: its content does not match the sha256 checksum in its manifest: {REBUILD}")


def _open_index_file(file: Path, manifest: Manifest) -> BufferedReader:
    try:
        return file.open("rb")
    except FileNotFoundError as exc:
        raise IndexCorrupt(f"bundle {manifest.name!r}: {file}, named by its manifest, is missing: {REBUILD}") from exc
    except OSError as exc:
        raise IndexCorrupt(f"bundle {manifest.name!r}: {file} cannot be read ({exc.strerror}): check that the "
                           f"account running promptdex may read it, or {REBUILD}") from exc


def verify_bundle(path: Path, *, mode: Verify = Verify.FULL) -> Manifest | None:
    """The manifest of the bundle at `path` once its index file checks out (None: no bundle); IndexCorrupt if not."""
    manifest = read_manifest(path)
    if manifest is None:
        return None
    file = path / manifest.index_file
    with _open_index_file(file, manifest) as handle:
        _check_file(handle, file, manifest, mode)
    if not manifest.index_sha256:
        Bundle.open(path, mmap=True)  # no checksum to compare: FAISS reading it is the check
    return manifest


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


@dataclass(frozen=True)
class _Written:
    size: int
    sha256: str
    probe: str


def _write_index(index: Any, handle: IO[bytes]) -> _Written:
    """Serialise `index` into `handle`, hashing on the way (one pass; the file's own write errors surface as
    OSError, not as FAISS's C++ text)."""
    digest = hashlib.sha256()

    def write(chunk: bytes) -> int:
        handle.write(chunk)
        digest.update(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(write, _HEAD))  # type: ignore[attr-defined]
    handle.flush()
    size = handle.tell()
    return _Written(size, digest.hexdigest(), _probe(handle.fileno(), size))


def _read_index(file: Path, manifest: Manifest, *, mmap: bool) -> Any:
    """Read an index file; memory-mapped, the big arrays stay in the file's pages (shared with the page cache):
    inverted lists of a plain IVF index, else the flat codes (exact vectors, a refine stage's codes)."""
    ivf_lists = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    flat_codes = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | faiss.IO_FLAG_READ_ONLY
    plain_ivf = "IVF" in manifest.index_type and "Refine" not in manifest.index_type
    order = ([ivf_lists, flat_codes] if plain_ivf else [flat_codes, ivf_lists]) if mmap else [0]
    for flags in order:
        try:
            return faiss.read_index(str(file), flags)
        except (RuntimeError, MemoryError) as exc:
            logger.debug("FAISS could not read %s with flags %d: %s", file, flags, exc)  # C++ text: for developers
    written = manifest.versions.get("faiss", "an unknown version")
    raise IndexCorrupt(f"bundle {manifest.name!r}: FAISS {faiss.__version__} cannot read {file} (written by FAISS "
                       f"{written}): the file is damaged or from an incompatible FAISS: {REBUILD}")


@dataclass(frozen=True)
class _Mapped:
    """The memory-mapped file of an open bundle, kept open to notice a change in place (which would crash a search
    that touches a page past a new end of file)."""

    file: Path
    handle: BufferedReader
    size: int
    mtime_ns: int


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


def _train_positions(count: int, nlist: int) -> Ids:
    """Positions of the vectors an index of `nlist` lists is trained on (a fixed sample; all of a small bundle)."""
    size = min(count, TRAIN_PER_LIST * nlist, max(TRAIN_CAP, TRAIN_MIN_PER_LIST * nlist))
    if size >= count:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.random.default_rng(0).choice(count, size, replace=False)).astype(np.int64)


def _decoder(inner: Any) -> Any:
    """A function from positions in `inner` (the index under the id map) to its vectors as stored: the refine
    stage's codes where there is one (SQ8: cosine ~0.9999 to the original; PQ: coarser), else the index's own
    (an IVF gets a direct map for it)."""
    refine = faiss.downcast_index(inner.refine_index) if isinstance(inner, faiss.IndexRefine) else None
    source = refine if refine is not None else inner
    if refine is None and _is_ivf(inner):
        faiss.extract_index_ivf(inner).make_direct_map()

    def decode(positions: Ids) -> Vectors:
        if len(positions) == 0:
            return np.zeros((0, inner.d), np.float32)
        first = int(positions[0])
        if int(positions[-1]) - first == len(positions) - 1:  # a run: one call
            return np.asarray(source.reconstruct_n(first, len(positions)), dtype=np.float32)
        return np.asarray(source.reconstruct_batch(np.ascontiguousarray(positions, dtype=np.int64)), np.float32)

    return decode


def _readd(index: Any, decode: Any, ids: Ids, chunk: int) -> None:
    """Add the vectors `decode` gives for positions 0..len(ids)-1 to `index` under `ids`, `chunk` at a time."""
    for start in range(0, len(ids), chunk):
        at = np.arange(start, min(start + chunk, len(ids)), dtype=np.int64)
        index.add_with_ids(decode(at), ids[at])


class Bundle:
    """A FAISS index whose ids are database ids, with its manifest. Exact (flat) below `exact_threshold`
    vectors, approximate (`approx_factory`, IVF by default) above it; memory-mapped bundles are read-only."""

    def __init__(self, path: Path, manifest: Manifest, index: Any, *, read_only: bool = False) -> None:
        self.path, self.manifest, self.index, self.read_only = path, manifest, index, read_only
        self._mapped: _Mapped | None = None

    @classmethod
    def create(cls, path: Path, *, name: str, kind: str, model: str, dim: int, generation: int = 0) -> Bundle:
        """A new empty exact bundle (nothing is written until `save`)."""
        manifest = Manifest(name=name, kind=kind, model=model, dim=dim, generation=generation)
        return cls(path, manifest, faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def open(cls, path: Path, *, model: str | None = None, mmap: bool = False, nprobe: int = 16,
             nprobe_share: float = 0.0, verify: Verify | None = None) -> Bundle:
        """Load a bundle in memory or memory-mapped, after checking its index file against the manifest (`verify`:
        FULL in memory, where the whole file is read anyway; QUICK memory-mapped). With `model`, a bundle built by
        another model is refused. A damaged or unreadable bundle raises IndexCorrupt naming the file."""
        manifest = read_manifest(path)
        if manifest is None:
            raise IndexMissing(f"no index bundle at {path}: run `promptdex index` first")
        if model is not None and manifest.model != model:
            raise IndexMismatch(
                f"bundle {manifest.name!r} at {path} was built with {manifest.model}, but the loaded embedder is "
                f"{model}: run `promptdex index --rebuild`, or load the model the bundle was built with")
        file = path / manifest.index_file
        handle = _open_index_file(file, manifest)
        try:
            _check_file(handle, file, manifest, verify or (Verify.QUICK if mmap else Verify.FULL))
            index = _read_index(file, manifest, mmap=mmap)
            stat = os.fstat(handle.fileno())
            if mmap and os.stat(file).st_ino != stat.st_ino:
                raise IndexCorrupt(f"bundle {manifest.name!r}: {file} was replaced while it was being opened "
                                   "(only `promptdex index` should write bundles): open it again")
        except BaseException:
            handle.close()
            raise
        if index.d != manifest.dim or index.ntotal != manifest.count:
            handle.close()
            raise IndexCorrupt(f"bundle {manifest.name!r}: {file} has {index.ntotal} vectors of dim {index.d}, its "
                               f"manifest says {manifest.count} of dim {manifest.dim}: {REBUILD}")
        bundle = cls(path, manifest, index, read_only=mmap)
        if mmap:
            bundle._mapped = _Mapped(file, handle, stat.st_size, stat.st_mtime_ns)
            weakref.finalize(bundle, handle.close)
        else:
            handle.close()
        bundle.set_nprobe(nprobe, share=nprobe_share)
        return bundle

    def check_intact(self) -> None:
        """For a memory-mapped bundle: raise IndexCorrupt when its file was changed in place since it was opened
        (one fstat). Saves never do that, they write a new file; something else did."""
        mapped = self._mapped
        if mapped is None:
            return
        stat = os.fstat(mapped.handle.fileno())
        if (stat.st_size, stat.st_mtime_ns) != (mapped.size, mapped.mtime_ns):
            raise IndexCorrupt(f"bundle {self.manifest.name!r}: {mapped.file} was changed in place while it was in "
                               f"use (now {stat.st_size} bytes, it was {mapped.size}): {REBUILD}")

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def set_nprobe(self, nprobe: int, *, share: float = 0.0) -> None:
        """Search breadth: inverted lists probed, `nprobe` or `share` of the lists if that is more (a bundle retrained
        with more, smaller lists needs more of them for the same recall), and the refine factor of a refine stage."""
        try:
            ivf = faiss.extract_index_ivf(self.index)
        except RuntimeError:
            pass  # exact index: nothing to tune
        else:
            ivf.nprobe = min(int(ivf.nlist), max(nprobe, math.ceil(share * ivf.nlist)))
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
        dim/2 product-quantizer sub-vectors (2 dimensions each), `{refine}` dim/4 (the compact layout's refine)."""
        ids, vectors = self.vectors()
        spec, index = self._new_index(approx_factory, len(ids))
        index.train(vectors[_train_positions(len(ids), faiss.extract_index_ivf(index).nlist)])
        index.add_with_ids(vectors, ids)
        self._adopt(index, spec, len(ids))
        logger.info("bundle %s is now approximate (%s, %d vectors)", self.manifest.name, spec, len(ids))

    def retrain(self, approx_factory: str, *, chunk: int = READD_CHUNK) -> None:
        """Train a new approximate index for the count held now (new inverted lists, new OPQ and PQ codebooks) and
        re-add every vector under its id. The vectors are decoded from the old index's finest codes (the refine
        stage's; an IVF's own otherwise): the training sample, then `chunk` at a time, so only the sample and one
        chunk are ever float32 in memory. Nothing is written until `save`, which commits it like any save."""
        if self.read_only:
            raise PromptdexError(f"bundle {self.manifest.name!r} is memory-mapped (read-only); open it in memory")
        if self.manifest.index_type == "flat":
            raise PromptdexError(f"bundle {self.manifest.name!r} is exact: there is nothing to retrain")
        ids, decode = self.ids(), _decoder(faiss.downcast_index(self.index.index))
        was = self.manifest.index_type
        spec, index = self._new_index(approx_factory, len(ids))
        index.train(decode(_train_positions(len(ids), faiss.extract_index_ivf(index).nlist)))
        _readd(index, decode, ids, chunk)
        self._adopt(index, spec, len(ids))
        logger.info("bundle %s retrained: %s -> %s (%d vectors)", self.manifest.name, was, spec, len(ids))

    def _new_index(self, approx_factory: str, count: int) -> tuple[str, Any]:
        nlist = max(1, min(int(2 * math.sqrt(count)), count // 39))  # FAISS wants >= 39 points a list
        spec = approx_factory.format(nlist=nlist, pq=max(1, self.dim // 2), refine=max(1, self.dim // 4))
        return spec, faiss.index_factory(self.dim, f"IDMap2,{spec}", faiss.METRIC_INNER_PRODUCT)

    def _adopt(self, index: Any, spec: str, trained_count: int) -> None:
        self.index = index
        self.manifest.index_type = spec
        self.manifest.trained_count = trained_count
        refine = _refine_of(index)
        if refine is not None:
            refine.k_factor = REFINE_K_FACTOR

    def remove(self, ids: Ids | list[int]) -> int:
        """Remove entries by id; returns how many were removed."""
        if self.read_only:
            raise PromptdexError(f"bundle {self.manifest.name!r} is memory-mapped (read-only)")
        if self.manifest.index_type == "flat":
            return int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))
        return self._remove_by_rebuild(np.asarray(ids, dtype=np.int64))

    def _remove_by_rebuild(self, ids: Ids) -> int:
        """Approximate indexes under the id map cannot remove in place (IVF keeps the old positions, a refine
        stage cannot remove at all): re-add every other vector, as stored, to an empty copy of the trained index
        (decoded a chunk at a time)."""
        all_ids = self.ids()
        keep = np.flatnonzero(~np.isin(all_ids, ids))
        removed = len(all_ids) - len(keep)
        if removed == 0:
            return 0
        inner = faiss.downcast_index(self.index.index)
        decode = _decoder(inner)
        fresh = faiss.clone_index(inner)
        fresh.reset()
        if _is_ivf(fresh):
            faiss.extract_index_ivf(fresh).make_direct_map(False)  # the copy needs no direct map
        index = faiss.IndexIDMap2(fresh)
        _readd(index, lambda at: decode(keep[at]), all_ids[keep], READD_CHUNK)
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
        """Write the index beside the old one (a new generation's file), fsync, rename; then the manifest the same
        way: the commit point. Whatever the folder holds (a damaged manifest or index file, leftovers) is replaced
        only then; a failed save leaves the folder as it was, with no temporary file."""
        if self.read_only:
            raise PromptdexError(f"bundle {self.manifest.name!r} is memory-mapped (read-only)")
        name = self.manifest.name
        dest = self.path / MANIFEST
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            generation = max(self.manifest.generation, highest_generation(self.path)) + 1
            dest = self.path / f"index-{generation:06d}.faiss"
            written = _write_atomic(dest, lambda handle: _write_index(self.index, handle))
            manifest = replace(self.manifest, generation=generation, index_file=dest.name, count=self.count,
                               updated_at=_now(), versions=library_versions(), format=FORMAT,
                               index_bytes=written.size, index_sha256=written.sha256, index_probe=written.probe)
            text = json.dumps(manifest.to_json(), indent=1).encode()
            try:
                dest = self.path / MANIFEST
                _write_atomic(dest, lambda handle: handle.write(text))
            except BaseException:
                (self.path / manifest.index_file).unlink(missing_ok=True)  # never committed
                raise
        except OSError as exc:
            raise PromptdexError(f"bundle {name!r}: cannot write {dest} ({exc.strerror or type(exc).__name__}): free "
                                 f"disk space in {self.path.parent} or make it writable, then run the command again "
                                 "(the bundle on disk is unchanged)") from exc
        self.manifest = manifest
        _fsync_dir(self.path)
        for old in self.path.iterdir():
            if old.name != manifest.index_file and (old.name.startswith("index-") or old.name.endswith(".tmp")):
                old.unlink(missing_ok=True)  # readers that mapped an old file keep it until they close it
        logger.info("saved bundle %s: %d vectors, generation %d", name, self.count, generation)
        return self.manifest
