"""InvokeAI's three formats: `invokeai_metadata` (3.x and later), `sd-metadata` (2.x JSON) and `Dream` (1.x)."""

from __future__ import annotations

import logging
import re
import shlex
from typing import Any

from indexer.metadata.result import (
    Parsed,
    PromptPart,
    SamplerInfo,
    as_dict,
    build_params,
    json_object,
    to_float,
    to_int,
    to_str,
)

logger = logging.getLogger(__name__)

_NEGATIVE = re.compile(r"\[([^\[\]]*)\]")
# Dream command-line switches that map to parameters; the rest are kept as metadata under their switch name.
_DREAM = {"-s": "steps", "-S": "seed", "-W": "width", "-H": "height", "-C": "cfg_scale", "-A": "sampler"}


def is_invokeai(raw: dict[str, str]) -> bool:
    return any(key in raw for key in ("invokeai_metadata", "sd-metadata", "Dream"))


def _split_prompt(text: str) -> tuple[str, str]:
    """InvokeAI 1.x/2.x put negative terms in [brackets] inside the prompt."""
    negative = ", ".join(m.strip() for m in _NEGATIVE.findall(text))
    return _NEGATIVE.sub("", text).strip(), negative


def _sampler(name: str | None, parameters: dict[str, Any], model: dict[str, Any] | None, prompt: str,
             negative: str, weight: float | None = None) -> SamplerInfo:
    return SamplerInfo(
        name, {k: v for k, v in parameters.items() if v is not None}, model,
        [PromptPart(prompt, node_id="1", weight=weight)] if prompt else [],
        [PromptPart(negative, node_id="1", weight=weight)] if negative else [])


def _v3(data: dict[str, Any], warnings: list[str]) -> Parsed:
    model_in = as_dict(data.get("model"))
    name = to_str(model_in.get("name")) or to_str(model_in.get("model_name"))
    model_hash = to_str(model_in.get("hash"))
    values: dict[str, Any] = {
        "prompt": data.get("positive_prompt") if isinstance(data.get("positive_prompt"), str) else "",
        "negative_prompt": data.get("negative_prompt") if isinstance(data.get("negative_prompt"), str) else "",
        "width": to_int(data.get("width")), "height": to_int(data.get("height")), "seed": to_int(data.get("seed")),
        "cfg": to_float(data.get("cfg_scale")), "steps": to_int(data.get("steps")),
        "sampler": to_str(data.get("scheduler")),  # InvokeAI calls its sampler "scheduler"
        "model": name, "model_hash": model_hash, "clip_skip": to_int(data.get("clip_skip")) or None,
        "denoising_strength": to_float(data.get("strength")), "version": to_str(data.get("app_version")),
    }
    model_meta = {k: v for k, v in model_in.items() if k not in ("name", "model_name", "hash", "key")}
    model = {"name": name, **({"hash": model_hash} if model_hash else {}),
             **({"metadata": model_meta} if model_meta else {})} if name else None
    parameters: dict[str, Any] = {k: data.get(k) for k in ("seed", "cfg_scale", "cfg_rescale_multiplier", "steps")
                                  if k in data}
    used = {"positive_prompt", "negative_prompt", "seed", "cfg_scale", "cfg_rescale_multiplier", "steps",
            "scheduler", "model"}
    return Parsed("invokeai", build_params(values, warnings, "InvokeAI"),
                  [_sampler(values["sampler"], parameters, model, values["prompt"], values["negative_prompt"])],
                  {k: v for k, v in data.items() if k not in used}, warnings)


def _v2(data: dict[str, Any], warnings: list[str]) -> Parsed:
    image = as_dict(data.get("image"))
    prompts = image.get("prompt")
    first = as_dict(prompts[0]) if isinstance(prompts, list) and prompts else {}
    text = first.get("prompt") or (prompts if isinstance(prompts, str) else "")
    text = text if isinstance(text, str) else ""
    prompt, negative = _split_prompt(text)
    name, model_hash = to_str(data.get("model_weights")), to_str(data.get("model_hash"))
    values: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": negative, "steps": to_int(image.get("steps")),
        "cfg": to_float(image.get("cfg_scale")), "seed": to_int(image.get("seed")),
        "width": to_int(image.get("width")), "height": to_int(image.get("height")),
        "sampler": to_str(image.get("sampler")), "model": name, "model_hash": model_hash,
        "denoising_strength": to_float(image.get("strength")), "version": to_str(data.get("app_version")),
    }
    parameters: dict[str, Any] = {k: image.get(k) for k in ("steps", "cfg_scale", "threshold", "perlin", "seed")
                                  if k in image}
    model = {"name": name, **({"hash": model_hash} if model_hash else {})} if name else None
    metadata = {k: v for k, v in data.items() if k not in ("image", "model_weights", "model_hash")}
    metadata.update({k: v for k, v in image.items() if k not in {"prompt", "sampler", *parameters}})
    return Parsed("invokeai", build_params(values, warnings, "InvokeAI sd-metadata"),
                  [_sampler(values["sampler"], parameters, model, prompt, negative, to_float(first.get("weight")))],
                  metadata, warnings)


def _dream(text: str, warnings: list[str]) -> Parsed | None:
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        warnings.append(f"Dream: not a dream command line ({exc})")
        return None
    if not tokens:
        return None
    prompt, negative = _split_prompt(tokens[0])
    options: dict[str, list[str]] = {}
    current: str | None = None
    for token in tokens[1:]:
        if re.fullmatch(r"-{1,2}[A-Za-z][\w-]*", token):
            current = token
            options[current] = []
        elif current is not None:
            options[current].append(token)
    parameters: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for switch, args in options.items():
        value = args[0] if args else True
        if switch in _DREAM:
            parameters[_DREAM[switch]] = value
        else:
            metadata[switch.lstrip("-")] = value
            if len(args) > 1:
                metadata[switch.lstrip("-") + "_args"] = args
    values: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": negative, "steps": to_int(parameters.get("steps")),
        "seed": to_int(parameters.get("seed")), "cfg": to_float(parameters.get("cfg_scale")),
        "width": to_int(parameters.get("width")), "height": to_int(parameters.get("height")),
        "sampler": to_str(parameters.get("sampler")),
    }
    metadata.update({k: values[k] for k in ("width", "height") if values[k] is not None})
    sampler_parameters = {"steps": values["steps"], "cfg_scale": values["cfg"], "seed": values["seed"]}
    return Parsed("invokeai", build_params(values, warnings, "InvokeAI Dream"),
                  [_sampler(values["sampler"], sampler_parameters, None, prompt, negative)], metadata, warnings)


def parse_invokeai(raw: dict[str, str]) -> Parsed | None:
    warnings: list[str] = []
    v3 = json_object(raw.get("invokeai_metadata"), "invokeai_metadata", warnings)
    if v3 is not None:
        return _v3(v3, warnings)
    v2 = json_object(raw.get("sd-metadata"), "sd-metadata", warnings)
    if v2 is not None:
        return _v2(v2, warnings)
    if raw.get("Dream"):
        return _dream(raw["Dream"], warnings)
    return None
