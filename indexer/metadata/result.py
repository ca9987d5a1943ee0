"""What a metadata reader returns: the shared parameters, the raw metadata as found, and per-sampler detail."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from promptdex.params import GenerationParams

logger = logging.getLogger(__name__)

NO_METADATA = "none"
# Software names (sd-metadata's) whose source name differs; every other software name is its own source.
_SOURCES = {"sd-webui": "a1111", "promptdex": "generated"}


def source_for(software: str) -> str:
    """The `images.source` value for a software name: "a1111", "comfyui", "novelai", "generated", ..."""
    return _SOURCES.get(software, software)


@dataclass
class PromptPart:
    """One prompt text of a sampler (ComfyUI can feed several), with where it came from."""

    text: str
    node_id: str | None = None
    weight: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.text}
        if self.node_id is not None:
            out["id"] = self.node_id
        if self.weight is not None:
            out["weight"] = self.weight
        return {**out, **self.attributes}


@dataclass
class SamplerInfo:
    """One sampling pass as the file records it. `parameters` use snake_case keys (seed, steps, cfg_scale, ...)."""

    name: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    prompts: list[PromptPart] = field(default_factory=list)
    negative_prompts: list[PromptPart] = field(default_factory=list)
    node_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "sampler_id": self.node_id, "parameters": self.parameters, "model": self.model,
            "prompts": [p.to_json() for p in self.prompts],
            "negative_prompts": [p.to_json() for p in self.negative_prompts],
        }


@dataclass
class Parsed:
    """What one front end's reader made of the metadata."""

    software: str
    params: GenerationParams = field(default_factory=GenerationParams)
    samplers: list[SamplerInfo] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    generation: dict[str, Any] | None = None


@dataclass
class ReadResult:
    """Everything read from one file. `error` is set when the file itself is unreadable (empty, truncated)."""

    file: str
    software: str = NO_METADATA
    params: GenerationParams = field(default_factory=GenerationParams)
    raw: dict[str, str] = field(default_factory=dict)
    samplers: list[SamplerInfo] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    generation: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    error: str | None = None
    provenance: dict[str, Any] | None = None  # C2PA content credentials (indexer.metadata.provenance)

    @property
    def source(self) -> str:
        return source_for(self.software)

    @property
    def has_parameters(self) -> bool:
        return self.software != NO_METADATA

    def to_json(self) -> dict[str, Any]:
        """The `promptdex inspect --json` object: flat main fields (null when absent), then the detail."""
        p = self.params
        hires = p.hires.model_dump(mode="json", exclude_none=True) if p.hires else None
        by = p.extra.get("Postprocess upscale by")
        upscale = None
        if "Postprocess upscaler" in p.extra or by:
            upscale = {"upscaler": p.extra.get("Postprocess upscaler"), "scale": to_float(by)}
        return {
            "file": self.file, "source": self.source, "software": self.software,
            "prompt": p.prompt if self.has_parameters else None,
            "negative_prompt": p.negative_prompt if self.has_parameters else None,
            "seed": p.seed, "steps": p.steps, "cfg": p.cfg, "sampler": p.sampler, "scheduler": p.scheduler,
            "width": p.width, "height": p.height, "model": p.model, "model_hash": p.model_hash,
            "clip_skip": p.clip_skip, "denoising_strength": p.denoising_strength, "hires": hires,
            "upscale": upscale, "params": p.model_dump(mode="json"),
            "samplers": [s.to_json() for s in self.samplers], "metadata": self.metadata,
            "generation": self.generation, "image": self.image, "warnings": self.warnings, "error": self.error,
            "provenance": self.provenance, "raw": self.raw,
        }


# Value helpers shared by the readers: front ends write numbers as numbers, strings, or "-1" for "random".

_INT_RE = re.compile(r"\s*[+-]?\d+(?:\.0*)?\s*")


def to_int(value: Any) -> int | None:
    """An integer from an int, a whole float, or a numeric string; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and _INT_RE.fullmatch(value):
        return int(value.strip().split(".")[0])
    return None


def to_float(value: Any) -> float | None:
    """A finite float from a number or a numeric string; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_dict(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """`value` when it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def to_str(value: Any) -> str | None:
    """A non-empty string, or None."""
    if isinstance(value, str) and value.strip():
        return value
    return None


def json_object(text: str | None, what: str, warnings: list[str]) -> dict[str, Any] | None:
    """`text` parsed as a JSON object; None (with a warning when it looked like JSON) otherwise."""
    if text is None:
        return None
    stripped = text.strip().strip("\x00")
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except ValueError as exc:
        warnings.append(f"{what}: not valid JSON ({exc})")
        return None
    if not isinstance(value, dict):
        warnings.append(f"{what}: JSON is not an object")
        return None
    return value


def snake(key: str) -> str:
    """A setting name as a snake_case key: "Random seed after every gen" -> "random_seed_after_every_gen"."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", key).strip("_").lower()


def build_params(values: dict[str, Any], warnings: list[str], what: str) -> GenerationParams:
    """GenerationParams from loosely typed values; a value of the wrong kind is dropped with a warning."""
    clean = {k: v for k, v in values.items() if v is not None}
    try:
        return GenerationParams(**clean)
    except ValueError as exc:
        warnings.append(f"{what}: some values were not usable ({exc.__class__.__name__})")
        kept: dict[str, Any] = {}
        for key, value in clean.items():
            try:
                GenerationParams(**{key: value})
            except ValueError:
                logger.debug("dropping %s=%r from %s", key, value, what)
                continue
            kept[key] = value
        return GenerationParams(**kept)
