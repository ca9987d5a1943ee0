"""Image and thumbnail files (by id only, never a path from the request) and the web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from promptdex.errors import NotFound
from search_api.deps import Service, State

router = APIRouter(tags=["files"])

_MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "MPO": "image/jpeg"}
_CACHE = "public, max-age=31536000, immutable"  # an id's content never changes (content-addressed rows)


def _file_response(path: Path, media_type: str, etag: str, if_none_match: str | None) -> Response:
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": _CACHE})
    if not path.is_file():
        raise NotFound("the file of this image is missing from disk; re-import or regenerate it")
    return FileResponse(path, media_type=media_type, headers={"ETag": etag, "Cache-Control": _CACHE})


@router.get("/images/{image_id}")
def image_file(state: State, service: Service, image_id: int,
               if_none_match: Annotated[str | None, Header()] = None) -> Response:
    image = service.image(image_id)
    path = Path(image.path)
    if not path.is_absolute():
        path = state.settings.images_path / path
    return _file_response(path, _MEDIA.get(image.format.upper(), "application/octet-stream"),
                          f'"{image.sha256}"', if_none_match)


@router.get("/thumbs/{image_id}")
def thumb_file(state: State, service: Service, image_id: int,
               if_none_match: Annotated[str | None, Header()] = None) -> Response:
    image = service.image(image_id)
    path = state.engines.thumbnail_path(image.sha256)
    if not path.is_file():
        raise NotFound(f"image {image_id} has no thumbnail yet: run `promptdex index`")
    return _file_response(path, "image/webp", f'"t-{image.sha256}"', if_none_match)


def mount_frontend(app: FastAPI, folder: Path) -> None:
    """Serve the web page: `/static/*` files, and index.html for `/` and `/image/{id}`."""
    if not (folder / "index.html").is_file():
        return
    app.mount("/static", StaticFiles(directory=folder), name="static")
    index = folder / "index.html"

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/image/{image_id}", include_in_schema=False)
    def image_page(image_id: int) -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})
