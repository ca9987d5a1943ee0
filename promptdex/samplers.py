"""Sampler names people use (A1111's, k-diffusion's) and schedule types, as data: diffusers class and config.

Pure data shared by the generator (which builds schedulers from it) and the API (which writes diffusers
snippets from it); no ML library is imported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    """One sampler name: its diffusers class and config overrides."""

    name: str
    cls: str
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # set when diffusers has only an approximation of the A1111 sampler


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("Euler", "EulerDiscreteScheduler"),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("Heun", "HeunDiscreteScheduler"),
    Sampler("DPM2", "KDPM2DiscreteScheduler"),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    Sampler("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}),
    Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler"),
    Sampler("DPM++ 2S a", "DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
            note="diffusers has no ancestral single-step DPM++; this is DPM++ 2S without the ancestral noise"),
    Sampler("LMS", "LMSDiscreteScheduler"),
    Sampler("DDIM", "DDIMScheduler"),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    Sampler("UniPC", "UniPCMultistepScheduler"),
    Sampler("LCM", "LCMScheduler"),
    Sampler("DDPM", "DDPMScheduler"),
    Sampler("DEIS", "DEISMultistepScheduler"),
    Sampler("PNDM", "PNDMScheduler", {"skip_prk_steps": False}),
    Sampler("TCD", "TCDScheduler"),
)
SAMPLER_ALIASES = {  # k-diffusion / old web UI spellings
    "k_euler": "Euler", "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "k_heun": "Heun",
    "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpm_2_ancestral": "DPM2 a", "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE", "k_dpmpp_3m_sde": "DPM++ 3M SDE", "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_2s_a": "DPM++ 2S a", "k_dpmpp_2s_ancestral": "DPM++ 2S a", "k_lms": "LMS", "ddim": "DDIM",
    "plms": "PLMS", "unipc": "UniPC", "euler_a": "Euler a", "euler_ancestral": "Euler a", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_sde": "DPM++ SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "lms": "LMS",
}
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# Schedule type -> config overrides. Flags a class lacks make that schedule unavailable with it.
SCHEDULES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                "timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True, "use_exponential_sigmas": False, "use_beta_sigmas": False},
    "Exponential": {"use_karras_sigmas": False, "use_exponential_sigmas": True, "use_beta_sigmas": False},
    "Beta": {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": True},
    "SGM Uniform": {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                    "timestep_spacing": "trailing"},
    "Leading": {"timestep_spacing": "leading"},
    "Linspace": {"timestep_spacing": "linspace"},
    "Trailing": {"timestep_spacing": "trailing"},
}
SCHEDULE_ALIASES = {"sgmuniform": "SGM Uniform", "sgm_uniform": "SGM Uniform", "normal": "Uniform"}




def key(name: str) -> str:
    """A name compared without case or extra spaces."""
    return re.sub(r"\s+", " ", name.strip()).casefold()


_BY_KEY = {key(s.name): s for s in SAMPLERS} | {key(a): next(s for s in SAMPLERS if s.name == n)
                                                for a, n in SAMPLER_ALIASES.items()}
_SCHEDULE_BY_KEY = {key(n): n for n in SCHEDULES} | {key(a): n for a, n in SCHEDULE_ALIASES.items()}


def find_sampler(name: str) -> Sampler | None:
    """The sampler an A1111 or k-diffusion name means, or None."""
    return _BY_KEY.get(key(name))


def find_schedule(name: str) -> str | None:
    """The schedule type a name means (e.g. "karras" -> "Karras"), or None."""
    return _SCHEDULE_BY_KEY.get(key(name))
