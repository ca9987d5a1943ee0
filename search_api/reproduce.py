"""The reproduce block of an image: A1111 text, a diffusers snippet, and the `promptdex generate` command."""

from __future__ import annotations

import json
import shlex
from typing import Any

from promptdex.params import format_a1111, split_old_sampler
from promptdex.records import Image
from promptdex.samplers import SCHEDULES, find_sampler, find_schedule
from search_api.schemas import Reproduce


def _scheduler_for(image: Image) -> tuple[str, dict[str, Any]]:
    """The scheduler class and config overrides: recorded ones for our images, else from the sampler names."""
    if image.sampler_class:
        overrides = {k: v for k, v in (image.scheduler_config or {}).items() if not k.startswith("_")}
        return image.sampler_class, overrides
    p = image.params
    sampler = find_sampler(p.sampler or "")
    schedule = find_schedule(p.scheduler or "") or "Automatic"
    if sampler is None and p.sampler:
        split = split_old_sampler(p.sampler)
        if split:
            sampler, schedule = find_sampler(split[0]), find_schedule(split[1]) or schedule
    if sampler is None:
        return "EulerDiscreteScheduler", {}
    return sampler.cls, {**sampler.overrides, **{k: v for k, v in SCHEDULES[schedule].items() if v}}


def diffusers_snippet(image: Image) -> str:
    p = image.params
    scheduler, overrides = _scheduler_for(image)
    model = p.model or "stable-diffusion-v1-5/stable-diffusion-v1-5"
    gen = image.generation or {}
    device = gen.get("device", "cuda")
    dtype = gen.get("dtype", "float16")
    lines = [
        "import torch",
        f"from diffusers import AutoPipelineForText2Image, {scheduler}",
        "",
        f"pipe = AutoPipelineForText2Image.from_pretrained({model!r}, torch_dtype=torch.{dtype})",
        f"pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config"
        + "".join(f", {k}={v!r}" for k, v in sorted(overrides.items()) if k.isidentifier() and _literal(v))
        + ")",
        f"pipe = pipe.to({device!r})",
        f"generator = torch.Generator({device!r}).manual_seed({p.seed if p.seed is not None else 0})",
        "image = pipe(",
        f"    prompt={p.prompt!r},",
        f"    negative_prompt={p.negative_prompt!r},",
        f"    num_inference_steps={p.steps or 20},",
        f"    guidance_scale={p.cfg if p.cfg is not None else 7.0},",
        f"    width={p.width or image.width}, height={p.height or image.height},",
    ]
    if p.clip_skip and p.clip_skip > 1:
        lines.append(f"    clip_skip={p.clip_skip - 1},")
    lines += ["    generator=generator,", ").images[0]", f"image.save('promptdex-{image.id}.png')"]
    return "\n".join(lines) + "\n"


def _literal(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, bool | int | float | str) or value is None


def generate_command(image: Image) -> str:
    p = image.params
    args = ["promptdex", "generate", p.prompt]
    if p.negative_prompt:
        args += ["--negative", p.negative_prompt]
    if p.seed is not None:
        args += ["--seed", str(p.seed)]
    if p.steps is not None:
        args += ["--steps", str(p.steps)]
    if p.cfg is not None:
        args += ["--cfg", f"{p.cfg:g}"]
    if p.sampler:
        args += ["--sampler", p.sampler]
    if p.scheduler:
        args += ["--schedule", p.scheduler]
    args += ["--size", f"{p.width or image.width}x{p.height or image.height}"]
    if p.model:
        args += ["--model", p.model]
    if p.clip_skip:
        args += ["--clip-skip", str(p.clip_skip)]
    return shlex.join(args)


def a1111_text(image: Image) -> str:
    """The A1111 text; parameters A1111 cannot carry (odd extras, partial hires) are left out rather than fail."""
    try:
        return format_a1111(image.params)
    except ValueError:
        return format_a1111(image.params.model_copy(update={"extra": {}, "hires": None}))


def reproduce_block(image: Image) -> Reproduce:
    return Reproduce(
        a1111=a1111_text(image),
        diffusers=diffusers_snippet(image),
        command=generate_command(image),
        parameters=image.params.model_dump(mode="json"),
    )
