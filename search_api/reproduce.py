"""The reproduce block of an image: A1111 text, a diffusers snippet, and the `promptdex generate` command."""

from __future__ import annotations

import json
import shlex
from typing import Any

from promptdex.params import format_a1111
from promptdex.records import Image
from search_api.schemas import Reproduce

# A1111 sampler names to diffusers scheduler classes and config overrides, for the snippet only
# (the generator owns the authoritative table; images we generated carry their exact class and config).
_SNIPPET_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
_SCHEDULE_FLAGS = {"Karras": {"use_karras_sigmas": True}, "Exponential": {"use_exponential_sigmas": True}}


def _scheduler_for(image: Image) -> tuple[str, dict[str, Any]]:
    if image.sampler_class:
        overrides = {k: v for k, v in (image.scheduler_config or {}).items() if not k.startswith("_")}
        return image.sampler_class, overrides
    name, overrides = _SNIPPET_SCHEDULERS.get(image.params.sampler or "", ("EulerDiscreteScheduler", {}))
    return name, {**overrides, **_SCHEDULE_FLAGS.get(image.params.scheduler or "", {})}


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
