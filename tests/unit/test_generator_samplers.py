"""Sampler and schedule names map to diffusers schedulers whose configs round-trip through the record."""

from __future__ import annotations

import importlib.util
import math

import pytest

from generator.samplers import (
    decode_floats,
    encode_floats,
    make_scheduler,
    resolve_sampler,
    sampler_names,
    scheduler_config,
    scheduler_from_record,
)
from generator.tiny import SCHEDULER_CONFIG
from promptdex.errors import ConfigError, InvalidInput
from promptdex.samplers import SAMPLER_ALIASES as _ALIASES
from promptdex.samplers import SAMPLERS


def resolve_sampler_class(name: str) -> str:
    by_name = {s.name: s.cls for s in SAMPLERS}
    return by_name.get(name) or by_name[_ALIASES[name]]


# The SD 1.5 scheduler config as a loaded model reports it (PNDMScheduler).
BASE = {"_class_name": "PNDMScheduler", **SCHEDULER_CONFIG, "timestep_spacing": "leading", "prediction_type": "epsilon"}


@pytest.mark.parametrize("name", [s.name for s in SAMPLERS] + sorted(_ALIASES))
def test_every_sampler_name_constructs_and_its_config_round_trips(name: str) -> None:
    if resolve_sampler_class(name) == "DPMSolverSDEScheduler" and importlib.util.find_spec("torchsde") is None:
        with pytest.raises(ConfigError, match="install torchsde"):  # the optional package DPM++ SDE needs
            resolve_sampler(name)
        return
    choice = resolve_sampler(name)
    scheduler = make_scheduler(choice, BASE)
    assert type(scheduler).__name__ == choice.cls
    assert scheduler.config.beta_schedule == "scaled_linear"  # the model's own settings are kept
    recorded = scheduler_config(scheduler)
    again = scheduler_from_record(choice.cls, recorded)
    assert type(again) is type(scheduler)
    assert scheduler_config(again) == recorded
    scheduler.set_timesteps(4)  # usable for sampling


def test_a1111_names_choose_the_documented_classes_and_options() -> None:
    assert resolve_sampler("Euler a").cls == "EulerAncestralDiscreteScheduler"
    assert resolve_sampler("DPM++ 2M SDE").overrides["algorithm_type"] == "sde-dpmsolver++"
    assert resolve_sampler("PLMS").overrides == {"skip_prk_steps": True}
    assert resolve_sampler("DPM++ 2S a").note  # an approximation says so


@pytest.mark.parametrize("sampler, schedule, key, value", [
    ("DPM++ 2M", "Karras", "use_karras_sigmas", True),
    ("Euler", "Exponential", "use_exponential_sigmas", True),
    ("Euler", "Beta", "use_beta_sigmas", True),
    ("Euler", "SGM Uniform", "timestep_spacing", "trailing"),
    ("DDIM", "Uniform", "timestep_spacing", "linspace"),
    ("DPM++ 2M Karras", None, "use_karras_sigmas", True),  # old-style name with the schedule inside
    ("dpm++ 2m", "karras", "use_karras_sigmas", True),  # case does not matter
])
def test_schedule_types_set_the_scheduler_config(sampler: str, schedule: str | None, key: str, value: object) -> None:
    choice = resolve_sampler(sampler, schedule)
    assert choice.schedule != "Automatic"
    scheduler = make_scheduler(choice, BASE)
    assert scheduler.config[key] == value


def test_automatic_keeps_the_models_own_setting() -> None:
    base = {**BASE, "use_karras_sigmas": True}
    assert make_scheduler(resolve_sampler("Euler", "Automatic"), base).config.use_karras_sigmas is True
    assert make_scheduler(resolve_sampler("Euler", "Uniform"), base).config.use_karras_sigmas is False


def test_diffusers_class_names_are_samplers_too() -> None:
    choice = resolve_sampler("EulerDiscreteScheduler", "Karras")
    assert choice.cls == "EulerDiscreteScheduler" and choice.sampler == "EulerDiscreteScheduler"


def test_unknown_sampler_lists_the_accepted_names() -> None:
    with pytest.raises(InvalidInput) as err:
        resolve_sampler("Euler b")
    message = str(err.value)
    assert "--sampler" in message and "'Euler b'" in message
    for name in sampler_names():
        assert name in message


def test_unknown_schedule_lists_the_accepted_types() -> None:
    with pytest.raises(InvalidInput, match=r"--schedule: .*'Wobbly'.*Karras"):
        resolve_sampler("Euler", "Wobbly")


def test_schedule_a_class_cannot_do_names_what_it_can() -> None:
    with pytest.raises(InvalidInput) as err:
        resolve_sampler("Euler a", "Karras")
    assert "Euler a" in str(err.value) and "Automatic" in str(err.value) and "SGM Uniform" in str(err.value)


def test_non_finite_config_values_survive_json() -> None:
    scheduler = make_scheduler(resolve_sampler("DPM++ 2M"), BASE)
    assert scheduler.config.lambda_min_clipped == -math.inf
    recorded = scheduler_config(scheduler)
    assert recorded["lambda_min_clipped"] == {"float": "-inf"}
    assert scheduler_from_record("DPMSolverMultistepScheduler", recorded).config.lambda_min_clipped == -math.inf
    assert decode_floats(encode_floats([math.inf, {"a": math.nan}]))[0] == math.inf
