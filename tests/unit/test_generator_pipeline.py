"""The tiny pipeline through the real loader (folder and single file): determinism, records, PNG chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from generator.environment import environment_record, torch_threads
from generator.loading import LoadedModel, load_pipeline
from generator.output import read_png_text
from generator.render import BatchItem, RenderSpec, render_batch, spec_from_record
from generator.service import encode_rendered, spec_for
from generator.tiny import TINY_NAME, ensure_tiny_model
from promptdex.errors import ConfigError, InvalidInput
from promptdex.generation import GenerateRequest
from promptdex.params import parse_a1111
from promptdex.settings import get_settings

THREADS = 2  # every render in these tests runs with this many torch threads


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "generator-models"
    ensure_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def tiny(models: Path) -> Iterator[LoadedModel]:
    loaded = load_pipeline("tiny", device="cpu", models_path=models)
    yield loaded
    loaded.release()


def spec(loaded: LoadedModel, **change: Any) -> RenderSpec:
    fields = {"prompt": "a red fox", "steps": 3, "cfg": 7.0, "sampler": "Euler a", "width": 64, "height": 64,
              "model": "tiny", **change}
    return spec_for(GenerateRequest(**fields), loaded, get_settings())  # the tiny profile: no scheduler overrides


def pixels(loaded: LoadedModel, s: RenderSpec, seeds: list[int], prompt: str = "a red fox") -> list[np.ndarray]:
    with torch_threads(THREADS):
        out = render_batch(loaded, s, [BatchItem(prompt, "", seed) for seed in seeds])
    return [np.asarray(r.image) for r in out]


def test_tiny_model_is_built_once_and_cached(models: Path) -> None:
    folder, single = ensure_tiny_model(models)
    before = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns, single.stat().st_mtime_ns
    ensure_tiny_model(models)
    after = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns, single.stat().st_mtime_ns
    assert before == after
    assert folder.name == TINY_NAME and single.suffix == ".safetensors"


def test_single_file_checkpoint_loads_the_same_weights(models: Path) -> None:
    folder, single = ensure_tiny_model(models)
    a = load_pipeline(str(folder), device="cpu", models_path=models)
    b = load_pipeline(str(single), device="cpu", config=str(folder), models_path=models)
    assert a.identity["source"] == "folder" and b.identity["source"] == "single_file"
    assert b.identity["config"] == str(folder)
    assert b.identity["hash"] == b.identity["sha256"][:10] and b.identity["name"] == TINY_NAME
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a.pipeline, name).state_dict(), getattr(b.pipeline, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert all(np.array_equal(x, y) for x, y in zip(pixels(a, spec(a), [3]), pixels(b, spec(b), [3]), strict=True))


def test_same_seed_same_pixels_other_seed_differs(tiny: LoadedModel) -> None:
    s = spec(tiny)
    first, second = pixels(tiny, s, [11, 12]), pixels(tiny, s, [11, 12])
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], pixels(tiny, s, [11], prompt="a blue whale")[0])


def test_same_image_and_record_give_the_same_png_bytes(tiny: LoadedModel) -> None:
    s = spec(tiny)
    items = [BatchItem("a red fox", "", 5)]
    encoded = []
    for _ in range(2):
        with torch_threads(THREADS):
            image = render_batch(tiny, s, items)[0].image
            env = environment_record(tiny.device, tiny.dtype)
        encoded.append(encode_rendered(tiny, s, items, 0, image, env)[0])
    assert encoded[0] == encoded[1]


def test_png_chunks_carry_every_parameter(tiny: LoadedModel, tmp_path: Path) -> None:
    s = spec(tiny, negative_prompt="blurry", sampler="DPM++ 2M", schedule="Karras", clip_skip=2, cfg=6.5)
    items = [BatchItem("a red fox, night", "blurry", 77), BatchItem("a red fox, night", "blurry", 78)]
    with torch_threads(THREADS):
        image = render_batch(tiny, s, items)[1].image
        env = environment_record(tiny.device, tiny.dtype)
    data, chunks, row = encode_rendered(tiny, s, items, 1, image, env)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    text = read_png_text(path)
    assert text == chunks
    p = parse_a1111(text["parameters"])
    assert (p.prompt, p.negative_prompt, p.seed, p.steps, p.cfg) == ("a red fox, night", "blurry", 78, 3, 6.5)
    assert (p.sampler, p.scheduler, p.width, p.height, p.clip_skip) == ("DPM++ 2M", "Karras", 64, 64, 2)
    assert (p.model, p.model_hash) == (TINY_NAME, tiny.identity["hash"])
    record = json.loads(text["promptdex"])
    assert record == json.loads(json.dumps(row.generation))
    assert record["model"]["sha256"] == tiny.identity["sha256"] and record["pipeline"] == "StableDiffusionPipeline"
    assert record["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert record["scheduler"]["config"]["use_karras_sigmas"] is True
    assert record["call"] == {"num_inference_steps": 3, "guidance_scale": 6.5, "width": 64, "height": 64,
                              "output_type": "pil", "clip_skip": 1}
    assert record["seed"] == 78 and record["batch"]["index"] == 1 and [i["seed"] for i in record["batch"]["items"]] \
        == [77, 78]
    environment = record["environment"]
    assert (environment["device"], environment["dtype"], environment["torch_threads"]) == ("cpu", "float32", THREADS)
    assert environment["versions"]["torch"] == torch.__version__.split("+")[0] or environment["versions"]["torch"]
    assert {"torch", "diffusers", "transformers"} <= set(environment["versions"])
    rebuilt, batch, index = spec_from_record(record)
    assert rebuilt == s and batch == items and index == 1


def test_clip_skip_changes_the_image_and_is_bounded(tiny: LoadedModel) -> None:
    assert not np.array_equal(pixels(tiny, spec(tiny), [1])[0], pixels(tiny, spec(tiny, clip_skip=2), [1])[0])
    with pytest.raises(InvalidInput, match="--clip-skip: 9 is more than the model's 4 text encoder layers"):
        spec(tiny, clip_skip=9)


def test_img2img_follows_the_init_image(tiny: LoadedModel) -> None:
    from PIL import Image

    s = spec(tiny, init_image="0" * 64, strength=0.5, steps=4)
    assert s.task == "img2img"
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    with torch_threads(THREADS):
        a = np.asarray(render_batch(tiny, s, [BatchItem("x", "", 1)], init_image=red)[0].image)
        b = np.asarray(render_batch(tiny, s, [BatchItem("x", "", 1)], init_image=red)[0].image)
        c = np.asarray(render_batch(tiny, s, [BatchItem("x", "", 1)], init_image=blue)[0].image)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_loader_errors_are_clear(models: Path) -> None:
    with pytest.raises(InvalidInput, match="--model: no such file or folder"):
        load_pipeline(str(models / "nope.ckpt"), models_path=models)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_pipeline("tiny", device="cuda", models_path=models)
    with pytest.raises(ConfigError, match="float16.*cpu"):
        load_pipeline("tiny", device="cpu", dtype="float16", models_path=models)


def test_auto_device_and_dtype_on_this_machine(tiny: LoadedModel) -> None:
    expected = "cuda" if torch.cuda.is_available() else tiny.device
    assert tiny.device == expected and tiny.dtype == ("float16" if expected == "cuda" else "float32")


def test_hub_id_loads_from_the_local_cache_with_its_revision(models: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import huggingface_hub.constants

    folder, _ = ensure_tiny_model(models)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--promptdex--tiny-sd"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_pipeline("promptdex/tiny-sd", device="cpu", local_files_only=True, models_path=models)
    assert loaded.identity["source"] == "hub" and loaded.identity["revision"] == commit
    assert loaded.identity["name"] == "promptdex/tiny-sd" and len(loaded.identity["sha256"]) == 64


def test_vae_override_is_loaded_and_recorded(models: Path) -> None:
    folder, _ = ensure_tiny_model(models)
    loaded = load_pipeline("tiny", device="cpu", vae=str(folder / "vae"), models_path=models)
    vae = loaded.identity["vae"]
    assert vae["source"] == "folder" and vae["name"] == "vae" and vae["hash"] == vae["sha256"][:10]
    params_vae = spec(loaded)  # the spec does not depend on the VAE
    assert params_vae.task == "txt2img"
    from generator.render import make_params

    p = make_params(loaded, params_vae, BatchItem("x", "", 1))
    assert (p.vae, p.vae_hash) == ("vae", vae["hash"])
