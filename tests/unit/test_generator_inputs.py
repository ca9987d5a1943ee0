"""Bad input is refused before any model is loaded, with a message naming the argument and what is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from generator.drafts import draft_request, read_prompts_file
from generator.environment import check_device_name, check_dtype_name, environment_differences
from generator.requests import check_inputs
from promptdex.errors import InvalidFields, InvalidInput
from promptdex.generation import (
    GenerateRequest,
    GenerationInput,
    ReproduceJob,
    VariationsJob,
    check_request,
    parse_payload,
    parse_seeds,
    parse_size,
)

GOOD = {"prompt": "a fox", "seeds": [1], "steps": 4, "cfg": 7.0, "sampler": "Euler a", "width": 64, "height": 64,
        "model": "tiny"}


def test_seed_lists_and_ranges() -> None:
    assert parse_seeds("1000-1003") == [1000, 1001, 1002, 1003]
    assert parse_seeds("1,5,9") == [1, 5, 9]
    assert parse_seeds("1, 5-6") == [1, 5, 6]
    for bad in ("a", "5-1", "1,,2", "-3"):
        with pytest.raises(InvalidInput, match="--seeds"):
            parse_seeds(bad, argument="--seeds")


def test_seed_and_count_make_consecutive_seeds_and_no_seed_draws_random_ones() -> None:
    assert draft_request({"prompt": "x", "seed": 7, "count": 3}).request.seeds == [7, 8, 9]
    drawn = draft_request({"prompt": "x", "count": 5}).request.seeds
    assert drawn is not None and len(drawn) == 5 and all(0 <= s < 2**32 for s in drawn)
    assert len(draft_request({"prompt": "x", "seed": -1}).request.seeds or []) == 1
    with pytest.raises(InvalidInput, match="--count 2 does not match"):
        draft_request({"prompt": "x", "seeds": "1-3", "count": 2})


def test_size_text() -> None:
    assert parse_size("512x768") == (512, 768)
    with pytest.raises(InvalidInput, match="--size.*WIDTHxHEIGHT"):
        parse_size("512", argument="--size")


def _bad(tmp_path: Path) -> list[tuple[dict[str, Any], str]]:
    return [
        ({"width": 65}, "--size: width 65"),
        ({"height": 8}, "--size: height 8"),
        ({"width": 8192}, "--size: width 8192"),
        ({"steps": 0}, "--steps: 0"),
        ({"cfg": -1.0}, "--cfg: -1"),
        ({"cfg": float("nan")}, "--cfg"),
        ({"clip_skip": 0}, "--clip-skip"),
        ({"init_image": "a" * 64, "strength": 0.0}, "--strength: 0.0"),
        ({"init_image": "a" * 64, "strength": 1.5}, "--strength: 1.5"),
        ({"init_image": "a" * 64, "strength": 0.1, "steps": 4}, "leaves no denoising step"),
        ({"strength": 0.5}, "--strength: applies only with an init image"),
        ({"sampler": "Euler b"}, "--sampler: unknown sampler 'Euler b'"),
        ({"sampler": "Euler", "schedule": "Wobbly"}, "--schedule"),
        ({"model": str(tmp_path / "missing.safetensors")}, "--model: no such file or folder"),
        ({"model": str(tmp_path)}, "--model: " + str(tmp_path) + " is a folder without model_index.json"),
        ({"model": "./models/x"}, "--model: no such file or folder"),
        ({"vae": str(tmp_path / "vae.safetensors")}, "--vae: no such file"),
        ({"seeds": [2**64]}, "--seeds: seed"),
    ]


def test_every_bad_setting_is_named(tmp_path: Path) -> None:
    for change, expected in _bad(tmp_path):
        with pytest.raises(InvalidInput) as err:
            check_inputs(GenerateRequest(**{**GOOD, **change}))
        assert expected in str(err.value), (change, str(err.value))
        assert "accepted" in str(err.value) or "applies only" in str(err.value) or "leaves" in str(err.value)


def test_a_good_request_passes() -> None:
    check_inputs(GenerateRequest(**GOOD))
    check_inputs(GenerateRequest(**{**GOOD, "init_image": "a" * 64, "strength": 1.0}))


def test_unreadable_init_image_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "init.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(InvalidInput, match="--init-image: .*init.png is not a readable image"):
        draft_request({"prompt": "x", "init_image": str(garbage), "strength": 0.5})
    with pytest.raises(InvalidInput, match="--init-image: cannot read"):
        draft_request({"prompt": "x", "init_image": str(tmp_path / "nope.png"), "strength": 0.5})


def test_init_image_gives_its_size_rounded_down(tmp_path: Path) -> None:
    path = tmp_path / "init.png"
    Image.new("RGB", (70, 45), (10, 20, 30)).save(path)
    request = draft_request({"prompt": "x", "init_image": str(path), "strength": 0.5}).request
    assert (request.width, request.height) == (64, 40)
    assert request.init_image is not None and len(request.init_image) == 64


def test_prompts_file_plain_and_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text('# a comment\n\na castle at dusk\n{"prompt": "a fox", "negative": "blurry", "seeds": "3-4", '
                    '"steps": 9, "size": "64x32"}\n')
    lines = read_prompts_file(path)
    assert [w for w, _ in lines] == ["prompts.txt:3: ", "prompts.txt:4: "]
    first = draft_request({"steps": 5, **lines[0][1]}).request
    second = draft_request({"steps": 5, **lines[1][1]}).request
    assert first.prompt == "a castle at dusk" and first.steps == 5
    assert (second.prompt, second.negative_prompt, second.seeds, second.steps) == ("a fox", "blurry", [3, 4], 9)
    assert (second.width, second.height) == (64, 32)


@pytest.mark.parametrize("line, expected", [
    ('{"prompt": "x", "stepz": 3}', "prompts.jsonl:1: unknown key(s) stepz; accepted: prompt"),
    ('{"prompt": "x"', "prompts.jsonl:1: not valid JSON"),
    ('{"negative": "x"}', 'prompts.jsonl:1: a JSON line needs a "prompt"'),
])
def test_prompts_file_errors_name_the_line(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InvalidInput) as err:
        read_prompts_file(path)
    assert expected in str(err.value)


def test_wrong_types_in_a_json_line_name_the_setting() -> None:
    with pytest.raises(InvalidInput, match=r"f:2: --steps: .*'many'"):
        draft_request({"prompt": "x", "steps": "many"}, where="f:2: ")


def test_job_payloads_parse_by_the_jobs_kind() -> None:
    generate = parse_payload({"prompt": "a fox", "count": 2}, "generate")
    assert isinstance(generate, GenerateRequest) and generate.count == 2 and generate.seeds is None
    variations = parse_payload({"image_id": 4, "count": 3}, "variations")
    assert isinstance(variations, VariationsJob) and variations.count == 3
    assert isinstance(parse_payload({"image_id": 4}, "reproduce"), ReproduceJob)
    with pytest.raises(InvalidInput, match="kind 'upscale' is unknown; accepted: generate, reproduce, variations"):
        parse_payload({}, "upscale")
    with pytest.raises(InvalidInput, match="'image_id'"):
        parse_payload({}, "reproduce")
    with pytest.raises(InvalidInput, match="'kind'"):  # the column says what a payload is; the payload does not
        parse_payload({"kind": "generate", "prompt": "x"}, "generate")


def test_the_worker_and_the_api_name_fields_as_sent_not_as_flags() -> None:
    with pytest.raises(InvalidFields) as err:
        check_request(GenerateRequest(**{**GOOD, "steps": 0, "width": 65, "cfg": -1.0}))
    assert dict(err.value.fields) == {
        "steps": "0 is not accepted; accepted: 1 to 1000",
        "width": "65 is not accepted; accepted: a multiple of 8 from 32 to 4096",
        "cfg": "-1.0 is not accepted; accepted: 0 to 100"}
    with pytest.raises(InvalidInput, match=r"^clip_skip: 0 is not accepted") as err2:
        check_inputs(GenerateRequest(**{**GOOD, "clip_skip": 0}), flags=False)
    assert "--" not in str(err2.value)
    with pytest.raises(InvalidInput, match=r"^sampler: unknown sampler 'Euler b'"):
        check_inputs(GenerateRequest(**{**GOOD, "sampler": "Euler b"}), flags=False)


def test_models_on_the_list_and_prompt_limits() -> None:
    with pytest.raises(InvalidFields, match="model: 'other' is not available here; accepted: tiny"):
        check_request(GenerateRequest(**{**GOOD, "model": "other"}), models=["tiny"])
    with pytest.raises(InvalidFields, match="prompt: 4001 characters is too long"):
        check_request(GenerateRequest(**{**GOOD, "prompt": "x" * 4001}))
    with pytest.raises(InvalidFields, match="negative_prompt: 80 CLIP tokens is too long; accepted: at most 75"):
        check_request(GenerateRequest(**{**GOOD, "negative_prompt": "a " * 80}), count_tokens=lambda t: len(t.split()))
    with pytest.raises(InvalidFields, match="prompt: holds a NUL"):
        check_request(GenerateRequest(**{**GOOD, "prompt": "a\x00b"}))
    with pytest.raises(InvalidFields, match="sampler: unknown sampler 'EulerDiscreteScheduler'"):
        check_request(GenerateRequest(**{**GOOD, "sampler": "EulerDiscreteScheduler"}), classes=False)


def test_generation_input_seeds_counts_and_strict_numbers() -> None:
    assert GenerationInput(prompt="x", seed=5, count=3).to_request().seeds == [5, 6, 7]
    drawn = GenerationInput(prompt="x", count=2).to_request().seeds
    assert drawn is not None and len(drawn) == 2
    assert GenerationInput(prompt="x", seeds=[9, 1]).to_request().count == 2
    with pytest.raises(InvalidFields, match="seed: give either seed or seeds"):
        GenerationInput(prompt="x", seed=1, seeds=[2]).to_request()
    with pytest.raises(ValueError, match="count"):  # the documented bounds are the schema's
        GenerationInput.model_validate({"prompt": "x", "count": 0})
    with pytest.raises(InvalidFields, match="seed: 18446744073709551615 is out of range"):
        GenerationInput(prompt="x", seed=2**64 - 1, count=2).to_request()
    with pytest.raises(ValueError, match="steps"):
        GenerationInput.model_validate({"prompt": "x", "steps": "20"})  # JSON text is not a number
    with pytest.raises(ValueError, match="stepz"):
        GenerationInput.model_validate({"prompt": "x", "stepz": 20})


def test_device_and_dtype_names() -> None:
    assert check_device_name("cuda:1") == "cuda:1"
    assert check_dtype_name("fp16") == "float16"
    with pytest.raises(InvalidInput, match="--device: unknown device 'gpu'; accepted: auto, cpu, cuda"):
        check_device_name("gpu")
    with pytest.raises(InvalidInput, match="--dtype: unknown dtype 'int8'; accepted: auto, float32"):
        check_dtype_name("int8")


def test_environment_differences_name_the_part() -> None:
    old = {"device": "cuda", "dtype": "float16", "torch_threads": 8, "versions": {"torch": "2.1", "diffusers": "1"}}
    new = {"device": "cpu", "dtype": "float16", "torch_threads": 2, "versions": {"torch": "2.2", "diffusers": "1"}}
    assert environment_differences(old, new) == {
        "device": ["cuda", "cpu"], "torch_threads": [8, 2], "versions.torch": ["2.1", "2.2"]}
