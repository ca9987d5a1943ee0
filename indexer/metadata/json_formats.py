"""Front ends that write one JSON object: SwarmUI, Fooocus, RuinedFooocus, Hugging Face Spaces, Easy Diffusion."""

from __future__ import annotations

import logging
import re
from typing import Any

from indexer.metadata.result import (
    Parsed,
    PromptPart,
    SamplerInfo,
    build_params,
    json_object,
    snake,
    to_float,
    to_int,
    to_str,
)
from promptdex.params import HiresParams

logger = logging.getLogger(__name__)

_PAIR = re.compile(r"\(?\s*(\d+)\s*[,x×]\s*(\d+)\s*\)?")


def _size(value: Any) -> tuple[int | None, int | None]:
    """"(768, 1280)", "1024 x 1024" or "1024x768" as (width, height)."""
    match = _PAIR.fullmatch(value.strip()) if isinstance(value, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _sampler(name: Any, values: dict[str, Any], parameters: dict[str, Any], model_hash: str | None = None
             ) -> SamplerInfo:
    model = {"name": values["model"], **({"hash": model_hash} if model_hash else {})} if values.get("model") else None
    prompts = [PromptPart(values["prompt"])] if values.get("prompt") else []
    negatives = [PromptPart(values["negative_prompt"])] if values.get("negative_prompt") else []
    return SamplerInfo(to_str(name), {k: v for k, v in parameters.items() if v is not None}, model, prompts, negatives)


def parse_swarmui(text: str, warnings: list[str]) -> Parsed | None:
    data = json_object(text, "SwarmUI parameters", warnings) or {}
    p = data.get("sui_image_params")
    if not isinstance(p, dict):
        return None
    models = data.get("sui_models")
    models = models if isinstance(models, list) else []
    model_hash = next((to_str(m.get("hash")) for m in models if isinstance(m, dict) and m.get("param") == "model"),
                      None)
    values: dict[str, Any] = {
        "prompt": _text(p.get("prompt")), "negative_prompt": _text(p.get("negativeprompt")),
        "model": to_str(p.get("model")), "model_hash": model_hash, "seed": to_int(p.get("seed")),
        "steps": to_int(p.get("steps")), "cfg": to_float(p.get("cfgscale")), "width": to_int(p.get("width")),
        "height": to_int(p.get("height")), "sampler": to_str(p.get("sampler")),
        "scheduler": to_str(p.get("scheduler")), "version": to_str(p.get("swarm_version")),
        "clip_skip": abs(layer) if (layer := to_int(p.get("clipstopatlayer"))) else None,
    }
    if p.get("refinerupscale") is not None or p.get("refinersteps") is not None:
        values["hires"] = HiresParams(
            upscale=to_float(p.get("refinerupscale")), upscaler=to_str(p.get("refinerupscalemethod")),
            steps=to_int(p.get("refinersteps")), denoising_strength=to_float(p.get("refinercontrolpercentage")))
    parameters = {"seed": values["seed"], "steps": values["steps"], "cfg_scale": values["cfg"],
                  "scheduler": values["scheduler"]}
    used = {"prompt", "negativeprompt", "model", "seed", "steps", "cfgscale", "width", "height", "sampler",
            "scheduler", "swarm_version"}
    metadata = {k: v for k, v in p.items() if k not in used}
    metadata.update({k: v for k, v in data.items() if k != "sui_image_params"})
    params = build_params(values, warnings, "SwarmUI")
    return Parsed("swarmui", params, [_sampler(p.get("sampler"), values, parameters, model_hash)], metadata, warnings)


def parse_fooocus(data: dict[str, Any], warnings: list[str]) -> Parsed:
    """Fooocus's JSON scheme (`fooocus_scheme` = fooocus)."""
    width, height = _size(data.get("resolution"))
    values: dict[str, Any] = {
        "prompt": _text(data.get("prompt")), "negative_prompt": _text(data.get("negative_prompt")),
        "model": to_str(data.get("base_model")), "model_hash": to_str(data.get("base_model_hash")),
        "seed": to_int(data.get("seed")), "steps": to_int(data.get("steps")),
        "cfg": to_float(data.get("guidance_scale")), "width": width, "height": height,
        "sampler": to_str(data.get("sampler")), "scheduler": to_str(data.get("scheduler")),
        "clip_skip": to_int(data.get("clip_skip")), "version": to_str(data.get("version")),
    }
    parameters = {"cfg_scale": data.get("guidance_scale"), "scheduler": data.get("scheduler"),
                  "seed": data.get("seed"), "sharpness": data.get("sharpness"), "steps": data.get("steps")}
    used = {"prompt", "negative_prompt", "base_model", "base_model_hash", "seed", "steps", "guidance_scale",
            "sampler", "scheduler", "sharpness"}
    metadata = {k: v for k, v in data.items() if k not in used}
    params = build_params(values, warnings, "Fooocus")
    return Parsed("fooocus", params, [_sampler(data.get("sampler"), values, parameters, values["model_hash"])],
                  metadata, warnings)


def parse_ruined_fooocus(data: dict[str, Any], warnings: list[str]) -> Parsed:
    values: dict[str, Any] = {
        "prompt": _text(data.get("Prompt")).strip(), "negative_prompt": _text(data.get("Negative")).strip(),
        "model": to_str(data.get("base_model_name")), "model_hash": to_str(data.get("base_model_hash")),
        "seed": to_int(data.get("seed")), "steps": to_int(data.get("steps")), "cfg": to_float(data.get("cfg")),
        "width": to_int(data.get("width")), "height": to_int(data.get("height")),
        "sampler": to_str(data.get("sampler_name")), "scheduler": to_str(data.get("scheduler")),
        "clip_skip": to_int(data.get("clip_skip")), "denoising_strength": to_float(data.get("denoise")),
    }
    parameters = {"seed": values["seed"], "steps": values["steps"], "cfg_scale": values["cfg"],
                  "scheduler": values["scheduler"], "denoise": values["denoising_strength"]}
    used = {"Prompt", "Negative", "base_model_name", "base_model_hash", "seed", "steps", "cfg", "width", "height",
            "sampler_name", "scheduler", "denoise"}
    params = build_params(values, warnings, "RuinedFooocus")
    return Parsed("ruined-fooocus", params, [_sampler(data.get("sampler_name"), values, parameters,
                                                      values["model_hash"])],
                  {k: v for k, v in data.items() if k not in used}, warnings)


def parse_hf_space(data: dict[str, Any], warnings: list[str]) -> Parsed:
    width, height = _size(data.get("resolution"))
    values: dict[str, Any] = {
        "prompt": _text(data.get("prompt")), "negative_prompt": _text(data.get("negative_prompt")),
        "model": to_str(data.get("Model")), "model_hash": to_str(data.get("Model hash")),
        "seed": to_int(data.get("seed")), "steps": to_int(data.get("num_inference_steps")),
        "cfg": to_float(data.get("guidance_scale")), "width": width, "height": height,
        "sampler": to_str(data.get("sampler")),
    }
    parameters = {"seed": values["seed"], "steps": values["steps"], "cfg_scale": values["cfg"]}
    used = {"prompt", "negative_prompt", "Model", "Model hash", "seed", "num_inference_steps", "guidance_scale",
            "resolution", "sampler"}
    params = build_params(values, warnings, "Hugging Face Space")
    return Parsed("hf-space", params, [_sampler(data.get("sampler"), values, parameters, values["model_hash"])],
                  {k: v for k, v in data.items() if k not in used}, warnings)


def parse_easydiffusion(data: dict[str, Any], warnings: list[str]) -> Parsed:
    """Easy Diffusion: one JSON object, or one PNG text chunk per setting."""
    values: dict[str, Any] = {
        "prompt": _text(data.get("prompt")), "negative_prompt": _text(data.get("negative_prompt")),
        "model": to_str(data.get("use_stable_diffusion_model")), "seed": to_int(data.get("seed")),
        "steps": to_int(data.get("num_inference_steps")), "cfg": to_float(data.get("guidance_scale")),
        "width": to_int(data.get("width")), "height": to_int(data.get("height")),
        "sampler": to_str(data.get("sampler_name")), "clip_skip": to_int(data.get("clip_skip")),
    }
    parameters = {"seed": values["seed"], "steps": values["steps"], "cfg_scale": values["cfg"]}
    params = build_params(values, warnings, "Easy Diffusion")
    return Parsed("easydiffusion", params, [_sampler(data.get("sampler_name"), values, parameters)],
                  {snake(k): v for k, v in data.items() if k not in {"prompt", "negative_prompt"}}, warnings)


def parse_json_parameters(raw: dict[str, str], warnings: list[str]) -> Parsed | None:
    """A JSON `parameters` chunk (or Easy Diffusion's chunk-per-setting form), by its telltale keys."""
    text = raw.get("parameters") or raw.get("UserComment")
    if text and "sui_image_params" in text:
        return parse_swarmui(text, warnings)
    data = json_object(raw.get("parameters"), "parameters", warnings)
    if data is None and "use_stable_diffusion_model" in raw:
        data = dict(raw)
    if data is None:
        return None
    if data.get("software") == "RuinedFooocus":
        return parse_ruined_fooocus(data, warnings)
    if "use_stable_diffusion_model" in data:
        return parse_easydiffusion(data, warnings)
    if raw.get("fooocus_scheme") == "fooocus" or ("base_model" in data and "prompt" in data):
        return parse_fooocus(data, warnings)
    if "Model" in data and "resolution" in data:
        return parse_hf_space(data, warnings)
    return None
