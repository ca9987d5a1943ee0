"""Content hashes of model files and folders (sha256, A1111's 10-character short hash), cached by size and mtime."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SKIP_NAMES = {".DS_Store"}


def short_hash(sha256: str) -> str:
    """A1111's "Model hash": the first 10 hex digits of the file's sha256."""
    return sha256[:10]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, *, cache_dir: Path | None = None) -> str:
    """The file's sha256; with `cache_dir`, remembered by (path, size, mtime) in `cache_dir/hashes.json`."""
    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _read_cache(cache_dir)
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    if cache_dir is not None and stat.st_size >= _CHUNK:  # small files are cheaper to hash than to cache
        cache[key] = value
        _write_cache(cache_dir, cache)
    return value


def sha256_folder(folder: Path, *, cache_dir: Path | None = None) -> str:
    """A digest of a folder's files: sha256 over sorted "relative path NUL file sha256" lines (symlinks followed)."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if path.name in _SKIP_NAMES or any(part.startswith(".") for part in rel.parts):
            continue
        lines.append(f"{rel.as_posix()}\0{sha256_file(path, cache_dir=cache_dir)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _read_cache(cache_dir: Path | None) -> dict[str, str]:
    if cache_dir is None:
        return {}
    try:
        data = json.loads((cache_dir / "hashes.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_dir: Path, cache: dict[str, str]) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", dir=cache_dir)
        with os.fdopen(fd, "w") as handle:
            json.dump(cache, handle, indent=0, sort_keys=True)
        os.replace(tmp, cache_dir / "hashes.json")
    except OSError as exc:  # a cache, never fatal
        logger.warning("could not write the hash cache in %s: %s", cache_dir, exc)
