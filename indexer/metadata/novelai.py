"""NovelAI: PNG Title/Description/Software/Source/Comment chunks, or the same keys as JSON in a WebP UserComment."""

from __future__ import annotations

import logging
import re
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

_SOURCE = re.compile(r"^(.*?)\s+([0-9A-Fa-f]{8})$")
_USED = {"prompt", "uc", "steps", "scale", "seed", "sampler", "noise_schedule", "width", "height", "v4_prompt",
         "v4_negative_prompt"}
_SAMPLING = ("strength", "noise", "uncond_scale", "cfg_rescale")  # sampler settings kept with seed, steps, scale


def is_novelai(raw: dict[str, str]) -> bool:
    return raw.get("Software", "").startswith("NovelAI") or '\\"noise_schedule\\"' in raw.get("UserComment", "")


def _legacy_model(comment: dict[str, Any], chunks: dict[str, str]) -> str | None:
    """A model name some older NovelAI files carry: a top-level `model` key in the Comment, or its own chunk."""
    return to_str(comment.get("model")) or to_str(chunks.get("model")) or to_str(chunks.get("Model"))


def _caption(value: Any) -> dict[str, Any]:
    caption = value.get("caption") if isinstance(value, dict) else None
    return caption if isinstance(caption, dict) else {}


def _characters(v4: Any) -> list[dict[str, Any]]:
    out = []
    for char in _caption(v4).get("char_captions") or []:
        if not isinstance(char, dict):
            continue
        centers = [c for c in char.get("centers") or [] if isinstance(c, dict)]
        entry: dict[str, Any] = {"prompt": char.get("char_caption", "")}
        if centers:
            entry["center"] = {"x": centers[0].get("x"), "y": centers[0].get("y")}
        out.append(entry)
    return out


def parse_novelai(raw: dict[str, str]) -> Parsed | None:
    warnings: list[str] = []
    chunks = dict(raw)
    wrapper = json_object(raw.get("UserComment"), "NovelAI UserComment", warnings)
    if wrapper is not None and isinstance(wrapper.get("Comment"), str):  # WebP: the PNG chunks as one JSON object
        chunks.update({k: v for k, v in wrapper.items() if isinstance(v, str)})
    comment = json_object(chunks.get("Comment"), "NovelAI Comment", warnings)
    if comment is None:
        if not chunks.get("Description"):
            return None
        comment = {}
    v4, v4_negative = comment.get("v4_prompt"), comment.get("v4_negative_prompt")
    description = chunks.get("Description", "").strip("\x00").strip()
    prompt = comment.get("prompt") if isinstance(comment.get("prompt"), str) else None
    prompt = prompt or to_str(_caption(v4).get("base_caption")) or description
    negative = comment.get("uc") if isinstance(comment.get("uc"), str) else None
    negative = negative if negative is not None else _caption(v4_negative).get("base_caption", "")
    source = chunks.get("Source", "")
    match = _SOURCE.match(source.strip())
    model = {"name": match.group(1), "hash": match.group(2)} if match else ({"name": source} if source else None)
    legacy_model = _legacy_model(comment, chunks)
    values: dict[str, Any] = {
        "prompt": prompt, "model": legacy_model, "negative_prompt": negative if isinstance(negative, str) else "",
        "steps": to_int(comment.get("steps")), "cfg": to_float(comment.get("scale")),
        "seed": to_int(comment.get("seed")), "sampler": to_str(comment.get("sampler")),
        "scheduler": to_str(comment.get("noise_schedule")), "width": to_int(comment.get("width")),
        "height": to_int(comment.get("height")), "extra": {"Source": source} if source else {},
    }
    parameters = {k: comment[k] for k in _SAMPLING if k in comment}
    parameters.update({"seed": values["seed"], "steps": values["steps"], "cfg_scale": values["cfg"]})
    if values["scheduler"]:
        parameters["scheduler"] = values["scheduler"]
    used = _USED | ({"model"} if legacy_model is not None and legacy_model == comment.get("model") else set())
    metadata: dict[str, Any] = {k: v for k, v in comment.items() if k not in used and k not in parameters}
    metadata.update({k: v for k, v in chunks.items() if k in ("Title", "Generation time", "Software")})
    characters = _characters(v4)
    if characters:
        metadata["character_prompts"] = characters
        metadata["use_coords"] = as_dict(v4).get("use_coords")
        metadata["use_order"] = as_dict(v4).get("use_order")
    sampler = SamplerInfo(
        values["sampler"], {k: v for k, v in parameters.items() if v is not None}, model,
        [PromptPart(prompt)] if prompt else [], [PromptPart(values["negative_prompt"])] if negative else [])
    return Parsed("novelai", build_params(values, warnings, "NovelAI"), [sampler], metadata, warnings)
