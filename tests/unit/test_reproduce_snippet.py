"""The API's reproduce block for imported images: A1111 text, diffusers snippet and command from the record."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime

from promptdex.params import GenerationParams, parse_a1111
from promptdex.records import Image
from search_api.reproduce import reproduce_block


def image(**params: object) -> Image:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return Image(id=7, prompt_id=1, sha256="a" * 64, path="/x.png", width=512, height=768, format="PNG",
                 source="a1111", created_at=now, imported_at=now,
                 params=GenerationParams(prompt="a fox, snow", negative_prompt="blurry", seed=42, steps=25, cfg=6.5,
                                         width=512, height=768, model="sd15", **params))  # type: ignore[arg-type]


def test_old_style_sampler_name_gives_the_right_scheduler_and_flags() -> None:
    block = reproduce_block(image(sampler="DPM++ 2M Karras"))
    assert "DPMSolverMultistepScheduler.from_config(pipe.scheduler.config" in block.diffusers
    assert "use_karras_sigmas=True" in block.diffusers and "algorithm_type='dpmsolver++'" in block.diffusers
    compile(block.diffusers, "snippet.py", "exec")


def test_schedule_type_and_clip_skip() -> None:
    block = reproduce_block(image(sampler="Euler a", scheduler="Exponential", clip_skip=2))
    assert "EulerAncestralDiscreteScheduler" in block.diffusers
    assert "use_exponential_sigmas=True" in block.diffusers and "clip_skip=1" in block.diffusers


def test_a1111_text_and_command_carry_the_settings() -> None:
    block = reproduce_block(image(sampler="UniPC"))
    parsed = parse_a1111(block.a1111)
    assert (parsed.prompt, parsed.seed, parsed.steps, parsed.cfg, parsed.sampler) == ("a fox, snow", 42, 25, 6.5,
                                                                                        "UniPC")
    argv = shlex.split(block.command)
    assert argv[argv.index("--seed") + 1] == "42" and argv[argv.index("--size") + 1] == "512x768"
    assert argv[argv.index("--negative") + 1] == "blurry"


def test_unknown_sampler_falls_back_to_euler() -> None:
    block = reproduce_block(image(sampler="some_custom_sampler"))
    assert "EulerDiscreteScheduler" in block.diffusers
