"""Generation as a service, without FastAPI: the models on offer, requests checked and queued, jobs as the API shows
them (queue position, progress, ETA). Uses the core request model and queue; never imports `generator`."""

from __future__ import annotations

import hashlib
import io
import math
from functools import lru_cache
from typing import Any

import psycopg

from indexer.safety import Scorer
from indexer.safety.words import WordListClassifier
from promptdex import jobs
from promptdex.catalog import available_models, batch_key, default_model, fill_defaults, model_profile, warnings_for
from promptdex.errors import InvalidFields, PayloadTooLarge, UnsupportedMedia
from promptdex.generation import (
    MAX_CFG,
    MAX_COUNT,
    MAX_PROMPT_CHARS,
    MAX_PROMPT_TOKENS,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    GenerateRequest,
    GenerationInput,
    JobKind,
    check_request,
)
from promptdex.inputs import inputs_path, keep_input
from promptdex.samplers import SAMPLERS, SCHEDULES
from promptdex.settings import Settings
from search_api.schemas import GenerationLimits, JobOut, JobProgress, ModelList, ModelOut, ModelProfileOut


def check_prompt(scorer: Scorer, settings: Settings, prompt: str, *, is_admin: bool, field: str = "prompt") -> None:
    """Refuse a prompt the prompt classifiers score at or above GENERATION_THRESHOLD, for callers below admin
    (InvalidFields naming `field`, the configured message and the words that decided it)."""
    if is_admin:
        return
    score = scorer.score_prompt(prompt)
    if score < settings.safety.generation_threshold:
        return
    words = [m for c in scorer.prompt if isinstance(c, WordListClassifier) for m, v in c.matches(prompt)
             if v >= settings.safety.generation_threshold]
    found = f" (matched: {', '.join(dict.fromkeys(words))})" if words else ""
    raise InvalidFields([(field, settings.safety.refusal_message + found)])


ADMIN_PRIORITY = 10  # admins' jobs go before creators' (DESIGN.md: priorities)
INIT_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


def models_listing(settings: Settings) -> ModelList:
    default = default_model(settings)
    data = []
    for name in available_models(settings):
        profile = model_profile(name, settings)
        data.append(ModelOut(name=name, label=profile.label, default=name == default, family=profile.family.value,
                             refiner=settings.generator.refiners.get(name),
                             profile=ModelProfileOut.model_validate(profile.as_dict())))
    limits = GenerationLimits(min_size=MIN_SIZE, max_size=MAX_SIZE, max_steps=MAX_STEPS, max_cfg=MAX_CFG,
                              max_count=MAX_COUNT, max_prompt_chars=MAX_PROMPT_CHARS,
                              max_prompt_tokens=MAX_PROMPT_TOKENS)
    return ModelList(data=data, samplers=[s.name for s in SAMPLERS], schedules=list(SCHEDULES), limits=limits)


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def clip_tokens(text: str) -> int:
    """CLIP BPE tokens of a prompt (Stable Diffusion's text encoders all use this vocabulary)."""
    return len(_tokenizer().encode(text))


def read_init_image(data: bytes, *, max_pixels: int) -> tuple[str, int, int, Any]:
    """(format suffix, width, height, bytes) of an init image upload; 413/415 errors name `init_image`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise UnsupportedMedia("init_image: the upload is empty; send a PNG, JPEG or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (w, h) = probe.format, probe.size
            if w * h > max_pixels:
                raise PayloadTooLarge(f"init_image: {w}x{h} is more than the limit of {max_pixels} pixels")
            if fmt not in INIT_FORMATS:
                raise UnsupportedMedia(f"init_image: {fmt} images are not accepted; send a PNG, JPEG or WebP image")
            probe.load()
            w, h = ImageOps.exif_transpose(probe).size
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"init_image: the image declares more than {max_pixels} pixels") from exc
    except (PayloadTooLarge, UnsupportedMedia):
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError,
            ZeroDivisionError) as exc:  # a decoder meets a malformed file (EXIF, chunks) in many ways
        raise UnsupportedMedia("init_image: not a readable image; send a PNG, JPEG or WebP image") from exc
    return INIT_FORMATS[fmt], w, h, data


def _init_size(width: int, height: int, area: int) -> tuple[int, int]:
    """An output size with the init image's shape and about the profile's pixel count, in multiples of 8."""
    scale = math.sqrt(area / max(width * height, 1))
    w = max(MIN_SIZE, min(MAX_SIZE, int(width * scale) // 8 * 8))
    h = max(MIN_SIZE, min(MAX_SIZE, int(height * scale) // 8 * 8))
    return w, h


def prepare(settings: Settings, body: GenerationInput, *,
            init: tuple[str, int, int, bytes] | None = None) -> tuple[GenerateRequest, list[str]]:
    """The checked, filled request of a body (and init image) and its warnings; InvalidFields names each field.
    Nothing is written unless every check passed (then the init image is kept)."""
    problems: list[tuple[str, str]] = []
    offered = available_models(settings)
    if body.model is not None and body.model not in offered:  # before its name reaches a path or a profile
        raise InvalidFields([("model", f"{body.model[:100]!r} is not available here; accepted: {', '.join(offered)}")])
    sha = None
    if init is not None:
        sha = hashlib.sha256(init[3]).hexdigest()
        if body.strength is None:
            problems.append(("strength", "required with an init image; accepted: more than 0, at most 1"))
    try:
        request = body.to_request(init_image=sha)
    except InvalidFields as exc:
        raise InvalidFields(exc.fields + problems) from exc
    if init is not None and (body.width is None or body.height is None):
        profile = model_profile(request.model or default_model(settings), settings)
        w, h = _init_size(init[1], init[2], profile.width * profile.height)
        request = request.model_copy(update={"width": body.width or w, "height": body.height or h})
    request = fill_defaults(request, settings)
    try:
        check_request(request, models=offered, count_tokens=clip_tokens, classes=False)
    except InvalidFields as exc:
        problems = exc.fields + problems
    if problems:
        raise InvalidFields(problems)
    if init is not None:
        keep_input(init[3], suffix=init[0], folder=inputs_path(settings))
    return request, warnings_for(request, settings)


def enqueue(conn: psycopg.Connection[Any], settings: Settings, request: GenerateRequest, *, owner_id: int | None,
            is_admin: bool) -> jobs.Job:
    api = settings.api
    quota = jobs.Quota(images_per_hour=api.images_per_hour, images_queued=api.images_queued,
                       queue_cap=api.queue_cap, per_user=not is_admin)
    [job] = jobs.enqueue_within_quota(
        conn, payloads=[request.model_dump(mode="json", exclude_none=True)], images=[request.image_count],
        owner_id=owner_id, quota=quota, kind=JobKind.GENERATE, max_attempts=settings.generator.max_attempts,
        priority=ADMIN_PRIORITY if is_admin else 0, batch_keys=[batch_key(request)])
    return job


def job_view(conn: psycopg.Connection[Any], job: jobs.Job) -> JobOut:
    """A job as the API shows it: with its place in the queue, its progress and an estimate of when it is done."""
    position = jobs.queue_position(conn, job_id=job.id) if job.status == "queued" else None
    progress = JobProgress.model_validate(job.progress) if job.progress and job.status == "running" else None
    eta = None
    per_image = jobs.seconds_per_image(conn) if not job.status.terminal else None
    if per_image is not None and job.status == "queued":
        eta = per_image * (jobs.open_images_ahead(conn, job_id=job.id) + job.images_requested)
    elif per_image is not None and job.status == "running":
        eta = per_image * job.images_requested * (1 - (progress.fraction if progress else 0))
    return JobOut(id=job.public_id, kind=job.kind.value, status=job.status.value, attempts=job.attempts,
                  error=job.error, image_ids=job.image_ids, payload=job.payload, created_at=job.created_at,
                  started_at=job.started_at, finished_at=job.finished_at, queue_position=position, progress=progress,
                  eta_seconds=None if eta is None else round(eta, 1),
                  preview=job.preview if job.status == "running" else None, cancel_requested=job.cancel_requested)
