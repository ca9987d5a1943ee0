"""ComfyUI graphs as files carry them: PNG `prompt`/`workflow` chunks, EXIF tags of save nodes, UI workflows."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from indexer.metadata.comfyui import Graph, nodes_of
from indexer.metadata.result import json_object

logger = logging.getLogger(__name__)

# Widget order of common nodes in a UI workflow (None: a widget we skip, e.g. "control after generate").
_WIDGETS: dict[str, tuple[str | None, ...]] = {
    "KSampler": ("seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler",
                         "start_at_step", "end_at_step", "return_with_leftover_noise"),
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g",
                           "text_l"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CheckpointLoader": ("config_name", "ckpt_name"),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "CLIPSetLastLayer": ("stop_at_clip_layer",),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "VAELoader": ("vae_name",),
    "SaveImage": ("filename_prefix",),
    "UpscaleModelLoader": ("model_name",),
    "ImageScale": ("upscale_method", "width", "height", "crop"),
    "ImageScaleBy": ("upscale_method", "scale_by"),
    "LatentUpscale": ("upscale_method", "width", "height", "crop"),
    "LatentUpscaleBy": ("upscale_method", "scale_by"),
    "LoadImage": ("image", None),
    "RandomNoise": ("noise_seed", None),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "CFGGuider": ("cfg",),
    "PrimitiveNode": ("value", None),
}
_LABELLED = re.compile(r"^\s*(prompt|workflow)\s*:\s*", re.IGNORECASE)
_MUTED_MODES = (2, 4)  # never / bypass


def graph_from_workflow(workflow: dict[str, Any]) -> Graph:
    """An API-format graph from a UI workflow: links become inputs, known widgets become named values."""
    links: dict[Any, list[Any]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            links[link[0]] = [str(link[1]), link[2]]
        elif isinstance(link, dict) and "id" in link:
            links[link["id"]] = [str(link.get("origin_id")), link.get("origin_slot", 0)]
    graph: Graph = {}
    for node in workflow.get("nodes") or []:
        if not isinstance(node, dict) or node.get("mode") in _MUTED_MODES or "type" not in node:
            continue
        inputs: dict[str, Any] = {}
        widgets = node.get("widgets_values")
        if isinstance(widgets, dict):
            inputs.update(widgets)
        elif isinstance(widgets, list):
            names = _WIDGETS.get(str(node["type"]), ())
            inputs.update({name: value for name, value in zip(names, widgets, strict=False) if name is not None})
        for item in node.get("inputs") or []:
            if isinstance(item, dict) and item.get("link") in links:
                inputs[str(item.get("name"))] = links[item["link"]]
        graph[str(node.get("id"))] = {"class_type": str(node["type"]), "inputs": inputs}
    return graph


@dataclass
class FoundGraph:
    """A ComfyUI graph found in a file, where it was, and the non-node keys next to it (Civitai's extras)."""

    graph: Graph
    where: str
    extras: dict[str, Any] = field(default_factory=dict)
    workflow: dict[str, Any] | None = None


def _labelled(raw: dict[str, str]) -> dict[str, str]:
    """`prompt:`/`workflow:` texts that ComfyUI's WebP saver and other save nodes put into EXIF tags."""
    found: dict[str, str] = {}
    for value in raw.values():
        match = _LABELLED.match(value)
        if match and value[match.end():].lstrip().startswith("{"):
            found.setdefault(match.group(1).lower(), value[match.end():])
    return found


def find_graph(raw: dict[str, str], warnings: list[str]) -> FoundGraph | None:
    """The ComfyUI graph in a file's metadata, in any of the places front ends and save nodes write it."""
    workflow: dict[str, Any] | None = None
    candidates: list[tuple[str, str | None]] = [("prompt", raw.get("prompt")), ("Prompt", raw.get("Prompt"))]
    labelled = _labelled(raw)
    candidates.append(("EXIF prompt:", labelled.get("prompt")))
    for where, text in candidates:
        value = json_object(text, f"ComfyUI {where}", warnings)
        if value is not None and nodes_of(value):
            workflow = _workflow(raw, labelled, warnings)
            return FoundGraph(nodes_of(value), where, {k: v for k, v in value.items() if k not in nodes_of(value)},
                              workflow)
    comment = json_object(raw.get("UserComment"), "UserComment", warnings)
    if comment is not None:
        inner = comment.get("prompt")
        if isinstance(inner, str):
            inner = json_object(inner, "UserComment prompt", warnings)
        if isinstance(inner, dict) and nodes_of(inner):
            flow = comment.get("workflow")
            return FoundGraph(nodes_of(inner), "UserComment prompt", {},
                              flow if isinstance(flow, dict) else None)
        if nodes_of(comment):
            extras = {k: v for k, v in comment.items() if k not in nodes_of(comment)}
            return FoundGraph(nodes_of(comment), "UserComment", extras)
    workflow = _workflow(raw, labelled, warnings)
    if workflow is not None:
        graph = graph_from_workflow(workflow)
        if graph:
            return FoundGraph(graph, "workflow", {}, workflow)
    return None


def _workflow(raw: dict[str, str], labelled: dict[str, str], warnings: list[str]) -> dict[str, Any] | None:
    for where, text in (("workflow", raw.get("workflow")), ("Workflow", raw.get("Workflow")),
                        ("EXIF workflow:", labelled.get("workflow"))):
        value = json_object(text, f"ComfyUI {where}", warnings)
        if value is not None and isinstance(value.get("nodes"), list):
            return value
    return None

