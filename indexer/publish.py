"""Publishing FAISS bundles to shared storage, and picking them up on other machines.

`publish_bundle`: a bundle folder built locally (indexer/bundles.py) goes to the `bundles` area as
`<name>/<generation>/<files>`, then `<name>/current.json` (the pointer: generation and the sha256 and size of
every file) is written last, in one atomic PUT. A reader sees the old generation or the new one, never a mix.

`sync_bundle`: when the pointer names a newer generation than the local folder holds, its files are downloaded
under `<folder>/.incoming-<gen>/`, checked against the pointer's checksums and by `verify_bundle`, and only then
moved into the folder (the index file first, the manifest last: its commit point, which the API's self-reloading
handles watch). A truncated or corrupt download is refused and the folder keeps serving the old generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from indexer.bundles import MANIFEST, read_manifest, verify_bundle
from promptdex.errors import IndexCorrupt, NotFound, PromptdexError
from promptdex.storage import Storage

logger = logging.getLogger(__name__)

POINTER = "current.json"


def _sha(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def publish_bundle(storage: Storage, folder: Path) -> int:
    """Upload the bundle at `folder` (verified first) and swap the pointer; returns the published generation."""
    manifest = verify_bundle(folder)
    if manifest is None:
        raise NotFound(f"no bundle at {folder} to publish: run `promptdex index` first")
    name = manifest.name
    files: dict[str, dict[str, Any]] = {}
    for file_name in (manifest.index_file, MANIFEST):  # the manifest last, as locally
        path = folder / file_name
        data = path.read_bytes()
        storage.put(f"{name}/{manifest.generation:06d}/{file_name}", data)
        files[file_name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    pointer = {"name": name, "generation": manifest.generation, "files": files}
    storage.put(f"{name}/{POINTER}", json.dumps(pointer, indent=1).encode())
    logger.info("published bundle %s generation %d to %s", name, manifest.generation, storage.name)
    return manifest.generation


def read_pointer(storage: Storage, name: str) -> dict[str, Any] | None:
    try:
        raw = storage.get(f"{name}/{POINTER}")
    except NotFound:
        return None
    try:
        pointer = json.loads(raw)
        int(pointer["generation"])
        dict(pointer["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexCorrupt(f"{storage.name}/{name}/{POINTER} is not a bundle pointer ({exc}); publish the bundle "
                           "again with `promptdex index`") from exc
    return dict(pointer)


def _local_generation(folder: Path) -> int:
    try:
        manifest = read_manifest(folder)
    except IndexCorrupt:
        return 0
    return manifest.generation if manifest else 0


def sync_bundle(storage: Storage, name: str, folder: Path) -> bool:
    """Bring the published generation of bundle `name` into `folder` when it is newer; True when one was swapped
    in. IndexCorrupt (the folder unchanged) when the download does not match the pointer or does not verify."""
    pointer = read_pointer(storage, name)
    if pointer is None or int(pointer["generation"]) <= _local_generation(folder):
        return False
    generation = int(pointer["generation"])
    staging = folder / f".incoming-{generation:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for file_name, expect in pointer["files"].items():
            if "/" in file_name or file_name.startswith("."):
                raise IndexCorrupt(f"{storage.name}/{name}/{POINTER} names a bad file {file_name!r}")
            dest = staging / file_name
            with dest.open("wb") as handle:
                for chunk in storage.stream(f"{name}/{generation:06d}/{file_name}"):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            size, sha = dest.stat().st_size, _sha(dest)
            if size != int(expect["size"]) or sha != expect["sha256"]:
                raise IndexCorrupt(f"bundle {name!r} generation {generation} from {storage.name}: {file_name} is "
                                   f"{size} bytes with sha256 {sha[:12]}..., the pointer says {expect['size']} "
                                   f"bytes, {str(expect['sha256'])[:12]}... (truncated or corrupt); keeping the "
                                   "generation already here")
        manifest = verify_bundle(staging)
        if manifest is None or manifest.generation != generation:
            raise IndexCorrupt(f"bundle {name!r} generation {generation} from {storage.name} has no matching "
                               "manifest; keeping the generation already here")
        os.replace(staging / manifest.index_file, folder / manifest.index_file)
        os.replace(staging / MANIFEST, folder / MANIFEST)  # the commit point
    except (OSError, PromptdexError) as exc:
        if isinstance(exc, IndexCorrupt):
            raise
        raise IndexCorrupt(f"bundle {name!r} generation {generation} cannot be fetched from {storage.name} "
                           f"({exc}); keeping the generation already here") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in folder.iterdir():
        if old.name.startswith("index-") and old.name != manifest.index_file:
            old.unlink(missing_ok=True)  # readers that mapped it keep it until they close it
    logger.info("picked up bundle %s generation %d from %s", name, generation, storage.name)
    return True


def bundle_names() -> list[str]:
    from indexer.indexing import SPECS

    return [spec.name for spec in SPECS]


def publish_all(settings: Any) -> list[int]:
    """After `promptdex index`: publish every built bundle when PROMPTDEX_STORAGE_URL is set."""
    from promptdex.storage import get_storage

    if not settings.storage_url:
        return []
    storage = get_storage(settings, "bundles")
    return [publish_bundle(storage, settings.indexes_path / name) for name in bundle_names()
            if (settings.indexes_path / name / MANIFEST).is_file()]


class BundleSync:
    """What the API runs on each reload check: at most every `storage.poll_seconds`, fetch newer generations. One
    thread polls at a time (the others go on serving what they have); `problem` names every bundle whose last
    fetch failed, for /api/health, until a fetch of it succeeds."""

    def __init__(self, settings: Any) -> None:
        from promptdex.storage import get_storage

        self.storage = get_storage(settings, "bundles")
        self.folder = settings.indexes_path
        self.every = settings.storage.poll_seconds
        self.checked = float("-inf")
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def problem(self) -> str | None:
        return "; ".join(f"bundle {name!r}: {text}" for name, text in self._failed.items()) or None

    def poll(self, *, force: bool = False) -> bool:
        if not self._lock.acquire(blocking=False):  # another request is fetching: serve what is here meanwhile
            return False
        try:
            now = time.monotonic()
            if not force and now - self.checked < self.every:
                return False
            self.checked = now
            changed = False
            for name in bundle_names():
                try:
                    changed |= sync_bundle(self.storage, name, self.folder / name)
                    self._failed.pop(name, None)
                except Exception as exc:  # noqa: BLE001 - the API keeps serving what it has; health reports it
                    text = str(exc) or type(exc).__name__
                    self._failed[name] = text if self.storage.name in text else f"{self.storage.name}: {text}"
                    logger.error("bundle %s: %s", name, exc)
            return changed
        finally:
            self._lock.release()
