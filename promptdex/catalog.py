"""The models on offer and their profiles, and generation requests filled in from them (CLI, API and worker)."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from promptdex.generation import GenerateRequest
from promptdex.profiles import Profile, profile_for
from promptdex.settings import ModelsMode, Settings

TINY = "tiny"
DEFAULT_REFINER_START = 0.8


def default_model(settings: Settings) -> str:
    return TINY if settings.models == ModelsMode.TINY else settings.generator.model


def available_models(settings: Settings) -> list[str]:
    """What the API and the page offer (PROMPTDEX_GENERATOR__MODELS), the default first."""
    if settings.models == ModelsMode.TINY:
        return [TINY]
    default = settings.generator.model
    return [default, *(m for m in settings.generator.models if m != default)]


@lru_cache(maxsize=64)
def _profile(spec: str, models_path: Path) -> Profile:
    return profile_for(spec, models_path=models_path)


def model_profile(spec: str, settings: Settings) -> Profile:
    """The profile of a model, from its name and the configs on disk (cached per process)."""
    return _profile(spec, settings.models_path)


def fill_defaults(request: GenerateRequest, settings: Settings) -> GenerateRequest:
    """The request with every unset setting taken from PROMPTDEX_GENERATOR__* when set, else the model's profile."""
    model = request.model or default_model(settings)
    profile = model_profile(model, settings)
    g = settings.generator
    update: dict[str, Any] = {"model": model}
    for name, configured, recommended in (("steps", g.steps, profile.steps), ("cfg", g.cfg, profile.cfg),
                                          ("width", g.width, profile.width), ("height", g.height, profile.height)):
        if getattr(request, name) is None:
            update[name] = configured if configured is not None else recommended
    if request.sampler is None and request.scheduler_class is None:
        update["sampler"] = g.sampler or profile.sampler
        if request.schedule is None and g.sampler is None:
            update["schedule"] = profile.schedule
    refiner = g.refiners.get(model)
    if refiner and request.refiner is None and request.init_image is None:
        update.update(refiner=refiner, refiner_start=request.refiner_start or profile.refiner_start
                      or DEFAULT_REFINER_START)
    return request.model_copy(update=update)


def warnings_for(request: GenerateRequest, settings: Settings) -> list[str]:
    """Plain sentences for each value of a filled request outside its model's recommended ranges."""
    profile = model_profile(request.model or default_model(settings), settings)
    return profile.warnings(steps=int(request.steps or 0), cfg=float(request.cfg or 0),
                            width=int(request.width or 0), height=int(request.height or 0))


def batch_key(request: GenerateRequest) -> str:
    """Requests with the same key can share a pipeline call (all but prompts and seeds are equal)."""
    data = request.model_dump(exclude={"prompt", "negative_prompt", "seeds", "count"})
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]
