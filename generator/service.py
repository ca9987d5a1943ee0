"""Generation in three stages: plan (batches and seeds) -> render (pixels, no database) -> store (files and rows).

`generate_images` runs them for `promptdex generate` (in process) and the worker (per claimed jobs); a Ray path
can run `render_batch_of` on other machines and `store_rendered` here. Images that share everything but prompt,
negative prompt and seed are batched together (up to the batch size); one model stays loaded in a `ModelCache`
while consecutive batches use it. Defaults come from the model's profile (`promptdex.catalog.fill_defaults`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from generator.environment import environment_record
from generator.loading import LoadedModel, load_pipeline, model_args_from_identity
from generator.output import load_input_image, save_image
from generator.render import BatchItem, RenderSpec, make_params, make_record, render_batch
from generator.samplers import make_scheduler, resolve_sampler, scheduler_config, scheduler_from_record
from indexer.safety import get_scorer
from promptdex.catalog import batch_key, default_model, model_profile
from promptdex.errors import InvalidInput, PromptdexError
from promptdex.generation import GenerateRequest, random_seeds
from promptdex.inputs import inputs_path
from promptdex.records import Image, NewImage
from promptdex.settings import Settings
from promptdex.storage import shared_storage

logger = logging.getLogger(__name__)


def with_seeds(request: GenerateRequest, seeds: Sequence[int] | None = None) -> GenerateRequest:
    """The request with one seed per image: its own, the given ones, or newly drawn random ones."""
    if request.seeds is not None:
        return request
    chosen = list(seeds) if seeds is not None else random_seeds(request.count)
    return request.model_copy(update={"seeds": chosen, "count": len(chosen)})


def model_key(request: GenerateRequest) -> tuple[str | None, ...]:
    return (request.model, request.model_config_path, request.revision, request.vae, request.refiner)


class ModelCache:
    """Keeps the last loaded model; loads another when a request needs it (releasing the previous one)."""

    def __init__(self, settings: Settings, *, device: str | None = None, dtype: str | None = None,
                 local_files_only: bool = False) -> None:
        self.settings = settings
        self.device = device or settings.generator.device
        self.dtype = dtype or settings.generator.dtype
        self.local_files_only = local_files_only
        self._key: tuple[str | None, ...] | None = None
        self._loaded: LoadedModel | None = None

    def get(self, request: GenerateRequest) -> LoadedModel:
        return self.get_model(model=request.model, config=request.model_config_path, revision=request.revision,
                              vae=request.vae, refiner=request.refiner)

    def get_model(self, *, model: str | None, config: str | None = None, revision: str | None = None,
                  vae: str | None = None, refiner: str | None = None) -> LoadedModel:
        key = (model, config, revision, vae, refiner)
        if self._loaded is None or key != self._key:
            self.close()
            self._loaded = load_pipeline(
                model or default_model(self.settings), device=self.device, dtype=self.dtype, vae=vae,
                config=config, revision=revision, local_files_only=self.local_files_only,
                models_path=self.settings.models_path, refiner=refiner,
            )
            self._key = key
        return self._loaded

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded.release()
        self._loaded, self._key = None, None


def spec_for(request: GenerateRequest, loaded: LoadedModel, settings: Settings) -> RenderSpec:
    """The render spec of a (checked, filled) request on a loaded model.

    A new scheduler starts from the model's own config with its profile's overrides (a turbo model's trailing
    timestep spacing, as its model card gives), then the sampler's and schedule's.
    """
    if request.scheduler_class is not None:  # an exact scheduler, e.g. from a record (--like, variations)
        cls = request.scheduler_class
        config = scheduler_config(scheduler_from_record(cls, request.scheduler_config or {}))
        sampler, schedule = request.sampler or cls, request.schedule or "Automatic"
    else:
        choice = resolve_sampler(request.sampler or "", request.schedule)
        profile = model_profile(request.model or default_model(settings), settings)
        base = {**loaded.base_scheduler_config, **profile.scheduler_overrides}
        config = scheduler_config(make_scheduler(choice, base))
        sampler, schedule, cls = choice.sampler, choice.schedule, choice.cls
    if request.clip_skip > max(loaded.text_encoder_layers, 1):
        raise InvalidInput(f"--clip-skip: {request.clip_skip} is more than the model's "
                           f"{loaded.text_encoder_layers} text encoder layers")
    return RenderSpec(
        task="img2img" if request.init_image else "txt2img", sampler=sampler, schedule=schedule,
        scheduler_class=cls, scheduler_config_json=json.dumps(config, sort_keys=True), steps=int(request.steps or 0),
        cfg=float(request.cfg or 0), width=int(request.width or 0), height=int(request.height or 0),
        clip_skip=request.clip_skip, init_image=request.init_image, strength=request.strength,
        refiner=(loaded.refiner_identity or {}).get("spec") if request.refiner else None,  # as the record gives it
        refiner_start=request.refiner_start if request.refiner else None,
    )


@dataclass
class Outcome:
    """Per request: the image ids in seed order (blocked images left out) or the error that stopped it."""

    ids: list[list[int]]
    errors: dict[int, str] = field(default_factory=dict)
    retryable: set[int] = field(default_factory=set)  # failed requests whose error may pass on a retry
    stopped: set[int] = field(default_factory=set)  # requests a hook stopped (cancelled): nothing of them written
    created: int = 0
    existing: int = 0
    blocked: int = 0


@dataclass
class Batch:
    """One pipeline call: which (request, seed) slots it fills, and the images' prompts and seeds."""

    slots: list[tuple[int, int]]
    request: GenerateRequest  # the first slot's request (all share its settings)
    items: list[BatchItem]

    @property
    def requests(self) -> list[int]:
        return sorted({ri for ri, _ in self.slots})


@dataclass
class RenderedBatch:
    """A batch's pixels and what made them; nothing is written yet."""

    batch: Batch
    loaded: LoadedModel
    spec: RenderSpec
    images: list[Any]  # PIL images, None where the model's safety checker blocked one
    environment: dict[str, Any]


class StopBatch(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a step hook: every request of the batch is to stop now (nothing of it is written)."""


Progress = Callable[[int], None]
StepHook = Callable[[Batch, int, int, Any], None]  # (batch, step, steps, latents); may raise StopBatch


def plan_batches(requests: Sequence[GenerateRequest], batch_size: int) -> list[Batch]:
    """Stage 1: the pipeline calls for requests that have their seeds, grouped by model first."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for ri, request in enumerate(requests):
        for si in range(len(request.seeds or [])):
            groups.setdefault(batch_key(request), []).append((ri, si))
    ordered = sorted(groups.values(), key=lambda g: str(model_key(requests[g[0][0]])))
    size = max(1, batch_size)
    batches = []
    for group in ordered:
        for i in range(0, len(group), size):
            slots = group[i:i + size]
            items = [BatchItem(requests[ri].prompt, requests[ri].negative_prompt, (requests[ri].seeds or [])[si])
                     for ri, si in slots]
            batches.append(Batch(slots, requests[slots[0][0]], items))
    return batches


def render_planned(settings: Settings, batch: Batch, *, cache: ModelCache,
                   on_step: Callable[[int, int, Any], None] | None = None) -> RenderedBatch:
    """Stage 2: make a batch's pixels (no database)."""
    loaded = cache.get(batch.request)
    spec = spec_for(batch.request, loaded, settings)
    init = None
    if spec.init_image:
        init = load_input_image(spec.init_image, inputs_path=inputs_path(settings), size=(spec.width, spec.height))
    rendered = render_batch(loaded, spec, batch.items, init_image=init, on_step=on_step)
    images = [None if r.blocked else r.image for r in rendered]
    return RenderedBatch(batch, loaded, spec, images, environment_record(loaded.device, loaded.dtype))


def store_batch(conn: Any, settings: Settings, rendered: RenderedBatch, *,
                skip: Collection[int] = ()) -> list[tuple[int, bool] | None]:
    """Stage 3: write the files and rows of a rendered batch; per slot (id, created), None if blocked or skipped."""
    saved: list[tuple[int, bool] | None] = []
    for index, ((ri, _), image) in enumerate(zip(rendered.batch.slots, rendered.images, strict=True)):
        if image is None or ri in skip:
            saved.append(None)
            continue
        saved.append(store_rendered(conn, settings, rendered.loaded, rendered.spec, rendered.batch.items, index,
                                    image, rendered.environment))
    return saved


def generate_images(
    conn: Any,
    settings: Settings,
    requests: Sequence[GenerateRequest],
    *,
    cache: ModelCache,
    batch_size: int,
    progress: Progress | None = None,
    after_batch: Callable[[], None] | None = None,
    fail_fast: bool = True,
    fatal: Callable[[BaseException], bool] | None = None,
    on_step: StepHook | None = None,
    stopped: Callable[[], Collection[int]] | None = None,
) -> Outcome:
    """Plan, render and store the images of checked requests that have their seeds. `conn`: autocommit.

    With `fail_fast` off, a failed batch is recorded and the next one runs, except for errors `fatal` says
    nothing more can get past (a full disk): those are raised at once. `on_step` sees every denoising step and
    may raise StopBatch; `stopped()` names requests to leave out from now on (cancelled ones): their images
    are not stored and their later batches do not run.
    """
    outcome = Outcome(ids=[[] for _ in requests])
    slots: list[list[int | None]] = [[None] * len(r.seeds or []) for r in requests]
    for batch in plan_batches(requests, batch_size):
        if stopped is not None:
            outcome.stopped.update(stopped())
        if all(ri in outcome.errors or ri in outcome.stopped for ri in batch.requests):
            if progress:
                progress(len(batch.slots))
            continue
        hook = None if on_step is None else (lambda step, steps, latents, b=batch: on_step(b, step, steps, latents))
        try:
            rendered = render_planned(settings, batch, cache=cache, on_step=hook)
            if stopped is not None:
                outcome.stopped.update(stopped())
            saved = store_batch(conn, settings, rendered, skip=outcome.stopped | set(outcome.errors))
        except StopBatch:
            outcome.stopped.update(batch.requests)
            saved = []
        except (PromptdexError, RuntimeError, ValueError, OSError) as exc:
            if fail_fast or (fatal is not None and fatal(exc)):
                raise
            message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PromptdexError) else str(exc)
            logger.error("batch of %d images failed: %s", len(batch.slots), message)
            for ri in batch.requests:
                outcome.errors.setdefault(ri, message)
                if not isinstance(exc, PromptdexError):
                    outcome.retryable.add(ri)
            saved = []
        for (ri, si), item, result in zip(batch.slots, batch.items, saved, strict=False):
            if result is None:
                if ri not in outcome.stopped and ri not in outcome.errors:
                    outcome.blocked += 1
                    logger.warning("the model's safety checker blocked seed %d of %r; not stored", item.seed,
                                   item.prompt[:60])
                continue
            slots[ri][si] = result[0]
            outcome.created += int(result[1])
            outcome.existing += int(not result[1])
        if progress:
            progress(len(batch.slots))
        if after_batch:
            after_batch()
    outcome.ids = [[i for i in row if i is not None] for row in slots]
    return outcome


def encode_rendered(loaded: LoadedModel, spec: RenderSpec, items: list[BatchItem], index: int, image: Any,
                    environment: dict[str, Any]) -> tuple[bytes, dict[str, str], NewImage]:
    """PNG bytes, text chunks and the row (sha256/path filled in by `save_image`) of one rendered image."""
    from generator.output import encode_png
    from promptdex.params import format_a1111

    record = make_record(loaded, spec, items, index, environment)
    params = make_params(loaded, spec, items[index])
    data, chunks = encode_png(image, parameters=format_a1111(params), record=record)
    row = NewImage(
        sha256="0" * 64, path="", width=image.width, height=image.height, format="PNG", params=params,
        source="generated", raw_metadata=chunks, sampler_class=spec.scheduler_class,
        scheduler_config=spec.scheduler_config, init_image_sha256=spec.init_image, generation=record,
        created_at=datetime.now().astimezone(),
    )
    return data, chunks, row


def store_rendered(conn: Any, settings: Settings, loaded: LoadedModel, spec: RenderSpec, items: list[BatchItem],
                   index: int, image: Any, environment: dict[str, Any]) -> tuple[int, bool]:
    data, _, row = encode_rendered(loaded, spec, items, index, image, environment)
    # scored before the row exists, so no search ever shows it unscored
    row.safety = get_scorer(settings).for_image(row.params.prompt, image)
    saved = save_image(conn, images_path=settings.images_path, data=data, image=row,
                       storage=shared_storage(settings, "images"))
    return saved.id, saved.created


def request_like(image: Image, *, seeds: list[int] | None = None, count: int = 1,
                 overrides: dict[str, Any] | None = None) -> GenerateRequest:
    """A request for new images with `image`'s settings: from its generation record when we made it, else from
    its A1111 parameters (then the model is the current default unless overridden)."""
    fields: dict[str, Any]
    record = image.generation
    if record and record.get("schema", "").startswith("promptdex.generation/"):
        from generator.render import spec_from_record

        spec, items, index = spec_from_record(record)
        fields = {
            "prompt": items[index].prompt, "negative_prompt": items[index].negative_prompt, "steps": spec.steps,
            "cfg": spec.cfg, "sampler": spec.sampler, "schedule": spec.schedule, "width": spec.width,
            "height": spec.height, "clip_skip": spec.clip_skip, "init_image": spec.init_image,
            "strength": spec.strength, "scheduler_class": spec.scheduler_class,
            "scheduler_config": spec.scheduler_config, **_model_fields(record["model"]),
        }
    else:
        p = image.params
        fields = {"prompt": p.prompt, "negative_prompt": p.negative_prompt, "steps": p.steps, "cfg": p.cfg,
                  "sampler": p.sampler, "schedule": p.scheduler, "width": p.width or image.width,
                  "height": p.height or image.height, "clip_skip": p.clip_skip or 1}
    changed = {k: v for k, v in (overrides or {}).items() if v is not None}
    if {"sampler", "schedule"} & set(changed):
        fields.update(scheduler_class=None, scheduler_config=None)
    if "model" in changed:
        fields.update(model_config_path=None, revision=None, vae=None)
    fields.update(changed)
    return GenerateRequest(**fields, seeds=seeds, count=len(seeds) if seeds else count)


def _model_fields(identity: dict[str, Any]) -> dict[str, Any]:
    args = model_args_from_identity(identity)
    return {"model": args["model"], "model_config_path": args["config"], "revision": args["revision"],
            "vae": args["vae"]}
