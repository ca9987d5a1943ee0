"""Search routes: /api/search, images and similar, upload search, suggest, facets, health, Lexica's /api/v1/search."""

from __future__ import annotations

import io
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from promptdex import store
from promptdex.errors import NotFound, PayloadTooLarge, UnsupportedMedia
from promptdex.records import Image, ImageFilter
from promptdex.safety import flagged, level_bounds, restrict
from promptdex.settings import SafeLevel, SafetySettings
from search_api.deps import Conn, Filters, SafeStr, Service, State
from search_api.errors import database_cause, responses
from search_api.reproduce import reproduce_block
from search_api.schemas import (
    MAX_ID,
    ContentCredentials,
    Facets,
    Health,
    ImageDetail,
    ImageSafety,
    LexicaImage,
    LexicaResponse,
    SearchItem,
    SearchResponse,
    SimilarResponse,
    Suggestion,
    SuggestResponse,
)
from search_api.security import SAFE_HELP, CurrentUser, SafeMode, reader, safe_for, visible_image
from search_api.service import Hit, Mode, SearchRequest, Sort

router = APIRouter(dependencies=[Depends(reader)], responses=responses())


def item(image: Image, safety: SafetySettings, score: float | None = None) -> SearchItem:
    p = image.params
    return SearchItem(nsfw=flagged(image.safety, safety),
        id=image.id, url=f"/images/{image.id}", thumb_url=f"/thumbs/{image.id}", prompt=p.prompt,
        negative_prompt=p.negative_prompt, seed=p.seed, steps=p.steps, cfg=p.cfg, sampler=p.sampler,
        scheduler=p.scheduler, model=p.model, model_hash=p.model_hash, width=image.width, height=image.height,
        source=image.source, created_at=image.created_at, score=score,
    )


def items(hits: list[Hit], safety: SafetySettings) -> list[SearchItem]:
    return [item(h.image, safety, h.score) for h in hits]


@router.get("/api/search", response_model=SearchResponse, tags=["search"])
def search(
    service: Service,
    state: State,
    filters: Filters,
    level: SafeMode,
    q: Annotated[SafeStr, Query(max_length=1000, description="Words to search for; empty browses newest first.")] = "",
    mode: Annotated[Mode, Query(description="hybrid (default), keyword or semantic.")] = Mode.HYBRID,
    sort: Annotated[Sort, Query(description="relevance, newest, oldest or random.")] = Sort.RELEVANCE,
    random_seed: Annotated[int, Query(ge=0, le=2**31 - 1, description="Seed for sort=random.")] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[SafeStr | None, Query(max_length=2000, description="next_cursor of the previous page.")] = None,
) -> SearchResponse:
    start = time.perf_counter()
    safety = state.settings.safety
    page = service.search(SearchRequest(q=q, mode=mode, filters=restrict(filters, level, safety), sort=sort,
                                        seed=random_seed, limit=limit, cursor=cursor))
    return SearchResponse(data=items(page.hits, safety), next_cursor=page.next_cursor,
                          took_ms=round((time.perf_counter() - start) * 1000, 2))


@router.get("/api/images/{image_id}", response_model=ImageDetail, tags=["images"], responses=responses(404))
def image_detail(service: Service, state: State, caller: CurrentUser,
                 image_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> ImageDetail:
    """One image's full record; its NSFW scores for admins. An image past what the caller's role may ever see (the
    most permissive safe-mode level it allows) is 404, as if it were not there."""
    image = visible_image(service, state, caller, image_id)
    safety = state.settings.safety
    base = item(image, safety).model_dump()
    return ImageDetail(
        **base, sha256=image.sha256, format=image.format, clip_skip=image.params.clip_skip,
        denoising_strength=image.params.denoising_strength,
        hires=image.params.hires.model_dump(mode="json") if image.params.hires else None,
        sampler_class=image.sampler_class, scheduler_config=image.scheduler_config,
        init_image_sha256=image.init_image_sha256, generation=image.generation, raw_metadata=image.raw_metadata,
        provenance=ContentCredentials.model_validate(image.provenance) if image.provenance else None,
        reproduce=reproduce_block(image), has_workflow=comfy_workflow(image) is not None,
        paths=service.paths(image_id) if caller.is_admin else [],
        safety=_safety_view(image) if caller.is_admin else None,
    )


def comfy_workflow(image: Image) -> dict[str, Any] | None:
    """The ComfyUI workflow a file carried: the front end's graph (`workflow`), else the API-format `prompt` of a
    ComfyUI file (ComfyUI loads both when the file is dropped on it); None when neither parses to an object."""
    raw = image.raw_metadata or {}
    keys = ["workflow", "prompt"] if image.source == "comfyui" else ["workflow"]
    for key in keys:
        value = raw.get(key)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                continue
        if isinstance(value, dict) and value:
            return value
    return None


@router.get("/api/images/{image_id}/workflow", tags=["images"], response_class=JSONResponse, responses={
    200: {"description": "The ComfyUI workflow JSON, as a file to save (Content-Disposition: attachment).",
          "content": {"application/json": {"schema": {"type": "object"}}}}, **responses(404)})
def image_workflow(service: Service, state: State, caller: CurrentUser,
                   image_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> JSONResponse:
    """The ComfyUI workflow of an image, to download and drop on ComfyUI; 404 when it has none (A1111-family images
    carry their settings as text: see the detail's `reproduce.a1111`)."""
    image = visible_image(service, state, caller, image_id)
    workflow = comfy_workflow(image)
    if workflow is None:
        raise NotFound(f"image {image_id} carries no ComfyUI workflow")
    return JSONResponse(workflow, headers={
        "Content-Disposition": f'attachment; filename="promptdex-{image_id}-workflow.json"'})


def _safety_view(image: Image) -> ImageSafety:
    s = image.safety
    if s is None:
        return ImageSafety(score=None, classifier=None, scores={}, pending=True)
    return ImageSafety(score=s.score, classifier=s.by, scores={name: c.score for name, c in s.scores.items()},
                       pending=s.pending)


@router.get("/api/images/{image_id}/similar", response_model=SimilarResponse, tags=["images"],
            responses=responses(404))
def similar(service: Service, state: State, caller: CurrentUser, filters: Filters, level: SafeMode,
            image_id: Annotated[int, Path(ge=1, le=MAX_ID)], k: Annotated[int, Query(ge=1, le=200)] = 24
            ) -> SimilarResponse:
    start = time.perf_counter()
    visible_image(service, state, caller, image_id)
    safety = state.settings.safety
    hits = service.similar(image_id, k, restrict(filters, level, safety))
    return SimilarResponse(data=items(hits, safety), took_ms=round((time.perf_counter() - start) * 1000, 2))


@router.post("/api/search/image", response_model=SimilarResponse, tags=["search"], responses=responses(415))
async def search_by_image(
    request: Request,
    state: State,
    caller: CurrentUser,
    file: Annotated[UploadFile, File(description="A PNG, JPEG or WebP image (no URLs are fetched).")],
    k: Annotated[int, Form(ge=1, le=200)] = 50,
    safe: Annotated[Literal["", "strict", "moderate", "off"], Form(description=SAFE_HELP + " Empty: the default.")]
    = "",
) -> SimilarResponse:
    start = time.perf_counter()
    safety = state.settings.safety
    filters = restrict(ImageFilter(), safe_for(caller, state, SafeLevel(safe) if safe else None), safety)
    limit = state.settings.api.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"file: upload is larger than the limit of {limit} bytes")
    if not data:
        raise UnsupportedMedia("file: the upload is empty; send a PNG, JPEG or WebP image")
    pil = await run_in_threadpool(_open_upload, data, state.settings.api.max_upload_pixels)
    vector = await run_in_threadpool(state.engines.embed_clip_image, pil)
    hits = await run_in_threadpool(state.service.by_vector, vector, k, filters)
    return SimilarResponse(data=items(hits, safety), took_ms=round((time.perf_counter() - start) * 1000, 2))


def _bomb(max_pixels: int) -> str:
    return f"file: the image declares more than {max_pixels} pixels (a decompression bomb?)"


def _open_upload(data: bytes, max_pixels: int) -> Any:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(io.BytesIO(data)) as probe:
            fmt, (w, h) = probe.format, probe.size
    except PILImage.DecompressionBombError as exc:
        raise PayloadTooLarge(_bomb(max_pixels)) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnsupportedMedia("file: not an image; send a PNG, JPEG or WebP image") from exc
    if fmt not in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
        raise UnsupportedMedia(f"file: {fmt} images are not accepted; send a PNG, JPEG or WebP image")
    if w * h > max_pixels:
        raise PayloadTooLarge(f"file: {w}x{h} is more than the limit of {max_pixels} pixels")
    try:
        pil = PILImage.open(io.BytesIO(data))
        pil.load()
    except PILImage.DecompressionBombError as exc:
        raise PayloadTooLarge(_bomb(max_pixels)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedMedia("file: the image could not be decoded (truncated or corrupt)") from exc
    return pil.convert("RGB")


@router.get("/api/suggest", response_model=SuggestResponse, tags=["search"])
def suggest(service: Service, state: State, level: SafeMode, q: Annotated[SafeStr, Query(max_length=200)] = "",
            limit: Annotated[int, Query(ge=1, le=50)] = 8) -> SuggestResponse:
    """Words of the corpus's prompts that start like the last word of `q`; the prompt word list's words are left out
    at the levels that would hide what they describe."""
    if not q.strip():
        return SuggestResponse(data=[])
    below, _ = level_bounds(level, state.settings.safety)
    if below is None:
        return SuggestResponse(data=[Suggestion(text=t, score=s) for t, s in service.suggest(q, limit)])
    scorer = state.engines.safety_scorer()
    found = [(t, s) for t, s in service.suggest(q, limit * 2 + 8) if scorer.score_prompt(t) < below]
    return SuggestResponse(data=[Suggestion(text=t, score=s) for t, s in found[:limit]])


@router.get("/api/facets", response_model=Facets, tags=["search"])
def facets(conn: Conn, state: State, level: SafeMode) -> Facets:
    """Distinct models, samplers and sizes of the images the safe-mode level shows, for filter menus."""
    return Facets(**store.facets(conn, filters=restrict(ImageFilter(), level, state.settings.safety)))


@router.get("/api/v1/search", response_model=LexicaResponse, tags=["lexica"])
def lexica_search(request: Request, service: Service, state: State, level: SafeMode,
                  q: Annotated[SafeStr, Query(max_length=1000, description="Prompt words, as Lexica takes them.")] = ""
                  ) -> LexicaResponse:
    """Lexica's public API shape (`{images: [...]}`, 50 results), so existing Lexica clients work unchanged. `nsfw`
    is true for an image scored at or above the strict threshold (or not scored yet); `safe` as on /api/search."""
    safety = state.settings.safety
    page = service.search(SearchRequest(q=q, limit=50, filters=restrict(ImageFilter(), level, safety)))
    base = str(request.base_url).rstrip("/")
    out = []
    for hit in page.hits:
        im, p = hit.image, hit.image.params
        out.append(LexicaImage(
            id=str(im.id), gallery=f"{base}/image/{im.id}", src=f"{base}/images/{im.id}",
            srcSmall=f"{base}/thumbs/{im.id}", prompt=p.prompt, width=im.width, height=im.height,
            seed=str(p.seed) if p.seed is not None else "", grid=False, model=p.model or "",
            guidance=float(p.cfg) if p.cfg is not None else 0.0, promptid=str(im.prompt_id or ""),
            nsfw=flagged(im.safety, safety),
        ))
    return LexicaResponse(images=out)


@router.get("/api/health", response_model=Health, tags=["meta"])
def health(state: State, caller: CurrentUser) -> Health:
    """Database, bundles and models. Only admins see where things live and the error texts."""
    detailed = caller.is_admin
    database: dict[str, Any] = {"server": state.database.kind}
    if detailed:
        database["location"] = state.database.display
    try:
        with state.pool.connection(timeout=1.0) as conn:
            row = conn.execute("SELECT count(*) AS n FROM images").fetchone()
        database.update(ok=True, images=int(row["n"]) if row else 0)
    except Exception as exc:  # noqa: BLE001 - health reports, never raises
        database.update(ok=False, error=database_cause(exc))
    bundles = state.engines.bundles_health()
    ok = database.get("ok") and all(b.get("ok") for b in bundles.values())
    if not detailed:
        for report in bundles.values():
            if "error" in report:
                report["error"] = "not available"
    return Health(status="ok" if ok else "degraded", database=database, bundles=bundles,
                  models=state.engines.models_health())
