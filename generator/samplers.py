"""Sampler names people use (A1111's, k-diffusion's) and schedule types, mapped to diffusers schedulers and configs.

A sampler is a diffusers scheduler class plus config overrides, applied on top of the model's own scheduler
config (so beta schedule, prediction type and timestep spacing stay the model's). A schedule type sets the
sigma/timestep spacing flags. Diffusers class names (`EulerDiscreteScheduler`) are accepted as samplers too.
"Automatic" keeps the model's own setting for the chosen class.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any

from promptdex.errors import ConfigError, InvalidInput
from promptdex.params import split_old_sampler
from promptdex.samplers import SAMPLERS, SCHEDULES, SIGMA_FLAGS, Sampler, find_sampler, find_schedule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerChoice:
    """A resolved sampler and schedule: the names to record and the class and overrides to build."""

    sampler: str
    schedule: str
    cls: str
    overrides: dict[str, Any]
    note: str = ""


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def _is_scheduler_class(obj: Any) -> bool:
    from diffusers import SchedulerMixin

    return inspect.isclass(obj) and issubclass(obj, SchedulerMixin) and obj is not SchedulerMixin


def scheduler_class(name: str) -> Any:
    """The diffusers scheduler class called `name`."""
    import diffusers

    obj = getattr(diffusers, name, None)
    if obj is None or not _is_scheduler_class(obj):
        raise InvalidInput(f"unknown diffusers scheduler class {name!r}")
    return obj


def _schedule(name: str | None, argument: str = "--schedule") -> str:
    if name is None or not name.strip():
        return "Automatic"
    found = find_schedule(name)
    if found is None:
        raise InvalidInput(f"{argument}: unknown schedule type {name!r}; accepted: {', '.join(SCHEDULES)}")
    return found


def _class_parameters(cls: Any) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def resolve_sampler(name: str, schedule: str | None = None, *,
                    arguments: tuple[str, str] = ("--sampler", "--schedule")) -> SamplerChoice:
    """The sampler and schedule for names like ("DPM++ 2M", "Karras"), ("DPM++ 2M Karras", None) or a class name.

    Raises InvalidInput listing the accepted names, naming the two `arguments` as the caller calls them.
    Needs diffusers importable (no model is loaded).
    """
    sampler_arg, schedule_arg = arguments
    if not name or not name.strip():
        raise InvalidInput(f"{sampler_arg}: empty sampler name; accepted: {', '.join(sampler_names())}")
    sched = _schedule(schedule, schedule_arg)
    sampler = find_sampler(name)
    if sampler is None and sched == "Automatic":
        split = split_old_sampler(name.strip())
        if split and find_sampler(split[0]) is not None:
            sampler, sched = find_sampler(split[0]), _schedule(split[1], schedule_arg)
    if sampler is None:
        obj = None
        if name.strip().endswith("Scheduler"):  # only then is diffusers worth importing
            import diffusers

            obj = getattr(diffusers, name.strip(), None)
        if obj is None or not _is_scheduler_class(obj):
            raise InvalidInput(
                f"{sampler_arg}: unknown sampler {name!r}; accepted: {', '.join(sampler_names())} "
                f"(with --schedule {', '.join(SCHEDULES)}), or a diffusers scheduler class such as "
                "EulerDiscreteScheduler"
            )
        sampler = Sampler(name.strip(), name.strip())
    cls = _loadable_class(sampler)
    overrides = dict(sampler.overrides)
    wanted = SCHEDULES[sched]
    params = _class_parameters(cls)
    missing = [k for k in wanted if k not in params and (wanted[k] or k not in SIGMA_FLAGS)]
    if missing:
        usable = [s for s, o in SCHEDULES.items() if all(k in params or (k in SIGMA_FLAGS and not v)
                                                           for k, v in o.items())]
        raise InvalidInput(
            f"{schedule_arg}: schedule type {sched!r} is not available with sampler {sampler.name!r} "
            f"({sampler.cls}); accepted with it: {', '.join(usable)}"
        )
    overrides.update({k: v for k, v in wanted.items() if k in params})
    return SamplerChoice(sampler.name, sched, sampler.cls, overrides, sampler.note)


def _loadable_class(sampler: Sampler) -> Any:
    import diffusers

    cls = getattr(diffusers, sampler.cls, None)
    if cls is None:
        raise ConfigError(f"sampler {sampler.name!r} needs {sampler.cls}, which this diffusers does not have")
    if type(cls).__name__ == "DummyObject" or "dummy" in getattr(cls, "__module__", ""):
        raise ConfigError(
            f"sampler {sampler.name!r} ({sampler.cls}) needs an optional package: install torchsde"
        )
    return cls


def make_scheduler(choice: SamplerChoice, base_config: dict[str, Any]) -> Any:
    """A new scheduler of the chosen class, from the model's scheduler config plus the choice's overrides."""
    cls = scheduler_class(choice.cls)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update(choice.overrides)
    if choice.note:
        logger.info("sampler %s: %s", choice.sampler, choice.note)
    return cls.from_config(config)


def scheduler_from_record(class_name: str, config: dict[str, Any]) -> Any:
    """The scheduler a generation record describes (class name and its full config, as `scheduler_config` gives)."""
    return scheduler_class(class_name).from_config(decode_floats(config))


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """A scheduler's full config as JSON data PostgreSQL accepts: non-finite floats become {"float": "-inf"}."""
    import json

    data: dict[str, Any] = encode_floats(json.loads(scheduler.to_json_string()))
    return data


def encode_floats(value: Any) -> Any:
    """JSON-safe copy: inf, -inf and nan (not valid JSON) become {"float": "inf" | "-inf" | "nan"}."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {k: encode_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_floats(v) for v in value]
    return value


def decode_floats(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"float"} and value["float"] in ("inf", "-inf", "nan"):
            return float(value["float"])
        return {k: decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_floats(v) for v in value]
    return value
