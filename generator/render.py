"""Run one batch through a pipeline (one seeded CPU generator per image) and describe each image exactly.

`render_batch` makes the pixels; `make_record` writes the reproducibility record (DESIGN.md's contract) and
`make_params` the A1111 parameters of one image of the batch. The record holds the whole batch (prompts and
seeds in order) because kernels may round differently at another batch size; reproduce runs the same batch.

With a refiner (SDXL, diffusers' "ensemble of expert denoisers") the base runs the first `refiner_start` of the
schedule and hands its latents to the refiner, which runs the rest with the same per-image generators; the
record's `refiner` part names it and its call. `on_step` reports the steps of both stages as one count.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from generator.loading import LoadedModel, classify_model
from generator.samplers import scheduler_from_record
from promptdex import __version__
from promptdex.errors import InvalidInput
from promptdex.params import GenerationParams

logger = logging.getLogger(__name__)

RECORD_SCHEMA = "promptdex.generation/1"
RNG = "torch.Generator('cpu').manual_seed(seed), one per image, passed as a list"
OUTPUT = "diffusers output_type='pil' (round(x * 255) to uint8), RGB"
# The refiner's aesthetic conditioning: diffusers' defaults for StableDiffusionXLImg2ImgPipeline, passed explicitly
# so that the record says what was used.
AESTHETIC_SCORE = 6.0
NEGATIVE_AESTHETIC_SCORE = 2.5

StepCallback = Callable[[int, int, Any], None]  # (step, 1-based; steps in all; the latents after the step)


@dataclass(frozen=True)
class BatchItem:
    """One image of a batch: what differs between images that are made together."""

    prompt: str
    negative_prompt: str
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed}


@dataclass(frozen=True)
class RenderSpec:
    """What every image of a batch shares."""

    task: str  # "txt2img" or "img2img"
    sampler: str  # the front-end name recorded in `parameters` (A1111's, or a diffusers class name)
    schedule: str
    scheduler_class: str
    scheduler_config_json: str  # the scheduler's full config, as JSON (hashable)
    steps: int
    cfg: float
    width: int
    height: int
    clip_skip: int = 1  # A1111's count: 1 uses the last CLIP layer
    init_image: str | None = None  # sha256 of the kept init image
    strength: float | None = None
    refiner: str | None = None  # an SDXL refiner as load_pipeline's `refiner` names it
    refiner_start: float | None = None  # the fraction of the schedule the base runs (A1111's "Refiner switch at")

    @property
    def scheduler_config(self) -> dict[str, Any]:
        import json

        data: dict[str, Any] = json.loads(self.scheduler_config_json)
        return data


@dataclass
class Rendered:
    image: Any  # PIL image
    blocked: bool  # the model's safety checker replaced it


def call_arguments(spec: RenderSpec) -> dict[str, Any]:
    """The pipeline call's arguments other than prompts, generators and the init image."""
    args: dict[str, Any] = {"num_inference_steps": spec.steps, "guidance_scale": spec.cfg, "output_type": "pil"}
    if spec.task == "txt2img":
        args.update(width=spec.width, height=spec.height)
    else:
        args["strength"] = spec.strength
    if spec.clip_skip > 1:
        args["clip_skip"] = spec.clip_skip - 1  # diffusers counts the layers skipped
    if spec.refiner:  # the base stops at the switch and hands over its latents
        args.update(denoising_end=spec.refiner_start, output_type="latent")
    return args


def refiner_call_arguments(spec: RenderSpec) -> dict[str, Any]:
    """The refiner stage's call arguments other than prompts, generators and the base's latents (`image`)."""
    args: dict[str, Any] = {"num_inference_steps": spec.steps, "guidance_scale": spec.cfg,
                            "denoising_start": spec.refiner_start, "aesthetic_score": AESTHETIC_SCORE,
                            "negative_aesthetic_score": NEGATIVE_AESTHETIC_SCORE, "output_type": "pil"}
    if spec.clip_skip > 1:
        args["clip_skip"] = spec.clip_skip - 1
    return args


def pipeline_for(loaded: LoadedModel, spec: RenderSpec) -> Any:
    return loaded.pipeline if spec.task == "txt2img" else loaded.img2img()


def check_refiner(loaded: LoadedModel, spec: RenderSpec) -> None:
    """A spec's refiner and switch agree with each other and with the loaded model (InvalidInput names the field)."""
    if not spec.refiner:
        if spec.refiner_start is not None:
            raise InvalidInput(f"refiner_start: {spec.refiner_start} is set without a refiner; set refiner too, "
                               "or leave refiner_start unset")
        return
    start = spec.refiner_start
    if start is None or isinstance(start, bool) or not isinstance(start, float | int) or not 0 < start < 1:
        raise InvalidInput(f"refiner_start: {start!r} is not accepted with a refiner; accepted: a number between "
                           "0 and 1 (exclusive), the fraction of the steps the base model runs, e.g. 0.8")
    identity = loaded.refiner_identity or {}
    if loaded.refiner is None or classify_model(spec.refiner, argument="refiner").value != identity.get("spec"):
        raise InvalidInput(f"refiner: {spec.refiner!r} is not the refiner loaded with this model "
                           f"({identity.get('spec') or 'none'}); load the model with refiner={spec.refiner!r}")


def render_batch(loaded: LoadedModel, spec: RenderSpec, items: list[BatchItem], *, init_image: Any = None,
                 on_step: StepCallback | None = None) -> list[Rendered]:
    """Make the batch's images. Same model, spec, items, device, dtype, threads and versions: same pixels.

    `on_step(step, steps, latents)` is called after each denoising step (step counts from 1 to steps, over both
    stages with a refiner); an exception it raises stops the render and propagates (nothing is decoded). It does
    not change the pixels.
    """
    import torch

    check_refiner(loaded, spec)
    pipe = pipeline_for(loaded, spec)
    pipe.scheduler = _scheduler(spec, items)
    args = call_arguments(spec)
    accepted = inspect.signature(pipe.__call__).parameters
    if "clip_skip" in args and "clip_skip" not in accepted:
        raise ValueError(f"{type(pipe).__name__} does not take clip_skip")
    generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
    prompts = {"prompt": [i.prompt for i in items], "negative_prompt": [i.negative_prompt for i in items]}
    if spec.task == "img2img":
        args["image"] = init_image
    refiner = loaded.refiner if spec.refiner else None
    later = _refiner_steps(refiner, spec) if refiner is not None else 0
    with torch.inference_mode():
        result = pipe(**prompts, generator=generators, **args, **_step_arguments(on_step, before=0, after=later))
        if refiner is not None:  # the same generators go on, as one sampling run split in two
            before = int(pipe.num_timesteps)
            refiner.scheduler = _scheduler(spec, items)
            result = refiner(**prompts, image=result.images, generator=generators, **refiner_call_arguments(spec),
                             **_step_arguments(on_step, before=before, after=0))
    flags = getattr(result, "nsfw_content_detected", None) or [False] * len(items)
    return [Rendered(image.convert("RGB"), bool(flag)) for image, flag in zip(result.images, flags, strict=True)]


def _scheduler(spec: RenderSpec, items: list[BatchItem]) -> Any:
    """A new scheduler as the record describes it."""
    scheduler = scheduler_from_record(spec.scheduler_class, spec.scheduler_config)
    if spec.scheduler_class == "DPMSolverSDEScheduler":  # DPM++ SDE: one Brownian tree per image, seeded by its seed
        scheduler.noise_sampler_seed = [item.seed for item in items]
    return scheduler


def _step_arguments(on_step: StepCallback | None, *, before: int, after: int) -> dict[str, Any]:
    """diffusers' `callback_on_step_end` arguments that report each step of a stage to `on_step`.

    `before`/`after`: the steps of the stages that run before and after this one. A stage's own count is what
    its pipeline reports (`num_timesteps`, the timesteps it loops over: fewer for img2img and split runs).
    """
    if on_step is None:
        return {}

    def callback(pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        on_step(before + i + 1, before + int(pipe.num_timesteps) + after, callback_kwargs["latents"])
        return callback_kwargs

    return {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": ["latents"]}


def _refiner_steps(refiner: Any, spec: RenderSpec) -> int:
    """How many steps the refiner stage will run: its own `get_timesteps` on a new scheduler of the spec's."""
    scheduler = scheduler_from_record(spec.scheduler_class, spec.scheduler_config)
    scheduler.set_timesteps(spec.steps, device="cpu")
    _, steps = type(refiner).get_timesteps(SimpleNamespace(scheduler=scheduler), spec.steps, 1.0, "cpu",
                                           denoising_start=spec.refiner_start)
    return int(steps)


def make_record(loaded: LoadedModel, spec: RenderSpec, items: list[BatchItem], index: int,
                environment: dict[str, Any]) -> dict[str, Any]:
    """The full reproducibility record of image `index` of a batch."""
    item = items[index]
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "generator": f"promptdex {__version__}",
        "task": spec.task,
        "model": loaded.identity,
        "pipeline": type(pipeline_for(loaded, spec)).__name__,
        "scheduler": {"class": spec.scheduler_class, "config": spec.scheduler_config, "sampler": spec.sampler,
                      "schedule": spec.schedule},
        "call": call_arguments(spec),
        "prompt": item.prompt,
        "negative_prompt": item.negative_prompt,
        "seed": item.seed,
        "clip_skip": spec.clip_skip,
        "batch": {"index": index, "size": len(items), "items": [i.as_dict() for i in items]},
        "rng": RNG,
        "output": OUTPUT,
        "init_image": None,
        "environment": environment,
    }
    if spec.scheduler_class == "DPMSolverSDEScheduler":
        record["scheduler"]["noise_sampler_seed"] = "the batch's seeds, one Brownian tree per image"
    if spec.task == "img2img":
        record["init_image"] = {"sha256": spec.init_image, "size": [spec.width, spec.height],
                                "preprocess": "EXIF orientation, RGB, Lanczos resize to size when it differs"}
    if spec.refiner:  # only then, so that records without a refiner stay as they were
        record["refiner"] = {
            "model": loaded.refiner_identity,
            "pipeline": type(loaded.refiner).__name__,
            "start": spec.refiner_start,
            "call": refiner_call_arguments(spec),
            "components": "the base's text_encoder_2 and vae",
            "input": "the base stage's latents (its call has denoising_end=start, output_type='latent')",
            "scheduler": "a new instance of the record's scheduler (class, config and noise sampler seeds)",
            "rng": "the base stage's generators, continued",
        }
    return record


def make_params(loaded: LoadedModel, spec: RenderSpec, item: BatchItem) -> GenerationParams:
    """The image's A1111 parameters (what the `parameters` chunk says and the corpus filters on)."""
    identity = loaded.identity
    vae = identity.get("vae") or {}
    extra: dict[str, str] = {}
    if spec.refiner:  # A1111's keys; the record stays the source of truth
        refiner = loaded.refiner_identity or {}
        extra = {"Refiner": f"{refiner.get('name')} [{refiner.get('hash')}]",
                 "Refiner switch at": f"{spec.refiner_start:g}"}
    return GenerationParams(
        prompt=item.prompt, negative_prompt=item.negative_prompt, steps=spec.steps, sampler=spec.sampler,
        scheduler=None if spec.schedule == "Automatic" else spec.schedule, cfg=spec.cfg, seed=item.seed,
        width=spec.width, height=spec.height, model=identity.get("name"), model_hash=identity.get("hash"),
        vae=vae.get("name"), vae_hash=vae.get("hash"), clip_skip=spec.clip_skip if spec.clip_skip > 1 else None,
        denoising_strength=spec.strength if spec.task == "img2img" else None, version=f"promptdex-{__version__}",
        extra=extra,
    )


def spec_from_record(record: dict[str, Any]) -> tuple[RenderSpec, list[BatchItem], int]:
    """The spec, batch and index a generation record describes."""
    import json

    call, sched = record["call"], record["scheduler"]
    init = record.get("init_image") or {}
    refiner = record.get("refiner") or {}
    width, height = (call["width"], call["height"]) if record["task"] == "txt2img" else tuple(init["size"])
    spec = RenderSpec(
        task=record["task"], sampler=sched["sampler"], schedule=sched["schedule"], scheduler_class=sched["class"],
        scheduler_config_json=json.dumps(sched["config"], sort_keys=True), steps=call["num_inference_steps"],
        cfg=call["guidance_scale"], width=width, height=height, clip_skip=int(record.get("clip_skip") or 1),
        init_image=init.get("sha256"), strength=call.get("strength"),
        refiner=(refiner.get("model") or {}).get("spec") if refiner else None,
        refiner_start=float(refiner["start"]) if refiner else None,
    )
    items = [BatchItem(i["prompt"], i["negative_prompt"], int(i["seed"])) for i in record["batch"]["items"]]
    return spec, items, int(record["batch"]["index"])
