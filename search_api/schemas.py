"""Response and request schemas: one per direction, lists as `{data, ...}`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_ID = 2**53 - 1  # ids stay exact in JSON numbers everywhere (JavaScript, float parsers)


def _number_only(value: Any) -> Any:
    """No coercion of `true` or `"5"` into a number (JSON Schema's integer 5.0 is still 5)."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON number, not a string or a boolean")
    return value


JsonInt = Annotated[int, BeforeValidator(_number_only)]


class SearchItem(BaseModel):
    """One image in a result list."""

    id: int
    url: str
    thumb_url: str
    prompt: str
    negative_prompt: str
    seed: int | None
    steps: int | None
    cfg: float | None
    sampler: str | None
    scheduler: str | None
    model: str | None
    model_hash: str | None
    width: int
    height: int
    source: str
    created_at: datetime
    score: float | None = None
    nsfw: bool = Field(description="Flagged: its NSFW score is at or above the strict threshold, or it is not "
                                   "scored yet (the page blurs it in moderate mode).")


class SearchResponse(BaseModel):
    data: list[SearchItem]
    next_cursor: str | None
    took_ms: float


class Reproduce(BaseModel):
    """Everything needed to make the image again."""

    a1111: str = Field(description="The AUTOMATIC1111 `parameters` text.")
    diffusers: str = Field(description="A runnable diffusers Python snippet.")
    command: str = Field(description="The `promptdex generate` command line.")
    parameters: dict[str, Any] = Field(description="The generation parameters as JSON.")


class ImageSafety(BaseModel):
    """What the NSFW classifiers said about an image."""

    score: float | None = Field(description="The highest score (0 to 1); null when nothing scored it.")
    classifier: str | None = Field(description="The classifier that gave the highest score.")
    scores: dict[str, float] = Field(description="Each classifier's score.")
    pending: bool = Field(description="Not every configured classifier has scored it yet (strict mode hides it).")


class ContentCredentials(BaseModel):
    """The C2PA content credentials (provenance) the file carried when it was imported."""

    label: str | None = Field(None, description="A known generator's friendly name (\"ChatGPT (OpenAI)\", "
                                                "\"Adobe Firefly\", \"Google Gemini\"...); null for others.")
    claim_generator: str | None = Field(None, description="The active manifest's claim generator.")
    claim_generator_version: str | None = None
    software_agent: str | None = Field(None, description="The tool its actions name (\"GPT-4o\", a model).")
    ai_generated: bool = Field(False, description="An action's digitalSourceType is trainedAlgorithmicMedia.")
    digital_source_type: str | None = Field(None, description="The IPTC digital source type, short code.")
    issuer: str | None = Field(None, description="The signing certificate's organisation.")
    signer: str | None = Field(None, description="The signing certificate's common name.")
    signed_at: str | None = Field(None, description="The signature's trusted time stamp, when it has one.")
    validation: str = Field(description="c2pa's validation state: valid, trusted or invalid.")
    validation_problems: list[str] = Field(default_factory=list, description="c2pa validation status codes "
                                           "(signingCredential.untrusted: the signer is on no trust list).")
    manifest: str | None = Field(None, description="The active manifest's label.")


class ImageDetail(SearchItem):
    """The full record of one image."""

    sha256: str
    format: str
    clip_skip: int | None
    denoising_strength: float | None
    hires: dict[str, Any] | None
    sampler_class: str | None
    scheduler_config: dict[str, Any] | None
    init_image_sha256: str | None
    generation: dict[str, Any] | None
    raw_metadata: dict[str, Any]
    provenance: ContentCredentials | None = Field(None, description="Its C2PA content credentials; null when the "
                                                                    "file carried none.")
    reproduce: Reproduce
    has_workflow: bool = Field(False, description="It carries a ComfyUI workflow: GET /api/images/{id}/workflow "
                                                  "downloads it (drop the file on ComfyUI to load it).")
    paths: list[str] = Field(default_factory=list, description="The files on the server that hold this content, "
                             "its own first (imported images; admins only, empty for everyone else).")
    safety: ImageSafety | None = Field(description="Its NSFW scores and the classifiers that gave them (admins "
                                                   "only; null for everyone else).")


class SimilarResponse(BaseModel):
    data: list[SearchItem]
    took_ms: float


class Suggestion(BaseModel):
    text: str
    score: float


class SuggestResponse(BaseModel):
    data: list[Suggestion]


class LexicaImage(BaseModel):
    """One image in Lexica's public API shape."""

    id: str
    gallery: str
    src: str
    srcSmall: str  # noqa: N815 - Lexica's field name
    prompt: str
    width: int
    height: int
    seed: str
    grid: bool
    model: str
    guidance: float
    promptid: str
    nsfw: bool


class LexicaResponse(BaseModel):
    images: list[LexicaImage]


class Facets(BaseModel):
    models: list[str]
    samplers: list[str]
    sizes: list[list[int]]


class JobCreate(BaseModel):
    """Reproduce an image, or make variations of it with new seeds."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reproduce", "variations"]
    image_id: JsonInt = Field(ge=1, le=MAX_ID)
    count: JsonInt = Field(1, ge=1, le=16, description="How many variations (variations only).")


class JobsCreated(BaseModel):
    job_ids: list[str] = Field(description="Opaque job ids, for GET /api/jobs/{id}.")


class JobProgress(BaseModel):
    step: int = Field(description="The denoising step of the pipeline call in hand, 1 to steps.")
    steps: int
    images_done: int = Field(description="Images of this job finished before the call in hand.")
    images: int = Field(description="Images this job makes.")
    fraction: float = Field(description="How much of the job is done, 0 to 1.")


class JobOut(BaseModel):
    id: str = Field(description="The job's opaque id.")
    kind: Literal["generate", "reproduce", "variations"]
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    attempts: int
    error: str | None
    image_ids: list[int]
    payload: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None = Field(description="1 for the next job a worker takes; null unless queued.")
    progress: JobProgress | None
    eta_seconds: float | None = Field(description="Estimated seconds until done, from recent jobs' speed.")
    preview: str | None = Field(description="A small preview of the image being made (data URL), while running.")
    cancel_requested: bool


class ModelProfileOut(BaseModel):
    family: str
    label: str
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    schedule: str
    steps_range: list[int]
    cfg_range: list[float]
    sizes: list[list[int]]
    notes: str
    refiner_start: float | None


class ModelOut(BaseModel):
    name: str = Field(description="What to send as `model`.")
    label: str
    default: bool
    family: str
    refiner: str | None
    profile: ModelProfileOut


class GenerationLimits(BaseModel):
    min_size: int
    max_size: int
    max_steps: int
    max_cfg: float
    max_count: int
    max_prompt_chars: int
    max_prompt_tokens: int


class ModelList(BaseModel):
    data: list[ModelOut]
    samplers: list[str]
    schedules: list[str]
    limits: GenerationLimits


class GenerationCreated(BaseModel):
    id: str = Field(description="The job's opaque id, for GET /api/jobs/{id} and its events.")
    status: Literal["queued"]
    model: str
    seeds: list[int] = Field(description="One seed per image (drawn at random when none was given).")
    count: int
    warnings: list[str] = Field(description="Settings outside the model's recommended ranges (allowed).")
    queue_position: int | None
    request: dict[str, Any] = Field(description="The full request the worker runs, defaults filled in.")


class JobList(BaseModel):
    data: list[JobOut]
    count: int


class UserOut(BaseModel):
    name: str
    role: str


class SafeModes(BaseModel):
    default: Literal["strict", "moderate", "off"] = Field(description="The level of a search that names none.")
    levels: list[Literal["strict", "moderate", "off"]] = Field(description="The levels this caller may ask for, "
                                                                            "strict first.")


class Me(BaseModel):
    """Who the caller is, what anonymous callers may do here, the CSRF token a signed-in page sends, and the
    safe-mode levels the caller may use."""

    user: UserOut | None
    via: Literal["token", "session", "anonymous"]
    anonymous: Literal["none", "read", "create"]
    csrf_token: str | None = Field(description="Send as X-CSRF-Token with every state-changing request.")
    safe: SafeModes


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: dict[str, Any]
    bundles: dict[str, Any]
    models: dict[str, Any]
