"""SDXL base + refiner on the tiny SDXL pair: two stages, deterministic bytes, a record that makes the image again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from generator.environment import environment_record, torch_threads
from generator.loading import LoadedModel, load_pipeline
from generator.render import BatchItem, RenderSpec, make_params, make_record, render_batch, spec_from_record
from generator.samplers import make_scheduler, resolve_sampler, scheduler_config
from generator.tiny import (
    TINY_SDXL_NAME,
    TINY_SDXL_REFINER_NAME,
    ensure_tiny_model,
    ensure_tiny_sdxl,
    ensure_tiny_sdxl_refiner,
)
from promptdex.errors import InvalidInput
from promptdex.params import parse_a1111

THREADS = 2
STEPS, START = 5, 0.8
ITEMS = [BatchItem("a lighthouse at dusk", "blurry", 21)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "generator-models"  # shared with the other generator tests
    ensure_tiny_sdxl(path)
    ensure_tiny_sdxl_refiner(path)
    return path


@pytest.fixture(scope="module")
def refiner_folder(models: Path) -> str:
    return str(ensure_tiny_sdxl_refiner(models).resolve())


@pytest.fixture(scope="module")
def sdxl(models: Path, refiner_folder: str) -> Iterator[LoadedModel]:
    loaded = load_pipeline(str(ensure_tiny_sdxl(models)), device="cpu", models_path=models, refiner=refiner_folder)
    yield loaded
    loaded.release()


def render_spec(loaded: LoadedModel, **fields: Any) -> RenderSpec:
    choice = resolve_sampler("Euler a", None)
    config = scheduler_config(make_scheduler(choice, loaded.base_scheduler_config))
    values: dict[str, Any] = {"task": "txt2img", "sampler": choice.sampler, "schedule": choice.schedule,
                              "scheduler_class": choice.cls,
                              "scheduler_config_json": json.dumps(config, sort_keys=True),
                              "steps": STEPS, "cfg": 6.0, "width": 64, "height": 64, **fields}
    return RenderSpec(**values)


def refined(loaded: LoadedModel, refiner: str) -> RenderSpec:
    return render_spec(loaded, refiner=refiner, refiner_start=START)


def encoded(loaded: LoadedModel, spec: RenderSpec, on_step: Any = None) -> tuple[bytes, Any]:
    from generator.service import encode_rendered

    with torch_threads(THREADS):
        image = render_batch(loaded, spec, ITEMS, on_step=on_step)[0].image
        environment = environment_record(loaded.device, loaded.dtype)
    return encode_rendered(loaded, spec, ITEMS, 0, image, environment)[0], image


def test_the_tiny_pair_is_sdxl_shaped(sdxl: LoadedModel, refiner_folder: str) -> None:
    assert sdxl.identity["pipeline"] == "StableDiffusionXLPipeline" and sdxl.identity["name"] == TINY_SDXL_NAME
    identity = sdxl.refiner_identity or {}
    assert identity["pipeline"] == "StableDiffusionXLImg2ImgPipeline" and identity["name"] == TINY_SDXL_REFINER_NAME
    assert (identity["source"], identity["spec"]) == ("folder", refiner_folder)
    assert identity["hash"] == identity["sha256"][:10] and set(sdxl.identity) <= set(identity)
    assert sdxl.refiner.text_encoder is None and sdxl.refiner.config.requires_aesthetics_score
    assert sdxl.refiner.text_encoder_2 is sdxl.pipeline.text_encoder_2 and sdxl.refiner.vae is sdxl.pipeline.vae


def test_refined_renders_are_identical_and_differ_from_the_base_alone(sdxl: LoadedModel,
                                                                      refiner_folder: str) -> None:
    first, image = encoded(sdxl, refined(sdxl, refiner_folder))
    second, _ = encoded(sdxl, refined(sdxl, refiner_folder))
    assert first == second
    _, base_only = encoded(sdxl, render_spec(sdxl))
    assert np.asarray(image).shape == (64, 64, 3)
    assert not np.array_equal(np.asarray(image), np.asarray(base_only))


def test_on_step_counts_both_stages_as_one(sdxl: LoadedModel, refiner_folder: str) -> None:
    calls: list[tuple[int, int]] = []
    with_callback, _ = encoded(sdxl, refined(sdxl, refiner_folder), lambda s, n, latents: calls.append((s, n)))
    assert calls == [(i, STEPS) for i in range(1, STEPS + 1)]
    # SDXL's "leading" schedule for 5 steps is 801, 601, 401, 201, 1; a switch at 0.8 cuts at timestep 200
    assert (sdxl.pipeline.num_timesteps, sdxl.refiner.num_timesteps) == (4, 1)
    assert with_callback == encoded(sdxl, refined(sdxl, refiner_folder))[0]


class Cancelled(Exception):
    pass


def test_a_stop_in_the_refiner_stage_propagates(sdxl: LoadedModel, refiner_folder: str) -> None:
    def stop(step: int, steps: int, latents: Any) -> None:
        if step == STEPS:  # the refiner's only step
            raise Cancelled("cancelled")

    with torch_threads(THREADS), pytest.raises(Cancelled, match="cancelled"):
        render_batch(sdxl, refined(sdxl, refiner_folder), ITEMS, on_step=stop)


def test_the_record_names_the_refiner_and_round_trips(sdxl: LoadedModel, refiner_folder: str) -> None:
    spec = refined(sdxl, refiner_folder)
    record = make_record(sdxl, spec, ITEMS, 0, environment_record(sdxl.device, sdxl.dtype))
    part = record["refiner"]
    assert part["model"] == sdxl.refiner_identity and part["start"] == START
    assert part["pipeline"] == "StableDiffusionXLImg2ImgPipeline"
    assert part["call"]["denoising_start"] == START and part["call"]["num_inference_steps"] == STEPS
    assert record["call"]["denoising_end"] == START and record["call"]["output_type"] == "latent"
    rebuilt, items, index = spec_from_record(json.loads(json.dumps(record)))
    assert rebuilt == spec and items == ITEMS and index == 0
    p = parse_a1111(_format(sdxl, spec))
    assert p.extra == {"Refiner": f"{TINY_SDXL_REFINER_NAME} [{part['model']['hash']}]", "Refiner switch at": "0.8"}

    plain = make_record(sdxl, render_spec(sdxl), ITEMS, 0, environment_record(sdxl.device, sdxl.dtype))
    assert "refiner" not in plain and "denoising_end" not in plain["call"]
    assert spec_from_record(plain)[0].refiner is None and spec_from_record(plain)[0].refiner_start is None


def _format(loaded: LoadedModel, spec: RenderSpec) -> str:
    from promptdex.params import format_a1111

    return format_a1111(make_params(loaded, spec, ITEMS[0]))


def test_a_refiner_needs_an_sdxl_base(models: Path, refiner_folder: str) -> None:
    with pytest.raises(InvalidInput, match=r"^refiner: .*SDXL base"):
        load_pipeline("tiny", device="cpu", models_path=models, refiner=refiner_folder)
    sd1_folder, _ = ensure_tiny_model(models)
    with pytest.raises(InvalidInput, match=r"^refiner: .*StableDiffusionPipeline"):
        load_pipeline(str(sd1_folder), device="cpu", models_path=models, refiner=refiner_folder)
    with pytest.raises(InvalidInput, match=r"^refiner: no such file or folder"):
        load_pipeline("tiny", device="cpu", models_path=models, refiner=str(models / "missing-refiner"))


def test_a_spec_must_agree_with_the_loaded_refiner(sdxl: LoadedModel, refiner_folder: str, models: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^refiner_start: .*between 0 and 1"):
        render_batch(sdxl, render_spec(sdxl, refiner=refiner_folder, refiner_start=1.0), ITEMS)
    with pytest.raises(InvalidInput, match=r"^refiner_start: .*without a refiner"):
        render_batch(sdxl, render_spec(sdxl, refiner_start=START), ITEMS)
    other = str(ensure_tiny_sdxl(models))  # a model folder, but not the refiner that was loaded
    with pytest.raises(InvalidInput, match=r"^refiner: .*not the refiner loaded"):
        render_batch(sdxl, refined(sdxl, other), ITEMS)


def test_reproduce_loads_the_recorded_refiner_and_makes_the_same_bytes(sdxl: LoadedModel, refiner_folder: str,
                                                                       models: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from generator.output import read_png_text
    from generator.reproduce import model_differences, rerender
    from generator.service import ModelCache
    from promptdex.settings import get_settings

    original, _ = encoded(sdxl, refined(sdxl, refiner_folder))
    (tmp_path / "made.png").write_bytes(original)
    record = json.loads(read_png_text(tmp_path / "made.png")["promptdex"])
    for key in [k for k in os.environ if k.startswith("PROMPTDEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    cache = ModelCache(get_settings(data_dir=tmp_path / "data", models_dir=models), device="cpu")
    try:
        again = rerender(record, settings=cache.settings, cache=cache)
        assert again.loaded is not sdxl and again.loaded.refiner_identity == sdxl.refiner_identity
        assert again.data == original
        assert model_differences(record, again.loaded) == {}
    finally:
        cache.close()


def test_release_drops_the_refiner(models: Path, refiner_folder: str) -> None:
    loaded = load_pipeline(str(ensure_tiny_sdxl(models)), device="cpu", models_path=models, refiner=refiner_folder)
    loaded.release()
    assert loaded.pipeline is None and loaded.refiner is None


def test_ensure_builds_each_folder_once(models: Path) -> None:
    for ensure in (ensure_tiny_sdxl, ensure_tiny_sdxl_refiner):
        folder = ensure(models)
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        before = weights.stat().st_mtime_ns
        assert ensure(models) == folder and weights.stat().st_mtime_ns == before
