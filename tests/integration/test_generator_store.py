"""Generated images in a real PostgreSQL corpus: rows and files together, reproduce, img2img, variations, repair."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from generator.environment import torch_threads
from generator.output import INCOMING, find_missing_files, repair_incoming, store_input_image
from generator.reproduce import reproduce_image
from generator.service import ModelCache, generate_images, inputs_path, request_like
from generator.tiny import ensure_tiny_model
from promptdex.catalog import fill_defaults
from promptdex.generation import GenerateRequest
from promptdex.settings import ModelsMode
from promptdex.store import count_images, get_image

pytestmark = pytest.mark.integration
THREADS = 2


@pytest.fixture
def tiny_settings(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    models = tmp_path_factory.getbasetemp() / "generator-models"
    ensure_tiny_model(models)
    return settings.model_copy(update={"models": ModelsMode.TINY, "models_dir": models})


@pytest.fixture
def cache(tiny_settings: Any) -> Iterator[ModelCache]:
    models = ModelCache(tiny_settings, device="cpu")
    yield models
    models.close()


def make(settings: Any, **fields: Any) -> GenerateRequest:
    base = {"prompt": "a lighthouse in a storm", "steps": 3, "width": 64, "height": 64, "sampler": "Euler a"}
    return fill_defaults(GenerateRequest(**{**base, **fields}), settings)


def run(conn: Any, settings: Any, cache: ModelCache, *requests: GenerateRequest, batch: int = 4) -> Any:
    with torch_threads(THREADS):
        return generate_images(conn, settings, list(requests), cache=cache, batch_size=batch)


def test_each_image_is_a_file_and_a_row(conn: Any, tiny_settings: Any, cache: ModelCache) -> None:
    outcome = run(conn, tiny_settings, cache, make(tiny_settings, seeds=[1, 2, 3], negative_prompt="fog"), batch=2)
    ids = outcome.ids[0]
    assert len(ids) == 3 and outcome.created == 3
    seeds = []
    for image_id in ids:
        image = get_image(conn, image_id=image_id)
        assert image is not None
        path = tiny_settings.images_path / image.path
        assert path.is_file() and image.path == f"{image.sha256[:2]}/{image.sha256}.png"
        assert image.file_size == path.stat().st_size and image.source == "generated" and image.format == "PNG"
        assert (image.width, image.height, image.params.steps, image.params.negative_prompt) == (64, 64, 3, "fog")
        assert image.raw_metadata["parameters"].startswith("a lighthouse in a storm\nNegative prompt: fog\n")
        assert json.loads(image.raw_metadata["promptdex"]) == image.generation
        assert image.sampler_class == "EulerAncestralDiscreteScheduler" and image.scheduler_config
        seeds.append(image.params.seed)
    assert seeds == [1, 2, 3]
    assert not list((tiny_settings.images_path / INCOMING).iterdir())


def test_same_seed_again_is_the_same_bytes_and_one_row(conn: Any, tiny_settings: Any, cache: ModelCache) -> None:
    first = run(conn, tiny_settings, cache, make(tiny_settings, seeds=[42]))
    again = run(conn, tiny_settings, cache, make(tiny_settings, seeds=[42]))
    assert first.ids == again.ids and again.created == 0 and again.existing == 1
    assert count_images(conn) == 1


def test_reproduce_is_identical_and_explains_a_difference(conn: Any, tiny_settings: Any, cache: ModelCache) -> None:
    image_id = run(conn, tiny_settings, cache, make(tiny_settings, seeds=[7, 8], sampler="DPM++ SDE")).ids[0][1]
    report = reproduce_image(conn, tiny_settings, image_id=image_id, cache=cache)
    assert report.identical and report.file_identical and report.pixels["differing"] == 0, report.summary()

    image = get_image(conn, image_id=image_id)
    assert image is not None
    path = tiny_settings.images_path / image.path
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    pixels[0, 0] ^= 1  # each of the three values changes by exactly one
    Image.fromarray(pixels).save(path)
    conn.execute("UPDATE images SET generation = jsonb_set(generation, '{environment,torch_threads}', '64') "
                 "WHERE id = %s", (image_id,))
    report = reproduce_image(conn, tiny_settings, image_id=image_id, cache=cache, threads=THREADS)
    assert not report.identical and report.pixels["differing"] == 3 and report.pixels["max_abs_diff"] == 1
    assert report.environment["torch_threads"] == [64, THREADS]
    assert "NOT identical" in report.summary() and "torch_threads 64 -> 2" in report.summary()


def test_a_missing_file_is_restored_by_reproduce(conn: Any, tiny_settings: Any, cache: ModelCache) -> None:
    image_id = run(conn, tiny_settings, cache, make(tiny_settings, seeds=[9])).ids[0][0]
    image = get_image(conn, image_id=image_id)
    assert image is not None
    path = tiny_settings.images_path / image.path
    original = path.read_bytes()
    path.unlink()
    assert find_missing_files(conn, images_path=tiny_settings.images_path) == [image_id]
    report = reproduce_image(conn, tiny_settings, image_id=image_id, cache=cache)
    assert report.identical and report.restored and path.read_bytes() == original


def test_img2img_is_recorded_and_reproducible(conn: Any, tiny_settings: Any, cache: ModelCache,
                                              tmp_path: Path) -> None:
    init = tmp_path / "init.jpg"
    Image.new("RGB", (96, 80), (200, 120, 40)).save(init, quality=90)
    sha = store_input_image(init, inputs_path=inputs_path(tiny_settings))
    request = make(tiny_settings, seeds=[3], init_image=sha, strength=0.75, steps=4)
    image_id = run(conn, tiny_settings, cache, request).ids[0][0]
    image = get_image(conn, image_id=image_id)
    assert image is not None and image.generation is not None
    assert image.init_image_sha256 == sha and image.params.denoising_strength == 0.75
    assert image.generation["task"] == "img2img" and image.generation["init_image"]["sha256"] == sha
    assert image.generation["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert "Denoising strength: 0.75" in image.raw_metadata["parameters"]
    assert reproduce_image(conn, tiny_settings, image_id=image_id, cache=cache).identical


def test_variations_keep_the_settings_with_new_seeds(conn: Any, tiny_settings: Any, cache: ModelCache) -> None:
    source_id = run(conn, tiny_settings, cache, make(tiny_settings, seeds=[5], sampler="DPM++ 2M",
                                                      schedule="Karras", cfg=5.5, clip_skip=2)).ids[0][0]
    source = get_image(conn, image_id=source_id)
    assert source is not None
    like = fill_defaults(request_like(source, seeds=[100, 101]), tiny_settings)
    ids = run(conn, tiny_settings, cache, like).ids[0]
    for image_id, seed in zip(ids, (100, 101), strict=True):
        image = get_image(conn, image_id=image_id)
        assert image is not None and image.generation is not None and source.generation is not None
        p, q = image.params, source.params
        assert (p.prompt, p.steps, p.cfg, p.sampler, p.scheduler, p.clip_skip) == (
            q.prompt, q.steps, q.cfg, q.sampler, q.scheduler, q.clip_skip)
        assert p.seed == seed and image.scheduler_config == source.scheduler_config
        assert image.generation["model"] == source.generation["model"]


def test_repair_finishes_committed_writes_and_drops_the_rest(conn: Any, tiny_settings: Any,
                                                              cache: ModelCache) -> None:
    image_id = run(conn, tiny_settings, cache, make(tiny_settings, seeds=[11])).ids[0][0]
    image = get_image(conn, image_id=image_id)
    assert image is not None
    final = tiny_settings.images_path / image.path
    incoming = tiny_settings.images_path / INCOMING
    # Crash after COMMIT, before the rename: the row exists and the file is still in .incoming.
    committed = incoming / f"{image.sha256}.aaaa.part"
    final.rename(committed)
    # Crash before COMMIT: a part file with no row; and one that never got its name.
    orphan = incoming / f"{'b' * 64}.bbbb.part"
    orphan.write_bytes(b"half a png")
    unnamed = incoming / f"{'c' * 64}.cccc.new"
    unnamed.write_bytes(b"")
    # A write in progress in another process: locked, so left alone.
    busy = incoming / f"{'d' * 64}.dddd.part"
    busy.write_bytes(b"being written")
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        report = repair_incoming(conn, images_path=tiny_settings.images_path)
    finally:
        os.close(fd)
    assert (report.restored, report.removed, report.busy) == (1, 2, 1)
    assert final.is_file() and not committed.exists() and not orphan.exists() and not unnamed.exists()
    assert busy.exists()
    assert find_missing_files(conn, images_path=tiny_settings.images_path) == []
