"""Run one batch through a pipeline (one seeded CPU generator per image) and describe each image exactly.

`render_batch` makes the pixels; `make_record` writes the reproducibility record (DESIGN.md's contract) and
`make_params` the A1111 parameters of one image of the batch. The record holds the whole batch (prompts and
seeds in order) because kernels may round differently at another batch size; reproduce runs the same batch.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

from generator.loading import LoadedModel
from generator.samplers import scheduler_from_record
from promptdex import __version__
from promptdex.params import GenerationParams

logger = logging.getLogger(__name__)

RECORD_SCHEMA = "promptdex.generation/1"
RNG = "torch.Generator('cpu').manual_seed(seed), one per image, passed as a list"
OUTPUT = "diffusers output_type='pil' (round(x * 255) to uint8), RGB"


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
    return args


def pipeline_for(loaded: LoadedModel, spec: RenderSpec) -> Any:
    return loaded.pipeline if spec.task == "txt2img" else loaded.img2img()


def render_batch(loaded: LoadedModel, spec: RenderSpec, items: list[BatchItem], *, init_image: Any = None) -> list[
        Rendered]:
    """Make the batch's images. Same model, spec, items, device, dtype, threads and versions: same pixels."""
    import torch

    pipe = pipeline_for(loaded, spec)
    scheduler = scheduler_from_record(spec.scheduler_class, spec.scheduler_config)
    if spec.scheduler_class == "DPMSolverSDEScheduler":  # DPM++ SDE: one Brownian tree per image, seeded by its seed
        scheduler.noise_sampler_seed = [item.seed for item in items]
    pipe.scheduler = scheduler
    args = call_arguments(spec)
    accepted = inspect.signature(pipe.__call__).parameters
    if "clip_skip" in args and "clip_skip" not in accepted:
        raise ValueError(f"{type(pipe).__name__} does not take clip_skip")
    generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
    if spec.task == "img2img":
        args["image"] = init_image
    with torch.inference_mode():
        result = pipe(prompt=[i.prompt for i in items], negative_prompt=[i.negative_prompt for i in items],
                      generator=generators, **args)
    flags = getattr(result, "nsfw_content_detected", None) or [False] * len(items)
    return [Rendered(image.convert("RGB"), bool(flag)) for image, flag in zip(result.images, flags, strict=True)]


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
    return record


def make_params(loaded: LoadedModel, spec: RenderSpec, item: BatchItem) -> GenerationParams:
    """The image's A1111 parameters (what the `parameters` chunk says and the corpus filters on)."""
    identity = loaded.identity
    vae = identity.get("vae") or {}
    return GenerationParams(
        prompt=item.prompt, negative_prompt=item.negative_prompt, steps=spec.steps, sampler=spec.sampler,
        scheduler=None if spec.schedule == "Automatic" else spec.schedule, cfg=spec.cfg, seed=item.seed,
        width=spec.width, height=spec.height, model=identity.get("name"), model_hash=identity.get("hash"),
        vae=vae.get("name"), vae_hash=vae.get("hash"), clip_skip=spec.clip_skip if spec.clip_skip > 1 else None,
        denoising_strength=spec.strength if spec.task == "img2img" else None, version=f"promptdex-{__version__}",
    )


def spec_from_record(record: dict[str, Any]) -> tuple[RenderSpec, list[BatchItem], int]:
    """The spec, batch and index a generation record describes."""
    import json

    call, sched = record["call"], record["scheduler"]
    init = record.get("init_image") or {}
    width, height = (call["width"], call["height"]) if record["task"] == "txt2img" else tuple(init["size"])
    spec = RenderSpec(
        task=record["task"], sampler=sched["sampler"], schedule=sched["schedule"], scheduler_class=sched["class"],
        scheduler_config_json=json.dumps(sched["config"], sort_keys=True), steps=call["num_inference_steps"],
        cfg=call["guidance_scale"], width=width, height=height, clip_skip=int(record.get("clip_skip") or 1),
        init_image=init.get("sha256"), strength=call.get("strength"),
    )
    items = [BatchItem(i["prompt"], i["negative_prompt"], int(i["seed"])) for i in record["batch"]["items"]]
    return spec, items, int(record["batch"]["index"])
