"""Generation routes: the models on offer with their profiles, and POST /api/generations (txt2img and img2img).

A request is checked whole before anything is queued (422 names every field that is wrong, as it was sent); it
is queued within the caller's quotas (creator role or above) for a `promptdex worker`, and followed with
/api/jobs/{id} and its server-sent events.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from promptdex.errors import InvalidFields, PayloadTooLarge, UnsupportedMedia
from promptdex.generation import GenerationInput
from search_api import generations
from search_api.deps import State
from search_api.errors import responses
from search_api.schemas import GenerationCreated, ModelList
from search_api.security import Creator, CurrentUser

router = APIRouter(tags=["generation"], responses=responses())

_INTS = {"steps", "width", "height", "seed", "count", "clip_skip"}
_FLOATS = {"cfg", "strength"}


def _json_schema() -> dict[str, Any]:
    schema = GenerationInput.model_json_schema()
    schema.pop("title", None)
    return schema


def _form_schema() -> dict[str, Any]:
    """The same fields as form fields: a form has no null (leave a field out), seeds are a comma list."""
    schema = _json_schema()
    props = {}
    for name, prop in schema["properties"].items():
        options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        props[name] = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **options[0]}
    props["seeds"] = {"type": "string", "description": "Seeds as a comma list, e.g. 1,5,9."}
    props["init_image"] = {"type": "string", "format": "binary", "description": "Image-to-image: a PNG, JPEG or "
                           "WebP image (with `strength`)."}
    return {"type": "object", "properties": props, "additionalProperties": False}


_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _json_schema()},
    "multipart/form-data": {"schema": _form_schema()},
}}}


@router.get("/api/models", response_model=ModelList)
def list_models(state: State, caller: CurrentUser) -> ModelList:
    """The models an admin made available (PROMPTDEX_GENERATOR__MODELS), each with its profile."""
    return generations.models_listing(state.settings)


def _form_value(name: str, value: str) -> Any:
    text = value.strip()
    if not text and name != "prompt" and name != "negative_prompt":
        return None  # an empty form field: not set
    try:
        if name in _INTS:
            return int(text)
        if name in _FLOATS:
            return float(text)
        if name == "seeds":
            return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InvalidFields([(name, f"{value[:40]!r} is not a number")]) from None
    return value


async def _read_body(request: Request, state: Any) -> tuple[dict[str, Any], tuple[str, int, int, bytes] | None]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(await request.body())
        except ValueError as exc:
            raise InvalidFields([("body", f"not valid JSON ({exc})")]) from exc
        if not isinstance(data, dict):
            raise InvalidFields([("body", "must be a JSON object of settings")])
        return data, None
    if kind != "multipart/form-data":
        raise UnsupportedMedia("body: send application/json, or multipart/form-data with an init_image file")
    limit = state.settings.api.max_upload_bytes
    form = await request.form(max_files=1, max_fields=32, max_part_size=64 * 1024)
    fields: dict[str, Any] = {}
    init = None
    for name, value in form.multi_items():
        if name == "init_image" and not isinstance(value, str):
            data = await value.read(limit + 1)
            if len(data) > limit:
                raise PayloadTooLarge(f"init_image: upload is larger than the limit of {limit} bytes")
            init = await run_in_threadpool(generations.read_init_image, data,
                                           max_pixels=state.settings.api.max_upload_pixels)
        elif isinstance(value, str):
            parsed = _form_value(name, value)
            if parsed is not None:
                fields[name] = parsed
        else:
            raise InvalidFields([(name, "only init_image may be a file")])
    return fields, init


def _validation_fields(exc: ValidationError) -> InvalidFields:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        problems.append((loc[0] if loc else "body", str(err.get("msg", "invalid"))))
    return InvalidFields(problems)


@router.post("/api/generations", response_model=GenerationCreated, status_code=201, openapi_extra=_BODY,
             responses=responses(415))
async def create_generation(request: Request, state: State, caller: Creator) -> GenerationCreated:
    """Queue text-to-image (JSON) or image-to-image (multipart with `init_image` and `strength`).

    Unset settings take the model profile's defaults; values outside its recommended ranges are allowed and
    listed in `warnings`; only the hard bounds refuse (422 naming the field). Seeds are drawn when none are
    given, and returned.
    """
    fields, init = await _read_body(request, state)
    try:
        body = GenerationInput.model_validate(fields)
    except ValidationError as exc:
        raise _validation_fields(exc) from exc
    settings = state.settings
    generations.check_prompt(state.engines.safety_scorer(), settings, body.prompt, is_admin=caller.is_admin)
    filled, warnings = await run_in_threadpool(generations.prepare, settings, body, init=init)

    def enqueue() -> Any:
        with state.pool.connection() as conn:
            job = generations.enqueue(conn, settings, filled, owner_id=caller.user.id if caller.user else None,
                                      is_admin=caller.is_admin)
            return job, generations.job_view(conn, job)

    job, view = await run_in_threadpool(enqueue)
    return GenerationCreated(id=job.public_id, status="queued", model=filled.model or "", seeds=filled.seeds or [],
                             count=filled.image_count, warnings=warnings, queue_position=view.queue_position,
                             request=job.payload)
