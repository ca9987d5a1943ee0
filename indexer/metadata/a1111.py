"""AUTOMATIC1111 and its family (Forge, reForge, SD.Next, Civitai, Fooocus' A1111 scheme): the `parameters` text."""

from __future__ import annotations

import logging
from typing import Any

from indexer.metadata.result import Parsed, PromptPart, SamplerInfo
from promptdex.params import GenerationParams, ParamsParseError, detect_software, parse_a1111

logger = logging.getLogger(__name__)

# Fields kept as the A1111 setting they came from, so `metadata` reads like the settings line.
_AS_SETTING = (("clip_skip", "Clip skip"), ("version", "Version"), ("vae", "VAE"), ("vae_hash", "VAE hash"),
               ("denoising_strength", "Denoising strength"), ("variation_seed", "Variation seed"),
               ("variation_strength", "Variation seed strength"))


def _number(value: float | int) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def settings_metadata(p: GenerationParams) -> dict[str, Any]:
    """The settings of the text that are not sampler parameters, as A1111 names and writes them."""
    out: dict[str, Any] = {}
    if p.width is not None and p.height is not None:
        out["Size"] = f"{p.width}x{p.height}"
    for field, key in _AS_SETTING:
        value = getattr(p, field)
        if value is not None:
            out[key] = _number(value) if isinstance(value, int | float) else value
    if p.hires is not None:
        out["Hires"] = p.hires.model_dump(exclude_none=True)
    out.update(p.extra)
    return out


def sampler_of(p: GenerationParams) -> SamplerInfo:
    parameters: dict[str, Any] = {"steps": p.steps, "cfg_scale": p.cfg, "seed": p.seed, "scheduler": p.scheduler}
    model: dict[str, Any] | None = None
    if p.model or p.model_hash:
        model = {"name": p.model, **({"hash": p.model_hash} if p.model_hash else {})}
    return SamplerInfo(
        p.sampler, {k: v for k, v in parameters.items() if v is not None}, model,
        [PromptPart(p.prompt)] if p.prompt else [], [PromptPart(p.negative_prompt)] if p.negative_prompt else [])


def parse_a1111_text(text: str, raw: dict[str, str], what: str = "parameters") -> Parsed:
    """A1111-style text; text that is not (no settings line, a bad value) is reported and gives no parameters."""
    try:
        params = parse_a1111(text)
    except ParamsParseError as exc:
        return Parsed("unknown", warnings=[f"{what}: {exc}"])
    return Parsed(detect_software(text, raw), params, [sampler_of(params)], settings_metadata(params))
