"""GenerationParams and its A1111 text form: exact format, tricky parses, software detection, round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from promptdex.params import (
    GenerationParams,
    HiresParams,
    ParamsParseError,
    detect_software,
    format_a1111,
    looks_like_a1111,
    parse_a1111,
    split_old_sampler,
)

# Settings lines as A1111 itself wrote them (from the shared fixtures' sd-webui.png and automatic1111_stealth.png,
# and sd-parsers' A1111 unit-test input): reading then writing them must give the same text back.
A1111_TEXTS = [
    "a circle\nNegative prompt: a square\nSteps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, "
    "Seed: 2015833630, Size: 64x64, Model hash: 15012c538f, Model: realisticVisionV51_v51VAE, Clip skip: 2, "
    "Version: v1.9.4-169-ga30b19dd",
    "photo of a duck\nNegative prompt: monochrome\nSteps: 15, Sampler: UniPC, CFG scale: 5, Seed: 235284042, "
    'Size: 512x400, Model hash: c0d1994c73, Model: realistic_realisticVisionV20_v20, Hashes: {"vae": '
    '"c6a580b13a", "model": "c0d1994c73"}',
    "general, masterpiece\n1girl, solo\nNegative prompt: bad quality, censor,\nSteps: 20, Sampler: DPM++ 2M, "
    "Schedule type: Karras, CFG scale: 7, Seed: 3782896554, Size: 1024x1024, Model hash: 45a21ea00a, "
    "Model: waiIllustriousSDXL_v160, Version: v1.10.1",
]


def test_format_writes_the_text_a1111_writes() -> None:
    p = GenerationParams(
        prompt="a cat, sitting: on a mat\nwatercolor", negative_prompt="blurry", steps=20, sampler="DPM++ 2M",
        scheduler="Karras", cfg=7.0, seed=123, width=512, height=768, model="sd_xl_base_1.0",
        model_hash="31e35c80fc", vae="sdxl_vae.safetensors", vae_hash="235745af8d", clip_skip=2,
        variation_seed=42, variation_strength=0.25,
        hires=HiresParams(upscale=2.0, upscaler="Latent", steps=10, denoising_strength=0.7),
        version="v1.10.1", extra={"Lora hashes": "add_detail: 7c6bad76eb54", "Emphasis": "Original"},
    )
    assert format_a1111(p) == (
        "a cat, sitting: on a mat\nwatercolor\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, "
        "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, "
        "Variation seed: 42, Variation seed strength: 0.25, Denoising strength: 0.7, Clip skip: 2, "
        'Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", '
        "Emphasis: Original, Version: v1.10.1"
    )


def test_format_omits_an_empty_negative_prompt_and_writes_fractional_cfg() -> None:
    p = GenerationParams(prompt="a dog", steps=30, sampler="Euler a", cfg=7.5, seed=1, width=640, height=512)
    assert format_a1111(p) == "a dog\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 640x512"


@pytest.mark.parametrize("text", A1111_TEXTS)
def test_reading_then_writing_a1111_text_gives_it_back(text: str) -> None:
    assert format_a1111(parse_a1111(text)) == text


def test_parse_reads_every_mapped_field() -> None:
    p = parse_a1111(A1111_TEXTS[0])
    assert p == GenerationParams(
        prompt="a circle", negative_prompt="a square", steps=20, sampler="Euler", scheduler="Automatic",
        cfg=7.0, seed=2015833630, width=64, height=64, model_hash="15012c538f",
        model="realisticVisionV51_v51VAE", clip_skip=2, version="v1.9.4-169-ga30b19dd",
    )


def test_parse_unquotes_values_with_commas_colons_and_escaped_quotes() -> None:
    p = parse_a1111(
        'p\nSteps: 20, Lora hashes: "detail: 7c6bad76eb54, style: 0123456789ab", '
        'Template: "a \\"quoted\\" word, then more", Model: "my, model", Seed: 5'
    )
    assert p.extra == {"Lora hashes": "detail: 7c6bad76eb54, style: 0123456789ab",
                       "Template": 'a "quoted" word, then more'}
    assert p.model == "my, model" and p.seed == 5


def test_parse_keeps_json_values_verbatim_and_unknown_keys_in_order() -> None:
    p = parse_a1111(A1111_TEXTS[1] + ", Civitai resources: [{\"type\":\"lora\",\"weight\":0.8}], "
                    "Created Date: 2026-01-04T01:27:21.2717070Z, ADetailer model: face_yolov8n.pt, Tiling")
    assert list(p.extra) == ["Hashes", "Civitai resources", "Created Date", "ADetailer model", "Tiling"]
    assert json.loads(p.extra["Hashes"]) == {"vae": "c6a580b13a", "model": "c0d1994c73"}
    assert json.loads(p.extra["Civitai resources"]) == [{"type": "lora", "weight": 0.8}]
    assert p.extra["Created Date"] == "2026-01-04T01:27:21.2717070Z"
    assert p.extra["Tiling"] == "Tiling"  # A1111 writes a bare key when the value equals it
    assert p.model == "realistic_realisticVisionV20_v20"


@pytest.mark.parametrize(("sampler", "expected"), [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
    ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
    ("Euler a SGM Uniform", ("Euler a", "SGM Uniform")),
    ("DPM++ SDE Polyexponential", ("DPM++ SDE", "Polyexponential")),
    ("Euler a", ("Euler a", None)),
    ("euler_ancestral_karras", ("euler_ancestral_karras", None)),
    ("DDIM", ("DDIM", None)),
])
def test_old_style_sampler_names_split_off_their_schedule_type(sampler: str, expected: tuple) -> None:
    p = parse_a1111(f"p\nSteps: 20, Sampler: {sampler}, CFG scale: 7")
    assert (p.sampler, p.scheduler) == expected


def test_an_explicit_schedule_type_leaves_the_sampler_name_alone() -> None:
    p = parse_a1111("p\nSteps: 20, Sampler: DPM++ 2M Karras, Schedule type: Exponential")
    assert (p.sampler, p.scheduler) == ("DPM++ 2M Karras", "Exponential")
    assert split_old_sampler("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")


def test_hires_fields_and_denoising_strength_go_to_the_hires_pass() -> None:
    p = parse_a1111(
        "p\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 1, Size: 1024x1024, "
        "Denoising strength: 0.3, Hires CFG Scale: 6, Hires upscale: 1.5, Hires steps: 10, "
        "Hires upscaler: R-ESRGAN 4x+ Anime6B, Hires sampler: Euler a, Hires prompt: \"a, b\", RNG: CPU"
    )
    assert p.denoising_strength is None
    assert p.hires == HiresParams(upscale=1.5, upscaler="R-ESRGAN 4x+ Anime6B", steps=10, denoising_strength=0.3,
                                  cfg=6.0, sampler="Euler a", prompt="a, b")
    assert p.extra == {"RNG": "CPU"}


def test_without_hires_keys_denoising_strength_is_the_img2img_strength() -> None:
    p = parse_a1111("p\nSteps: 20, Sampler: Euler, Denoising strength: 0.75, Size: 512x512")
    assert p.hires is None and p.denoising_strength == 0.75


def test_hires_resize_and_sd_next_hires_names() -> None:
    a1111 = parse_a1111("p\nSteps: 20, Size: 512x512, Hires resize: 1024x768, Hires upscaler: Latent")
    assert a1111.hires == HiresParams(resize_width=1024, resize_height=768, upscaler="Latent")
    sdnext = parse_a1111("p\nSteps: 20, Size: 1024x1024, Sampler: DDIM, App: SD.Next, HiRes mode: 1, "
                         "Hires upscaler: ESRGAN 4x Ultrasharp, Hires scale: 1.5, Hires size: 1536x1536")
    assert sdnext.hires == HiresParams(upscale=1.5, upscaler="ESRGAN 4x Ultrasharp", resize_width=1536,
                                       resize_height=1536)
    assert sdnext.extra == {"App": "SD.Next", "HiRes mode": "1"}


def test_prompt_without_negative_multi_line_and_negative_marker_mid_line() -> None:
    p = parse_a1111("line one, \nline two: Negative prompt: not a marker\n\nSteps: 20, Seed: 3")
    assert p.prompt == "line one, \nline two: Negative prompt: not a marker"
    assert p.negative_prompt == ""
    q = parse_a1111("a\nb\nNegative prompt: c\nd\nSteps: 20")
    assert (q.prompt, q.negative_prompt) == ("a\nb", "c\nd")


def test_pieces_that_are_not_key_value_pairs_are_skipped_after_the_first_pair() -> None:
    p = parse_a1111('p\nSteps: 20, "model": broken}, Seed: 3, Tiling')
    assert (p.steps, p.seed, p.extra) == (20, 3, {"Tiling": "Tiling"})


def test_settings_only_text_and_case_of_cfg_key() -> None:
    p = parse_a1111("Steps: 20, Sampler: euler_simple, CFG Scale: 8.0, Seed: 0, Version: ComfyUI")
    assert p.prompt == "" and p.cfg == 8.0 and p.version == "ComfyUI"


@pytest.mark.parametrize(("text", "message"), [
    ("", "no A1111 settings line"),
    ("just a prompt, with commas", "no A1111 settings line"),
    ('{"prompt": "a cat", "steps": 20}', "no A1111 settings line"),
    ("a cat\nNegative prompt: dog", "no A1111 settings line"),
    ("a cat\nSteps: many, Sampler: Euler", "'Steps' has value 'many'; expected an integer"),
    ("a cat\nSteps: 20, Size: big", "'Size' has value 'big'; expected WIDTHxHEIGHT"),
])
def test_text_without_a_valid_settings_line_raises(text: str, message: str) -> None:
    with pytest.raises(ParamsParseError, match=message.replace("(", r"\(")):
        parse_a1111(text)
    assert not looks_like_a1111(text) or "Steps:" in text


@pytest.mark.parametrize(("params", "message"), [
    (GenerationParams(steps=20, width=512), "width and height"),
    (GenerationParams(steps=20, denoising_strength=0.5, hires=HiresParams(upscale=2)), "hires.denoising"),
    (GenerationParams(steps=20, hires=HiresParams(denoising_strength=0.5)), "besides denoising_strength"),
    (GenerationParams(steps=20, extra={"Steps": "30"}), "maps to a field"),
    (GenerationParams(steps=20, extra={"a, b": "c"}), "not a settings-line key"),
])
def test_format_refuses_what_a1111_text_cannot_carry(params: GenerationParams, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        format_a1111(params)


@pytest.mark.parametrize(("settings", "raw", "software"), [
    ("Steps: 20, Version: v1.10.1", {}, "sd-webui"),
    ("Steps: 20, Version: classic", {}, "forge-classic"),
    ("Steps: 20, Version: neo", {}, "forge-neo"),
    ("Steps: 20, Version: f1.0.0v2-v1.10.1RC-latest-2498-g5120e679", {}, "reforge"),
    ("Steps: 20, Version: f2.0.1v1.10.1-previous-669-gdfdcbab6", {}, "forge"),
    ("Steps: 20, App: SD.Next, Version: 56a8aea", {}, "sd-next"),
    ("Steps: 20, Civitai resources: [], Civitai metadata: {}", {}, "civitai"),
    ("Steps: 20, ADetailer version: 24.1.0, Version: ComfyUI", {}, "sd-webui"),
    ("Steps: 20, Sampler: Euler", {"smproj": "{}", "parameters": "x"}, "stability-matrix"),
    ("Steps: 20", {"generation_data": "{}"}, "tensorart"),
])
def test_detect_software(settings: str, raw: dict[str, str], software: str) -> None:
    assert detect_software(f"a prompt\n{settings}", raw) == software


# --- round trip over generated parameters -------------------------------------------------------------

_CHARS = st.characters(categories=("L", "N", "P", "S", "Zs"), include_characters=",:\"'\n\\{}[]")
_TEXT = st.text(_CHARS, max_size=40)
_FLOAT = st.floats(min_value=0, max_value=50, allow_nan=False, allow_infinity=False)
_SAMPLER = st.one_of(st.sampled_from(["Euler a", "DPM++ 2M", "UniPC", "DDIM", "LCM", "euler_ancestral"]), _TEXT)
_SCHEDULER = st.one_of(st.none(), st.sampled_from(["Karras", "Automatic", "SGM Uniform"]), _TEXT)
_KEY = st.text(st.characters(categories=("L", "N"), include_characters=" -_/.()"), min_size=1, max_size=20)


def _prompt(text: str) -> str:
    text = text.strip()
    assume(not any(line.lstrip().startswith("Negative prompt:") for line in text.split("\n")))
    return text


def _sampler_pair(draw: st.DrawFn) -> tuple[str | None, str | None]:
    sampler, scheduler = draw(st.one_of(st.none(), _SAMPLER)), draw(_SCHEDULER)
    if scheduler is None and sampler is not None:
        assume(split_old_sampler(sampler) is None)  # an old-style name reads back as sampler + scheduler
    return sampler, scheduler


@st.composite
def _hires(draw: st.DrawFn) -> HiresParams:
    sampler, scheduler = _sampler_pair(draw)
    resize = draw(st.one_of(st.none(), st.tuples(st.integers(0, 4096), st.integers(0, 4096))))
    return HiresParams(
        upscale=draw(_FLOAT), upscaler=draw(st.one_of(st.none(), _TEXT)),
        steps=draw(st.one_of(st.none(), st.integers(0, 150))),
        denoising_strength=draw(st.one_of(st.none(), st.floats(0, 1))),
        resize_width=resize[0] if resize else None, resize_height=resize[1] if resize else None,
        sampler=sampler, scheduler=scheduler, cfg=draw(st.one_of(st.none(), _FLOAT)),
        prompt=draw(st.one_of(st.none(), _TEXT)), negative_prompt=draw(st.one_of(st.none(), _TEXT)),
    )


@st.composite
def generation_params(draw: st.DrawFn) -> GenerationParams:
    sampler, scheduler = _sampler_pair(draw)
    size = draw(st.one_of(st.none(), st.tuples(st.integers(64, 4096), st.integers(64, 4096))))
    hires = draw(st.one_of(st.none(), _hires()))
    optional_text = st.one_of(st.none(), _TEXT)
    extra = draw(st.dictionaries(_KEY.map(str.strip).filter(bool), _TEXT, max_size=4))
    return GenerationParams(
        prompt=_prompt(draw(_TEXT)), negative_prompt=_prompt(draw(_TEXT)),
        steps=draw(st.integers(1, 150)), sampler=sampler, scheduler=scheduler,
        cfg=draw(st.one_of(st.none(), _FLOAT)), seed=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
        width=size[0] if size else None, height=size[1] if size else None,
        model=draw(optional_text), model_hash=draw(optional_text), vae=draw(optional_text),
        vae_hash=draw(optional_text), clip_skip=draw(st.one_of(st.none(), st.integers(1, 12))),
        denoising_strength=None if hires else draw(st.one_of(st.none(), st.floats(0, 1))),
        variation_seed=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        variation_strength=draw(st.one_of(st.none(), st.floats(0, 1))),
        hires=hires, version=draw(optional_text),
        extra={k: v for k, v in extra.items() if k.casefold() not in _MAPPED},
    )


_MAPPED = {k.casefold() for k in (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Denoising strength", "Clip skip", "Version", "Hires sampler",
    "Hires prompt", "Hires negative prompt", "Hires CFG Scale", "Hires schedule type", "Hires upscale",
    "Hires resize", "Hires steps", "Hires upscaler", "Hires scale", "Hires size",
)}


@settings(max_examples=400, deadline=None)
@given(generation_params())
def test_parse_of_format_is_the_identity(p: GenerationParams) -> None:
    assert parse_a1111(format_a1111(p)) == p
