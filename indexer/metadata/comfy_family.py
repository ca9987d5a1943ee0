"""ComfyUI and the services built on it (Civitai, Tensor.Art, Stability Matrix): the graph, then their own JSON."""

from __future__ import annotations

import json
import logging
from typing import Any

from indexer.metadata.comfyui import GraphSummary, summarize_graph
from indexer.metadata.comfyui_graph import find_graph
from indexer.metadata.result import Parsed, as_dict, build_params, json_object, to_float, to_int, to_str
from promptdex.params import GenerationParams, ParamsParseError, parse_a1111

logger = logging.getLogger(__name__)


def _fill(values: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` unless the graph already gave it."""
    if value is not None and values.get(key) in (None, ""):
        values[key] = value


def _set(values: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` when the service's JSON has it (it knows better than the graph: real prompt, model name)."""
    if value is not None:
        values[key] = value


def _tensorart(values: dict[str, Any], data: dict[str, Any]) -> None:
    base = as_dict(data.get("baseModel"))
    _set(values, "prompt", to_str(data.get("prompt")))
    negative = data.get("negativePrompt")
    _set(values, "negative_prompt", negative if isinstance(negative, str) else None)
    _set(values, "model", to_str(base.get("modelFileName")) or to_str(base.get("label")))
    _set(values, "model_hash", to_str(base.get("hash")))
    seed = to_int(data.get("seed"))
    _fill(values, "seed", seed if seed is not None and seed >= 0 else None)
    for key, name, convert in (("steps", "steps", to_int), ("cfg", "cfgScale", to_float), ("width", "width", to_int),
                               ("height", "height", to_int), ("clip_skip", "clipSkip", to_int),
                               ("sampler", "ksamplerName", to_str), ("scheduler", "schedule", to_str)):
        _fill(values, key, convert(data.get(name)))


def _stability_matrix(values: dict[str, Any], data: dict[str, Any]) -> None:
    for key, name in (("prompt", "PositivePrompt"), ("negative_prompt", "NegativePrompt")):
        _set(values, key, data.get(name) if isinstance(data.get(name), str) else None)
    _set(values, "model_hash", to_str(data.get("ModelHash")))
    _fill(values, "model", to_str(data.get("ModelName")))
    for key, name, convert in (("steps", "Steps", to_int), ("cfg", "CfgScale", to_float), ("seed", "Seed", to_int),
                               ("width", "Width", to_int), ("height", "Height", to_int),
                               ("sampler", "Sampler", to_str)):
        _fill(values, key, convert(data.get(name)))


def _civitai(values: dict[str, Any], data: dict[str, Any], summary: GraphSummary) -> None:
    for key, name in (("prompt", "prompt"), ("negative_prompt", "negativePrompt")):
        _fill(values, key, data.get(name) if isinstance(data.get(name), str) else None)
    for key, name, convert in (("steps", "steps", to_int), ("cfg", "cfgScale", to_float), ("seed", "seed", to_int),
                               ("width", "width", to_int), ("height", "height", to_int),
                               ("clip_skip", "clipSkip", to_int), ("sampler", "sampler", to_str),
                               ("model", "baseModel", to_str)):
        _fill(values, key, convert(data.get(name)))
    if summary.post_upscaler:
        extra = values.setdefault("extra", {})
        extra["Postprocess upscaler"] = summary.post_upscaler
        target = next((t for t in data.get("transformations") or [] if isinstance(t, dict)
                       and t.get("type") == "upscale"), {})
        final_width = to_int(target.get("upscaleWidth")) or (summary.post_size[0] if summary.post_size else None)
        if final_width and values.get("width"):
            extra["Postprocess upscale by"] = f"{round(final_width / values['width'], 4):g}"


def _extra_metadata(extras: dict[str, Any], warnings: list[str]) -> dict[str, Any] | None:
    value = extras.get("extraMetadata")
    if isinstance(value, str):
        return json_object(value, "Civitai extraMetadata", warnings)
    return value if isinstance(value, dict) else None


def parse_comfy_family(raw: dict[str, str], problems: list[str]) -> Parsed | None:
    """A ComfyUI graph, merged with Civitai's, Tensor.Art's or Stability Matrix's own record when present.

    Problems met while looking (a graph that is not valid JSON) go to `problems` even when nothing is found.
    """
    warnings: list[str] = []
    found = find_graph(raw, warnings)
    tensorart = json_object(raw.get("generation_data"), "Tensor.Art generation_data", warnings)
    matrix = json_object(raw.get("parameters-json"), "Stability Matrix parameters-json", warnings)
    civitai = _extra_metadata(found.extras, warnings) if found else None
    if found is None and tensorart is None and matrix is None and "smproj" not in raw:
        problems.extend(warnings)
        return None
    summary = summarize_graph(found.graph) if found else GraphSummary(GenerationParams(), [], {})
    warnings += summary.warnings
    values = summary.params.model_dump(exclude_none=True)
    values["extra"] = dict(summary.params.extra)
    metadata: dict[str, Any] = dict(summary.metadata)
    if tensorart is not None:
        software = "tensorart"
        _tensorart(values, tensorart)
        metadata["generation_data"] = tensorart
    elif matrix is not None or "smproj" in raw:
        software = "stability-matrix"
        if found is None and "parameters" in raw:
            try:
                values = parse_a1111(raw["parameters"]).model_dump(exclude_none=True)
            except ParamsParseError as exc:
                warnings.append(f"parameters: {exc}")
        _stability_matrix(values, matrix or {})
        metadata["parameters-json"] = matrix
    elif civitai is not None:
        software = "civitai"
        _civitai(values, civitai, summary)
        metadata["extraMetadata"] = civitai
    else:
        software = "comfyui"
    if found is not None and found.extras:
        metadata.update({k: v for k, v in found.extras.items() if k != "extraMetadata"})
    params = build_params(values, warnings, software)
    logger.debug("%s graph from %s", software, found.where if found else "no graph")
    return Parsed(software, params, summary.samplers, json.loads(json.dumps(metadata)), warnings)
