"""Where generated images, thumbnails and published bundles live: local folders, or an object store.

`PROMPTDEX_STORAGE_URL` unset: the local data folders exactly as before (`LocalStorage` over IMAGES_DIR,
THUMBS_DIR). A plain path or `file:///path`: one local folder, with `images/`, `thumbs/` and `bundles/` below
it. `s3://bucket/prefix`: any S3-compatible store through obstore; the endpoint, region and credentials come
from the AWS_* environment variables and/or `PROMPTDEX_STORAGE__ENDPOINT_URL`, `__REGION`, `__ALLOW_HTTP`.

Keys are relative, `/`-separated (`ab/abcdef....png`). `put` is atomic: a reader sees the old object, the new
one, or none, never half of one (a rename locally; a single PUT on S3).
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlparse

from promptdex.errors import ConfigError, NotFound

T = TypeVar("T")

if TYPE_CHECKING:
    from promptdex.settings import Settings

Area = Literal["images", "thumbs", "bundles"]
CHUNK = 1 << 20
SETTING = "PROMPTDEX_STORAGE_URL"


def write_atomic(dest: Path, write: Callable[[IO[bytes]], T]) -> T:
    """Write via a temporary file in the same folder, fsync it, then rename over `dest`. On any failure (a full
    disk, an interrupt) the temporary file is removed and `dest` is left as it was."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w+b") as handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class Storage(Protocol):
    """The few operations the project needs of a store."""

    name: str  # for messages: a folder or s3://bucket/prefix

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, start: int, end: int) -> bytes: ...

    def stream(self, key: str) -> Iterator[bytes]: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def local_path(self, key: str) -> Path | None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad storage key {key!r}")
    return key


class LocalStorage:
    """A folder; writes are a temporary file in the same folder, fsync, then rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)

    def local_path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        final = self.local_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(final, lambda handle: handle.write(data))

    def get(self, key: str) -> bytes:
        try:
            return self.local_path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.name}: no object {key}") from None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        with open(self.local_path(key), "rb") as handle:
            handle.seek(start)
            return handle.read(max(0, end - start))

    def stream(self, key: str) -> Iterator[bytes]:
        with open(self.local_path(key), "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self.local_path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}")

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and not path.name.startswith(".") and key.startswith(prefix):
                info = self.head(key)
                if info is not None:
                    out.append(info)
        return out


class ObjectStorage:
    """An obstore store (S3 and compatible; also obstore's LocalStore), every key below `prefix`."""

    def __init__(self, store: Any, name: str) -> None:
        self.store = store
        self.name = name

    def local_path(self, key: str) -> Path | None:
        return None

    def put(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store, _check_key(key), data)

    def get(self, key: str) -> bytes:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return bytes(obstore.get(self.store, _check_key(key)).bytes())
        except (NotFoundError, FileNotFoundError):
            raise NotFound(f"{self.name}: no object {key}") from None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        import obstore

        return bytes(obstore.get_range(self.store, _check_key(key), start=start, end=end))

    def stream(self, key: str) -> Iterator[bytes]:
        import obstore

        for chunk in obstore.get(self.store, _check_key(key)).stream(min_chunk_size=CHUNK):
            yield bytes(chunk)

    def head(self, key: str) -> ObjectInfo | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            meta = obstore.head(self.store, _check_key(key))
        except (NotFoundError, FileNotFoundError):
            return None
        return ObjectInfo(key, int(meta["size"]), str(meta.get("e_tag") or "").strip('"'))

    def delete(self, key: str) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            obstore.delete(self.store, _check_key(key))
        except (NotFoundError, FileNotFoundError):
            pass

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        import obstore

        out = []
        for batch in obstore.list(self.store, prefix=prefix or None):
            for meta in batch:
                out.append(ObjectInfo(str(meta["path"]), int(meta["size"]),
                                      str(meta.get("e_tag") or "").strip('"')))
        return sorted(out, key=lambda o: o.key)


def _s3(settings: Settings, bucket: str, prefix: str) -> ObjectStorage:
    from obstore.store import S3Store

    group = settings.storage
    config: dict[str, Any] = {}
    if group.endpoint_url:
        config["endpoint"] = group.endpoint_url
    if group.region:
        config["region"] = group.region
    allow_http = group.allow_http or (group.endpoint_url or "").startswith("http://")
    client: dict[str, Any] = {"allow_http": allow_http, "timeout": f"{group.timeout_seconds}s",
                              "connect_timeout": f"{group.timeout_seconds}s"}
    retry = {"max_retries": group.max_retries,
             "backoff": {"init_backoff": timedelta(seconds=0.1), "max_backoff": timedelta(seconds=2), "base": 2},
             "retry_timeout": timedelta(seconds=group.timeout_seconds * (group.max_retries + 1))}
    try:
        # the AWS_* variables fill in the rest
        store = S3Store(bucket, prefix=prefix or None, config=config, client_options=client,  # type: ignore[arg-type]
                        retry_config=retry)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - obstore's configuration errors
        raise ConfigError(f"{SETTING}=s3://{bucket}/{prefix}: {exc}") from exc
    return ObjectStorage(store, f"s3://{bucket}/{prefix}".rstrip("/"))


def get_storage(settings: Settings, area: Area) -> Storage:
    """The store for one area (images, thumbs, bundles) the settings name."""
    url = settings.storage_url
    if not url:
        local = {"images": settings.images_path, "thumbs": settings.thumbs_path,
                 "bundles": settings.indexes_path / "published"}[area]
        return LocalStorage(local)
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        root = Path(unquote(parsed.path) if parsed.scheme == "file" else url).expanduser().resolve()
        return LocalStorage(root / area)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"{SETTING}={url}: no bucket (expected s3://bucket/prefix)")
        prefix = "/".join(p for p in (parsed.path.strip("/"), area) if p)
        return _s3(settings, parsed.netloc, prefix)
    raise ConfigError(f"{SETTING}={url}: unsupported scheme {parsed.scheme!r} (a folder, file:// or s3://)")


def is_remote(storage: Storage) -> bool:
    return not isinstance(storage, LocalStorage)


_REMOTE: dict[tuple[Any, ...], Storage] = {}
_REMOTE_LOCK = threading.Lock()


def remote_storage(settings: Settings, area: Area) -> Storage | None:
    """The object store of an area when PROMPTDEX_STORAGE_URL names a remote one (s3://), else None (the area is
    then a local folder: IMAGES_DIR, THUMBS_DIR). One client per configuration and process, so its connections are
    reused across requests and rows."""
    url = settings.storage_url or ""
    if not url.startswith("s3://"):
        return None
    aws = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (os.getpid(), url, area, settings.storage.model_dump_json(), aws)
    with _REMOTE_LOCK:
        storage = _REMOTE.get(key)
        if storage is None:
            if len(_REMOTE) >= 32:
                _REMOTE.clear()
            storage = _REMOTE[key] = get_storage(settings, area)
    return storage


def shared_storage(settings: Settings, area: Area) -> Storage | None:
    """The store an area's files go to when PROMPTDEX_STORAGE_URL is set (a folder, or one reused client per process
    for s3://); None without it (the area is then IMAGES_DIR, THUMBS_DIR...)."""
    if not settings.storage_url:
        return None
    return remote_storage(settings, area) or get_storage(settings, area)


def missing_keys(storage: Storage, keys: Iterable[str], *, list_above: int = 8) -> set[str]:
    """Which of `keys` have no object in `storage`, in few requests: the keys of one folder (`ab/` of a
    content-addressed key) are checked with one listing of that folder when there are more than `list_above` of
    them, the others one `head` each."""
    folders: dict[str, list[str]] = {}
    for key in keys:
        folder = _check_key(key).rpartition("/")[0]
        folders.setdefault(f"{folder}/" if folder else "", []).append(key)
    missing: set[str] = set()
    for prefix, group in folders.items():
        if len(group) > list_above:
            present = {info.key for info in storage.list(prefix)}
            missing.update(k for k in group if k not in present)
        else:
            missing.update(k for k in group if storage.head(k) is None)
    return missing


def check_storage(settings: Settings) -> None:
    """A probe write, read and delete: one clear error naming the setting when the store cannot be used."""
    if not settings.storage_url:
        return
    storage = get_storage(settings, "images")
    key = f".probe/{uuid.uuid4().hex}"
    payload = hashlib.sha256(key.encode()).hexdigest().encode()
    try:
        storage.put(key, payload)
        back = storage.get(key)
        storage.delete(key)
    except Exception as exc:  # noqa: BLE001 - any failure of the store is the same configuration problem
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{SETTING}={settings.storage_url}: the storage cannot be written and read back "
                          f"({type(exc).__name__}: {first[:300]}); check the URL, the bucket, the endpoint "
                          "(PROMPTDEX_STORAGE__ENDPOINT_URL) and the AWS_* credentials") from exc
    if back != payload:
        raise ConfigError(f"{SETTING}={settings.storage_url}: a probe object read back different bytes")


def local_image(settings: Settings, path: str) -> Path:
    """A row's file as a local path: an absolute (imported) path as is; a generated image's key from a remote store
    downloaded once into DATA_DIR/.storage-cache (content-addressed, so a cached copy never goes stale)."""
    file = Path(path)
    if file.is_absolute():
        return file
    if not (settings.storage_url or "").startswith("s3://"):
        return settings.images_path / file
    cached = settings.data_path / ".storage-cache" / "images" / _check_key(path)
    if not cached.is_file():
        try:
            data = (remote_storage(settings, "images") or get_storage(settings, "images")).get(path)
        except NotFound:
            return cached  # the caller reports the missing file, naming it
        LocalStorage(cached.parents[len(Path(path).parts) - 1]).put(path, data)
    return cached
