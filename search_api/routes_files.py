"""Image and thumbnail files (by id only, never a path from the request) and the web page."""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path
from fastapi.responses import FileResponse, Response, StreamingResponse

from indexer.images import ImageRejected, file_holds, thumbnail_key, thumbnail_webp
from promptdex.errors import NotFound
from promptdex.records import Image
from promptdex.settings import AnonymousAccess
from promptdex.storage import Area, Storage, get_storage, remote_storage
from search_api.deps import Service, State
from search_api.errors import responses
from search_api.schemas import MAX_ID
from search_api.security import Caller, file_reader, visible_image

router = APIRouter(tags=["files"], dependencies=[Depends(file_reader)])

_MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "MPO": "image/jpeg"}
# An id's content never changes (content-addressed rows). Shared caches may keep a file only when anyone may
# read it; on a private instance, or for a signed-in caller, only the browser's own cache does.
_CACHE = "public, max-age=31536000, immutable"
_PRIVATE_CACHE = "private, max-age=31536000, immutable"


def cache_control(state: State, caller: Caller) -> str:
    if caller.user is not None or state.settings.api.anonymous is AnonymousAccess.NONE:
        return _PRIVATE_CACHE
    return _CACHE


def _file_response(path: FsPath, media_type: str, etag: str, if_none_match: str | None, cache: str) -> Response:
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache, "Vary": "Cookie"})
    if not path.is_file():
        raise NotFound("the file of this image is missing from disk; re-import or regenerate it")
    return FileResponse(path, media_type=media_type,
                        headers={"ETag": etag, "Cache-Control": cache, "Vary": "Cookie, Authorization"})


def _gone_unless_present(image: Image, original: FsPath | None) -> None:
    """410 Gone for an image no file holds any more: marked missing by import, or `original` replaced since."""
    if image.missing:
        raise HTTPException(410, f"image {image.id}: its file is gone or was replaced, and no other file holds "
                                 "its content; it is hidden until that content is imported again")
    if original is not None and original.exists() and not file_holds(
            original, sha256=image.sha256, file_size=image.file_size, file_mtime=image.file_mtime):
        raise HTTPException(410, f"image {image.id}: its file now holds other content (it was replaced after "
                                 "the import); run `promptdex import` on its folder")


def _file_responses(*media: str) -> dict[int | str, dict[str, Any]]:
    out = responses(404, 410)
    out[200] = {"description": "The file.", "content": {m: {"schema": {"type": "string", "format": "binary"}}
                                                        for m in media}}
    out[304] = {"description": "Not modified (the ETag sent in If-None-Match matches)."}
    return out


ImageId = Annotated[int, Path(ge=1, le=MAX_ID)]
FileCaller = Annotated[Caller, Depends(file_reader)]


def _remote(state: State, area: Area) -> Storage | None:
    """The object store of an area when PROMPTDEX_STORAGE_URL names a remote one (a local one is a folder)."""
    return remote_storage(state.settings, area)


def _not_modified(etag: str, if_none_match: str | None, cache: str) -> Response | None:
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache, "Vary": "Cookie"})
    return None


def _stored_response(storage: Storage, key: str, media_type: str, etag: str, if_none_match: str | None,
                     cache: str) -> Response:
    """A file streamed from the object store, with the same ETag/304 behaviour as a local one (the ETag is of the
    content, so a 304 needs no request to the store)."""
    unchanged = _not_modified(etag, if_none_match, cache)
    if unchanged is not None:
        return unchanged
    info = storage.head(key)
    if info is None:
        raise NotFound(f"the file of this image is missing from {storage.name}; regenerate it")
    return StreamingResponse(storage.stream(key), media_type=media_type,
                             headers={"ETag": etag, "Cache-Control": cache, "Vary": "Cookie, Authorization",
                                      "Content-Length": str(info.size)})


@router.get("/images/{image_id}", response_class=Response, responses=_file_responses(*sorted(set(_MEDIA.values()))))
def image_file(state: State, service: Service, caller: FileCaller, image_id: ImageId,
               if_none_match: Annotated[str | None, Header()] = None) -> Response:
    image = visible_image(service, state, caller, image_id)
    remote = _remote(state, "images")
    if remote is not None and not FsPath(image.path).is_absolute():  # a generated image, in the object store
        _gone_unless_present(image, None)
        return _stored_response(remote, image.path, _MEDIA.get(image.format.upper(), "application/octet-stream"),
                                f'"{image.sha256}"', if_none_match, cache_control(state, caller))
    path = FsPath(image.path)
    if not path.is_absolute():
        path = state.settings.images_path / path
    cached = bool(if_none_match) and f'"{image.sha256}"' in (if_none_match or "")  # those bytes are the content
    _gone_unless_present(image, None if cached else path)
    return _file_response(path, _MEDIA.get(image.format.upper(), "application/octet-stream"),
                          f'"{image.sha256}"', if_none_match, cache_control(state, caller))


@router.get("/thumbs/{image_id}", response_class=Response, responses=_file_responses("image/webp"))
def thumb_file(state: State, service: Service, caller: FileCaller, image_id: ImageId,
               if_none_match: Annotated[str | None, Header()] = None) -> Response:
    image = visible_image(service, state, caller, image_id)
    _gone_unless_present(image, None)  # the thumbnail is of the content: only a missing row is gone
    remote = _remote(state, "thumbs")
    if remote is not None:  # the indexer put it there; a new image's is made now, once, and put there
        key, etag, cache = thumbnail_key(image.sha256), f'"t-{image.sha256}"', cache_control(state, caller)
        unchanged = _not_modified(etag, if_none_match, cache)
        if unchanged is not None:
            return unchanged
        if remote.head(key) is None:
            _store_thumbnail(state, remote, image, key)
        return _stored_response(remote, key, "image/webp", etag, None, cache)
    path = state.engines.thumbnail_path(image.sha256)
    if not path.is_file():  # a new image (a worker just made it): made now from its file, once
        original = FsPath(image.path)
        original = original if original.is_absolute() else state.settings.images_path / original
        made = state.engines.make_thumbnail(image.sha256, original)
        if made is None:
            raise NotFound(f"image {image_id} has no thumbnail yet: run `promptdex index`")
        path = made
    return _file_response(path, "image/webp", f'"t-{image.sha256}"', if_none_match, cache_control(state, caller))


def _store_thumbnail(state: State, remote: Storage, image: Image, key: str) -> None:
    """Put a missing thumbnail into the object store: the one `promptdex index` left in THUMBS_DIR, else one
    made now from the original (in the store for a generated image, on disk for an imported one)."""
    local = state.engines.thumbnail_path(image.sha256)
    if local.is_file():
        remote.put(key, local.read_bytes())
        return
    try:
        if FsPath(image.path).is_absolute():
            data = FsPath(image.path).read_bytes()
        else:
            data = (_remote(state, "images") or get_storage(state.settings, "images")).get(image.path)
        remote.put(key, thumbnail_webp(data, FsPath(image.path), size=state.settings.indexer.thumb_size,
                                       max_pixels=state.settings.indexer.max_image_pixels))
    except (OSError, ImageRejected, NotFound) as exc:
        raise NotFound(f"image {image.id} has no thumbnail yet ({exc}): run `promptdex index`") from exc


STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".webp": "image/webp",
                ".png": "image/png", ".woff2": "font/woff2"}


def mount_frontend(app: FastAPI, folder: FsPath) -> None:
    """Serve the web page: its assets (by name, from an allow-list of types) at `/static/*`, and index.html."""
    if not (folder / "index.html").is_file():
        return
    index = folder / "index.html"
    root = folder.resolve()
    assets = {p.name: p for p in sorted(root.iterdir()) if p.is_file() and p.suffix in STATIC_TYPES}

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = assets.get(name)
        if path is None:
            raise NotFound(f"no page asset named {name!r}")
        return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/image/{image_id}", include_in_schema=False)
    def image_page(image_id: int) -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})
