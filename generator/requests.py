"""What to generate: the request model (also the job payload schema), seed and size parsing, and `check_inputs`.

Job payloads (the `payload` column of `jobs`; the column `kind` may be "generate", "reproduce" or "variations"):

- `{"kind": "generate", "prompt": "...", ...}`: every field of `GenerateRequest` below; only `prompt` is
  required. Unset fields take the worker's defaults (PROMPTDEX_GENERATOR__*). `seeds` lists one seed per image;
  without it the worker makes `count` seeds that are fixed per job (derived from the job's id and creation
  time), so a retried job makes the same images. `init_image` is the sha256 of an image kept in the inputs
  folder (`promptdex generate --init-image FILE --enqueue` puts it there).
- `{"kind": "reproduce", "image_id": N}`: make image N again from its record; the job is done (with
  `image_ids = [N]`) when the pixels are identical, failed with the differences otherwise. A missing file whose
  re-render has the row's sha256 is restored.
- `{"kind": "variations", "image_id": N, "count": K}`: K new images with image N's settings and new seeds
  (`seeds` may be given instead); done with the new image ids.
"""

from __future__ import annotations

import math
import re
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptdex.errors import InvalidInput

MIN_SIZE, MAX_SIZE = 32, 4096
MAX_STEPS = 1000
MAX_CFG = 100.0
MAX_CLIP_SKIP = 12
MAX_SEED = 2**64 - 1
MAX_COUNT = 100_000
RANDOM_SEED_BITS = 32  # random seeds are drawn below 2**32, as A1111 draws them


class GenerateRequest(BaseModel):
    """One prompt with its settings and one seed per image (payload kind "generate")."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: Literal["generate"] = "generate"
    prompt: str = ""
    negative_prompt: str = ""
    seeds: list[int] | None = None
    count: int = 1
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    schedule: str | None = None
    width: int | None = None
    height: int | None = None
    clip_skip: int = 1
    model: str | None = None
    model_config_path: str | None = None
    revision: str | None = None
    vae: str | None = None
    init_image: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    strength: float | None = None
    scheduler_class: str | None = None
    scheduler_config: dict[str, Any] | None = None

    @property
    def image_count(self) -> int:
        return len(self.seeds) if self.seeds is not None else self.count


class ReproduceJob(BaseModel):
    """Payload kind "reproduce"."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reproduce"] = "reproduce"
    image_id: int = Field(gt=0)


class VariationsJob(BaseModel):
    """Payload kind "variations"."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["variations"] = "variations"
    image_id: int = Field(gt=0)
    count: int = Field(4, ge=1, le=MAX_COUNT)
    seeds: list[int] | None = None


Payload = GenerateRequest | ReproduceJob | VariationsJob
_PAYLOADS: dict[str, type[BaseModel]] = {"generate": GenerateRequest, "reproduce": ReproduceJob,
                                         "variations": VariationsJob}


def parse_payload(payload: dict[str, Any], job_kind: str = "generate") -> Payload:
    """The typed payload of a job; the payload's `kind` wins over the job's column."""
    kind = str(payload.get("kind") or job_kind)
    model = _PAYLOADS.get(kind)
    if model is None:
        raise InvalidInput(f"job payload kind {kind!r} is unknown; accepted: {', '.join(_PAYLOADS)}")
    try:
        parsed = model.model_validate({**payload, "kind": kind})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise InvalidInput(f"job payload field {where!r}: {first['msg']} (got {first.get('input')!r})") from exc
    return parsed  # type: ignore[return-value]


def parse_seeds(text: str, *, argument: str = "--seeds") -> list[int]:
    """Seeds from "1000-1015" (inclusive), "1,5,9" or a mix ("1,5-7")."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        elif m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", part):
            start, end = int(m[1]), int(m[2])
            if end < start or end - start >= MAX_COUNT:
                raise InvalidInput(f"{argument}: range {part!r} must go up and hold at most {MAX_COUNT} seeds")
            seeds.extend(range(start, end + 1))
        else:
            raise InvalidInput(f"{argument}: {part!r} is not a seed; accepted: N, A-B (inclusive), or a comma "
                               "list such as 1,5,9")
    check_seeds(seeds, argument=argument)
    return seeds


def check_seeds(seeds: list[int], *, argument: str = "--seeds") -> None:
    if not seeds:
        raise InvalidInput(f"{argument}: no seeds given")
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise InvalidInput(f"{argument}: seed {seed} is out of range; accepted: 0 to {MAX_SEED}")


def random_seeds(count: int) -> list[int]:
    return [secrets.randbelow(2**RANDOM_SEED_BITS) for _ in range(count)]


def parse_size(text: str, *, argument: str = "--size") -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise InvalidInput(f"{argument}: {text!r} is not a size; accepted: WIDTHxHEIGHT, e.g. 512x768")
    return int(m[1]), int(m[2])


def check_size(width: int, height: int, *, argument: str = "--size") -> None:
    for name, value in (("width", width), ("height", height)):
        if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
            raise InvalidInput(f"{argument}: {name} {value} is not accepted; accepted: a multiple of 8 from "
                               f"{MIN_SIZE} to {MAX_SIZE} (got {width}x{height})")


def check_inputs(request: GenerateRequest, *, where: str = "") -> None:
    """Validate every setting of a filled-in request before any model is loaded; InvalidInput names the argument.

    `where` prefixes messages (e.g. "prompts.jsonl:3: ").
    """
    from generator.loading import classify_model, classify_vae
    from generator.samplers import resolve_sampler, scheduler_class

    try:
        if request.width is None or request.height is None:
            raise InvalidInput("--size: width and height are required")
        check_size(request.width, request.height)
        if request.steps is None or not 1 <= request.steps <= MAX_STEPS:
            raise InvalidInput(f"--steps: {request.steps} is not accepted; accepted: 1 to {MAX_STEPS}")
        if request.cfg is None or not math.isfinite(request.cfg) or not 0 <= request.cfg <= MAX_CFG:
            raise InvalidInput(f"--cfg: {request.cfg} is not accepted; accepted: 0 to {MAX_CFG:g}")
        if not 1 <= request.clip_skip <= MAX_CLIP_SKIP:
            raise InvalidInput(f"--clip-skip: {request.clip_skip} is not accepted; accepted: 1 (no skip) to "
                               f"{MAX_CLIP_SKIP}, as A1111 counts it")
        if request.seeds is not None:
            check_seeds(request.seeds)
        elif not 1 <= request.count <= MAX_COUNT:
            raise InvalidInput(f"--count: {request.count} is not accepted; accepted: 1 to {MAX_COUNT}")
        if request.init_image is None and request.strength is not None:
            raise InvalidInput("--strength applies only with --init-image")
        if request.init_image is not None:
            strength = request.strength
            if strength is None or not math.isfinite(strength) or not 0 < strength <= 1:
                raise InvalidInput(f"--strength: {strength} is not accepted; accepted: more than 0, at most 1")
            if int(request.steps * strength) < 1:
                raise InvalidInput(f"--strength: {strength} x --steps {request.steps} leaves no denoising step; "
                                   "accepted: steps x strength of at least 1")
        if request.model is None:
            raise InvalidInput("--model: no model given")
        classify_model(request.model)
        if request.vae:
            classify_vae(request.vae)
        if request.scheduler_class is not None:
            scheduler_class(request.scheduler_class)
        else:
            resolve_sampler(request.sampler or "", request.schedule)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}{exc}") from exc
