"""The generation request: one model for the CLI, the API and the worker, its checks, and the job kinds and states.

A caller sets `GenerationInput` fields (the API's JSON names; the CLI's options map onto them); `to_request`
turns them into a `GenerateRequest` with one seed per image, which is what a job's payload holds. Unset settings
take the model profile's defaults (`promptdex.profiles`) when the request is filled. `check_request` checks every
setting before anything is queued or loaded and raises `InvalidFields` naming each field as the caller sent it.

Job payloads by the job's `kind` column (`JobKind`):
- generate: every field of `GenerateRequest`; `seeds` lists one seed per image (a job without them derives fixed
  ones from its id, so a retried job makes the same images). `init_image` is the sha256 of a kept input image.
- reproduce: `{"image_id": N}`: make image N again and compare bit for bit (done with image_ids [N], or failed
  with the differences).
- variations: `{"image_id": N, "count": K}` (or `seeds`): K new images with image N's settings and new seeds.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Collection
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptdex.errors import InvalidFields, InvalidInput
from promptdex.params import split_old_sampler
from promptdex.samplers import SAMPLERS, SCHEDULES, find_sampler, find_schedule

MIN_SIZE, MAX_SIZE = 32, 4096
MAX_STEPS = 1000
MAX_CFG = 100.0
MAX_CLIP_SKIP = 12
MAX_SEED = 2**64 - 1
MAX_COUNT = 100_000
MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 75  # CLIP's 77 less its start and end tokens: diffusers drops what is past them
RANDOM_SEED_BITS = 32  # random seeds are drawn below 2**32, as A1111 draws them
SHA256 = r"^[0-9a-f]{64}$"


class JobKind(StrEnum):
    GENERATE = "generate"
    REPRODUCE = "reproduce"
    VARIATIONS = "variations"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class GenerationInput(BaseModel):
    """What a caller may set (JSON numbers only, no coercion from text); None: the model profile's default."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="What to draw (at most 75 CLIP tokens).")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="What to keep out.")
    model: str | None = Field(None, max_length=1000, description="One of GET /api/models (default: the default).")
    sampler: str | None = Field(None, max_length=100, description="A1111 sampler name, e.g. `Euler a`, `DPM++ 2M`.")
    schedule: str | None = Field(None, max_length=100, description="Schedule type: Automatic, Karras, ...")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Sampling steps.")
    cfg: float | None = Field(None, ge=0, le=MAX_CFG, description="Classifier-free guidance scale.")
    width: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, description="Pixels.")
    height: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, description="Pixels.")
    seed: int | None = Field(None, ge=-1, le=MAX_SEED, description="First seed (then seed+1, ...); -1 or absent: "
                             "random, and recorded.")
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        None, min_length=1, max_length=MAX_COUNT, description="One seed per image (instead of seed and count).")
    count: int | None = Field(None, ge=1, le=MAX_COUNT, description="Images to make (default 1).")
    clip_skip: int | None = Field(None, ge=1, le=MAX_CLIP_SKIP, description="CLIP layers to skip, as A1111 counts "
                                  "(1: none).")
    strength: float | None = Field(None, gt=0, le=1, description="Image-to-image: how much to change the init image.")

    def to_request(self, *, init_image: str | None = None, random: bool = True) -> GenerateRequest:
        """The request with one seed per image (random ones drawn now when no seed is given); InvalidFields."""
        problems: list[tuple[str, str]] = []
        count = self.count
        if count is not None and not 1 <= count <= MAX_COUNT:
            problems.append(("count", f"{count} is not accepted; accepted: 1 to {MAX_COUNT}"))
            count = 1
        seeds: list[int] | None
        if self.seeds is not None:
            if self.seed is not None:
                problems.append(("seed", "give either seed or seeds, not both"))
            if count is not None and count != len(self.seeds):
                problems.append(("count", f"{count} does not match the {len(self.seeds)} seeds given"))
            seeds = list(self.seeds)
        elif self.seed is not None and self.seed != -1:
            if not 0 <= self.seed <= MAX_SEED - (count or 1) + 1:
                problems.append(("seed", f"{self.seed} is out of range; accepted: 0 to {MAX_SEED} (or -1: random)"))
                seeds = None
            else:
                seeds = list(range(self.seed, self.seed + (count or 1)))
        else:
            seeds = random_seeds(count or 1) if random else None
        if problems:
            raise InvalidFields(problems)
        fields = self.model_dump(exclude={"seed", "seeds", "count", "clip_skip"}, exclude_none=True)
        return GenerateRequest(**fields, seeds=seeds, count=len(seeds) if seeds else (count or 1),
                               clip_skip=self.clip_skip if self.clip_skip is not None else 1,
                               init_image=init_image)


class GenerateRequest(BaseModel):
    """One prompt with its settings and one seed per image: the payload of a generate job."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

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
    refiner: str | None = None  # SDXL: a refiner model that runs the last steps (from the model's entry)
    refiner_start: float | None = None  # the fraction of the steps after which the refiner takes over
    init_image: str | None = Field(None, pattern=SHA256)
    strength: float | None = None
    scheduler_class: str | None = None
    scheduler_config: dict[str, Any] | None = None

    @property
    def image_count(self) -> int:
        return len(self.seeds) if self.seeds is not None else self.count


class ReproduceJob(BaseModel):
    """Payload of a reproduce job."""

    model_config = ConfigDict(extra="forbid")

    image_id: int = Field(gt=0)


class VariationsJob(BaseModel):
    """Payload of a variations job."""

    model_config = ConfigDict(extra="forbid")

    image_id: int = Field(gt=0)
    count: int = Field(4, ge=1, le=MAX_COUNT)
    seeds: list[int] | None = None


Payload = GenerateRequest | ReproduceJob | VariationsJob
PAYLOADS: dict[JobKind, type[BaseModel]] = {JobKind.GENERATE: GenerateRequest, JobKind.REPRODUCE: ReproduceJob,
                                            JobKind.VARIATIONS: VariationsJob}


def parse_payload(payload: dict[str, Any], kind: str) -> Payload:
    """The typed payload of a job of `kind` (the jobs table's column)."""
    try:
        model = PAYLOADS[JobKind(kind)]
    except ValueError:
        raise InvalidInput(f"job kind {kind!r} is unknown; accepted: {', '.join(JobKind)}") from None
    try:
        parsed = model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise InvalidInput(f"job payload field {where!r}: {first['msg']} (got {first.get('input')!r})") from exc
    return parsed  # type: ignore[return-value]


def random_seeds(count: int) -> list[int]:
    return [secrets.randbelow(2**RANDOM_SEED_BITS) for _ in range(count)]


def parse_seeds(text: str, *, argument: str = "seeds") -> list[int]:
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
    problem = seeds_problem(seeds)
    if problem:
        raise InvalidInput(f"{argument}: {problem}")
    return seeds


def seeds_problem(seeds: list[int]) -> str | None:
    if not seeds:
        return "no seeds given"
    if len(seeds) > MAX_COUNT:
        return f"{len(seeds)} seeds is too many; accepted: at most {MAX_COUNT}"
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            return f"seed {seed} is out of range; accepted: 0 to {MAX_SEED}"
    return None


def parse_size(text: str, *, argument: str = "size") -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise InvalidInput(f"{argument}: {text!r} is not a size; accepted: WIDTHxHEIGHT, e.g. 512x768")
    return int(m[1]), int(m[2])


def size_problem(value: int | None) -> str | None:
    if value is None:
        return "required"
    if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
        return f"{value} is not accepted; accepted: a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}"
    return None


def sampler_problem(sampler: str | None, schedule: str | None, *, classes: bool) -> tuple[str, str] | None:
    """(field, message) when the sampler or schedule name is unknown (class names are checked by the worker)."""
    if schedule is not None and schedule.strip() and find_schedule(schedule) is None:
        return "schedule", f"unknown schedule type {schedule!r}; accepted: {', '.join(SCHEDULES)}"
    name = (sampler or "").strip()
    if not name:
        return "sampler", f"empty sampler name; accepted: {', '.join(s.name for s in SAMPLERS)}"
    if find_sampler(name) is not None:
        return None
    split = split_old_sampler(name)
    if split and find_sampler(split[0]) is not None and find_schedule(split[1]) is not None:
        return None
    if classes and re.fullmatch(r"[A-Z][A-Za-z0-9]*Scheduler", name):
        return None
    accepted = ", ".join(s.name for s in SAMPLERS)
    return "sampler", f"unknown sampler {name!r}; accepted: {accepted}" + (
        ", or a diffusers scheduler class such as EulerDiscreteScheduler" if classes else "")


def _text_problems(name: str, text: str, count_tokens: Callable[[str], int] | None) -> list[tuple[str, str]]:
    if "\x00" in text:
        return [(name, "holds a NUL character")]
    if len(text) > MAX_PROMPT_CHARS:
        return [(name, f"{len(text)} characters is too long; accepted: at most {MAX_PROMPT_CHARS}")]
    if count_tokens is not None and text:
        tokens = count_tokens(text)
        if tokens > MAX_PROMPT_TOKENS:
            return [(name, f"{tokens} CLIP tokens is too long; accepted: at most {MAX_PROMPT_TOKENS} (the text "
                     "encoder would drop the rest)")]
    return []


def check_request(request: GenerateRequest, *, where: str = "", models: Collection[str] | None = None,
                  count_tokens: Callable[[str], int] | None = None, classes: bool = True) -> None:
    """Every setting of a filled-in request, before anything is queued or loaded; InvalidFields names each field.

    `models`: the models a caller may use (None: any). `count_tokens`: counts a prompt's CLIP tokens when a
    tokenizer is at hand. `classes`: whether diffusers scheduler class names are accepted as samplers.
    """
    problems: list[tuple[str, str]] = []
    problems += _text_problems("prompt", request.prompt, count_tokens)
    problems += _text_problems("negative_prompt", request.negative_prompt, count_tokens)
    for name in ("width", "height"):
        problem = size_problem(getattr(request, name))
        if problem:
            problems.append((name, problem))
    steps = request.steps
    if steps is None or not 1 <= steps <= MAX_STEPS:
        problems.append(("steps", f"{steps} is not accepted; accepted: 1 to {MAX_STEPS}"))
    if request.cfg is None or not math.isfinite(request.cfg) or not 0 <= request.cfg <= MAX_CFG:
        problems.append(("cfg", f"{request.cfg} is not accepted; accepted: 0 to {MAX_CFG:g}"))
    if not 1 <= request.clip_skip <= MAX_CLIP_SKIP:
        problems.append(("clip_skip", f"{request.clip_skip} is not accepted; accepted: 1 (no skip) to "
                         f"{MAX_CLIP_SKIP}, as A1111 counts it"))
    if request.seeds is not None:
        problem = seeds_problem(request.seeds)
        if problem:
            problems.append(("seeds", problem))
    elif not 1 <= request.count <= MAX_COUNT:
        problems.append(("count", f"{request.count} is not accepted; accepted: 1 to {MAX_COUNT}"))
    strength = request.strength
    if request.init_image is None and strength is not None:
        problems.append(("strength", "applies only with an init image"))
    elif request.init_image is not None:
        if strength is None or not math.isfinite(strength) or not 0 < strength <= 1:
            problems.append(("strength", f"{strength} is not accepted; accepted: more than 0, at most 1"))
        elif steps is not None and 1 <= steps and int(steps * strength) < 1:
            problems.append(("strength", f"{strength} x steps {steps} leaves no denoising step; accepted: steps "
                             "x strength of at least 1"))
    if not request.model:
        problems.append(("model", "no model given"))
    elif models is not None and request.model not in models:
        problems.append(("model", f"{request.model!r} is not available here; accepted: {', '.join(models)}"))
    if request.refiner_start is not None and not 0 < request.refiner_start < 1:
        problems.append(("refiner_start", f"{request.refiner_start} is not accepted; accepted: between 0 and 1"))
    if request.scheduler_class is None:
        named = sampler_problem(request.sampler, request.schedule, classes=classes)
        if named:
            problems.append(named)
    if problems:
        raise InvalidFields(problems, where=where)
