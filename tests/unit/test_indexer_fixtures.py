"""Every shared fixture read through `read_metadata` meets the upstream parsers' own expectations (expected.json)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest

from indexer.metadata.comfyui_graph import find_graph
from indexer.metadata.reader import read_metadata
from indexer.metadata.result import ReadResult
from tests.conftest import SHARED_FIXTURES, require_shared_fixtures

# sd-parsers' generator names -> our software names (sd-metadata's).
GENERATORS = {"AUTOMATIC1111": "sd-webui", "ComfyUI": "comfyui", "Fooocus": "fooocus", "InvokeAI": "invokeai",
              "NovelAI": "novelai"}
ANY_OBJECT = "<any Object>"


def load(project: str) -> dict[str, Any]:
    return json.loads((require_shared_fixtures() / project / "expected.json").read_text(encoding="utf-8"))


def sd_metadata_cases() -> list[Any]:
    if not SHARED_FIXTURES.is_dir():
        return [pytest.param(None, id="fixtures-missing")]
    spec = json.loads((SHARED_FIXTURES / "sd-metadata" / "expected.json").read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["file"]) for case in spec["expectations"]]


def sd_parsers_cases() -> list[Any]:
    if not SHARED_FIXTURES.is_dir():
        return [pytest.param(None, id="fixtures-missing")]
    spec = json.loads((SHARED_FIXTURES / "sd-parsers" / "expected.json").read_text(encoding="utf-8"))
    return [pytest.param(name, id=name) for name in spec if not name.startswith("_")]


def sd_metadata_shape(r: ReadResult) -> dict[str, Any]:
    """Our result in sd-metadata's shape (`hires` a second sampling pass, `upscale` one without sampling)."""
    p, meta, j = r.params, r.metadata, r.to_json()
    found = find_graph(r.raw, [])
    return {
        "software": r.software, "prompt": j["prompt"], "negativePrompt": j["negative_prompt"],
        "width": p.width, "height": p.height,
        "model": None if p.model is None and p.model_hash is None else {"name": p.model, "hash": p.model_hash},
        "sampling": {"sampler": p.sampler, "scheduler": p.scheduler, "steps": p.steps, "cfg": p.cfg, "seed": p.seed,
                     "clipSkip": p.clip_skip, "denoise": p.denoising_strength},
        "hires": None if p.hires is None else {"scale": p.hires.upscale, "upscaler": p.hires.upscaler,
                                               "steps": p.hires.steps, "denoise": p.hires.denoising_strength},
        "upscale": j["upscale"],
        "nodes": found.graph if found else None,
        "characterPrompts": meta.get("character_prompts"), "useCoords": meta.get("use_coords"),
        "useOrder": meta.get("use_order"),
    }


def assert_matches(want: dict[str, Any], got: dict[str, Any], where: str = "") -> None:
    """Every key upstream states holds in ours (null means absent); keys upstream leaves out are not checked."""
    for key, value in want.items():
        here = f"{where}.{key}".lstrip(".")
        if value == ANY_OBJECT:
            assert isinstance(got.get(key), dict) and got[key], here
        elif isinstance(value, dict) and got.get(key) is not None:
            assert_matches(value, got[key], here)
        else:
            assert got.get(key) == value, here


@pytest.mark.parametrize("case", sd_metadata_cases())
def test_sd_metadata_sample(case: dict[str, Any]) -> None:
    result = read_metadata(require_shared_fixtures() / "sd-metadata" / case["file"])
    assert result.error is None and not result.warnings
    assert_matches(case["expected"], sd_metadata_shape(result))
    if "['extra', 'extraMetadata']" in "".join(case["other_assertions"]):  # the graph without Civitai's extras
        found = find_graph(result.raw, [])
        assert found is not None and {"extra", "extraMetadata"} <= set(found.extras)
        assert not {"extra", "extraMetadata"} & set(found.graph)


@pytest.mark.parametrize("name", ["png/empty.png", "webp/empty.webp", "jpg/empty.jpg", "png/gimp.png", "webp/gimp.webp",
                                  "jpg/gimp.jpg"])
def test_sd_metadata_files_without_generation_metadata(name: str) -> None:
    """sd-metadata's README: `empty.*` and `gimp*` carry no generation metadata."""
    result = read_metadata(require_shared_fixtures() / "sd-metadata" / name)
    assert result.error is None and not result.has_parameters and result.source == "none"
    assert result.to_json()["prompt"] is None and result.image is not None


def same(expected: Any, ours: Any) -> bool:
    """Upstream writes some numbers as strings ("15", "6952411511246973023"): compare them as numbers."""
    if isinstance(expected, bool) or isinstance(ours, bool):
        return bool(expected == ours)
    try:
        return Decimal(str(expected)) == Decimal(str(ours))
    except InvalidOperation:
        return bool(expected == ours)


def prompt_entries(items: list[Any]) -> list[dict[str, Any]]:
    """sd-parsers strips prompt text; entries are strings (A1111) or {id, value, ...} (ComfyUI, InvokeAI)."""
    out = [dict(item) if isinstance(item, dict) else {"value": item} for item in items]
    for entry in out:
        entry["value"] = entry["value"].strip()
    return sorted(out, key=lambda e: (str(e.get("id")), e["value"]))


def assert_prompts(want: list[Any], ours: list[dict[str, Any]]) -> None:
    expected, got = prompt_entries(want), prompt_entries(ours)
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        assert {k: g.get(k) for k in e} == e


def find_setting(r: ReadResult, key: str, value: Any) -> bool:
    """A setting sd-parsers files under `metadata`: in our metadata, in a sampler's parameters, or a params field."""
    p = r.params
    fields = {"Size": f"{p.width}x{p.height}", "Clip skip": p.clip_skip, "Version": p.version, "steps": p.steps,
              "width": p.width, "height": p.height, "clip_skip": p.clip_skip}
    candidates = [r.metadata.get(key), fields.get(key), *(s.parameters.get(key) for s in r.samplers)]
    if isinstance(value, list) and value and isinstance(value[0], dict) and "id" in value[0]:
        ours = r.metadata.get(key) or []
        return sorted(ours, key=lambda n: n["id"]) == sorted(value, key=lambda n: n["id"])
    return any(c is not None and (c == value or same(value, c)) for c in candidates)


@pytest.mark.parametrize("name", sd_parsers_cases())
def test_sd_parsers_sample(name: str) -> None:
    spec = load("sd-parsers")
    entry = spec[name]
    if "same_expectation_as" in entry:
        entry = {**spec[entry["same_expectation_as"]], **entry}
    result = read_metadata(require_shared_fixtures() / "sd-parsers" / name)
    if name == "bad_images/empty_file.png":
        assert result.error is not None and "empty file" in result.error
        return
    assert result.error is None
    if name.startswith("bad_images/empty_image"):
        assert not result.has_parameters and result.params.prompt == ""
        return
    if name == "bad_images/text_after_idat.png":
        assert result.params.prompt == "photo of a duck"
        return
    assert result.software == GENERATORS[entry["generator"]]
    if "samplers" not in entry:  # "only test_parse_images: generator and prompts non-empty"
        assert result.samplers and all(s.prompts for s in result.samplers)
        return
    ours = [s.to_json() for s in result.samplers]
    assert len(ours) == len(entry["samplers"])
    for want, got in zip(entry["samplers"], ours, strict=True):
        assert got["name"] == want["name"]
        if "sampler_id" in want:
            assert got["sampler_id"] == want["sampler_id"]
        for key, value in want["parameters"].items():
            assert same(value, got["parameters"].get(key)), key
        if "model" in want:
            assert got["model"] is not None
            for key, value in want["model"].items():
                assert got["model"].get(key) == value, key
        assert_prompts(want["prompts"], got["prompts"])
        assert_prompts(want["negative_prompts"], got["negative_prompts"])
    for key, value in entry.get("metadata", {}).items():
        assert find_setting(result, key, value), key
    subset = dict(entry.get("metadata_subset", {}))
    for key in ("full_prompt", "full_negative_prompt"):
        if f"{key}_count" in subset:
            assert len(result.metadata[key]) == subset.pop(f"{key}_count")
    for key, value in subset.items():
        assert find_setting(result, key, value), key


def test_comfyui_workflow_alone_gives_the_same_settings(tmp_path: Path) -> None:
    """A PNG that keeps only the UI `workflow` (no API `prompt`) still yields sampler, model, seed and size."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    case = next(c for c in load("sd-metadata")["expectations"] if c["file"] == "png/comfyui.png")
    source = read_metadata(require_shared_fixtures() / "sd-metadata" / "png" / "comfyui.png")
    info = PngInfo()
    info.add_text("workflow", source.raw["workflow"])
    Image.new("RGB", (4, 4)).save(tmp_path / "w.png", pnginfo=info)
    result = read_metadata(tmp_path / "w.png")
    want = case["expected"]["sampling"]
    got = sd_metadata_shape(result)
    assert result.software == "comfyui"
    assert {k: got["sampling"][k] for k in ("steps", "cfg", "sampler", "scheduler", "clipSkip")} == {
        k: want[k] for k in ("steps", "cfg", "sampler", "scheduler", "clipSkip")}
    assert (got["width"], got["height"], got["model"]["name"]) == (1024, 1024, case["expected"]["model"]["name"])
    assert "negative" not in got["prompt"] and got["negativePrompt"].startswith("bad quality")
