"""`promptdex generate`, `reproduce` and `worker` as a user runs them, with the built-in tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image

from generator.environment import torch_threads
from generator.service import ModelCache, generate_images
from generator.tiny import ensure_tiny_model
from generator.worker import run_worker
from promptdex.catalog import fill_defaults
from promptdex.db import open_database
from promptdex.generation import GenerateRequest
from promptdex.jobs import enqueue_jobs, get_job
from promptdex.settings import ModelsMode, get_settings
from promptdex.store import count_images, get_image
from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.e2e
THREADS = "2"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "generator-models"
    ensure_tiny_model(path)
    return path


def tiny_env(database_url: str, models: Path) -> dict[str, str]:
    return clean_env(PROMPTDEX_DATABASE_URL=database_url, PROMPTDEX_MODELS="tiny", PROMPTDEX_MODELS_DIR=str(models),
                     PROMPTDEX_GENERATOR__THREADS=THREADS)


def settings_for(tmp_path: Path, database_url: str, models: Path) -> Any:
    return get_settings(data_dir=tmp_path / "data", database_url=database_url, models=ModelsMode.TINY,
                        models_dir=models)


def test_generate_from_a_prompts_file_is_bit_exact_across_processes(tmp_path: Path, database_url: str,
                                                                      models: Path) -> None:
    Image.new("RGB", (64, 64), (30, 90, 160)).save(tmp_path / "init.png")
    (tmp_path / "prompts.jsonl").write_text(
        "a red fox\n"
        '{"prompt": "a fox in snow", "seeds": "5-6", "steps": 3, "sampler": "DPM++ 2M", "schedule": "Karras", '
        '"init_image": "init.png", "strength": 0.6}\n')
    env = tiny_env(database_url, models)
    made = run_cli("generate", "--prompts-file", "prompts.jsonl", "--seed", "11", "--steps", "2", "--size", "64x64",
                   "--json", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    ids = json.loads(made.stdout)
    assert len(ids) == 3 and "generated 3 images (3 new" in made.stderr

    # The same settings in this process give the same bytes, so the corpus hands back the same row.
    settings = settings_for(tmp_path, database_url, models)
    request = fill_defaults(GenerateRequest(prompt="a red fox", seeds=[11], steps=2, width=64, height=64), settings)
    db = open_database(settings)
    cache = ModelCache(settings, device="cpu")
    try:
        with db.connect(autocommit=True) as conn, torch_threads(int(THREADS)):
            outcome = generate_images(conn, settings, [request], cache=cache, batch_size=4)
            assert outcome.ids == [[ids[0]]] and outcome.existing == 1 and outcome.created == 0
            img2img = get_image(conn, image_id=ids[2])
            assert img2img is not None and img2img.params.seed == 6 and img2img.params.denoising_strength == 0.6
            assert (img2img.params.sampler, img2img.params.scheduler) == ("DPM++ 2M", "Karras")
            assert count_images(conn) == 3
    finally:
        cache.close()
        db.close()

    again = run_cli("reproduce", str(ids[2]), "--json", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["identical"] and report["file_identical"] and report["environment"] == {}


@pytest.mark.parametrize("args, words", [
    (["--size", "65x64"], ["--size", "multiple of 8"]),
    (["--size", "8x8"], ["--size", "from 32 to 4096"]),
    (["--steps", "0"], ["--steps", "accepted: 1 to"]),
    (["--cfg", "-1"], ["--cfg", "accepted: 0 to"]),
    (["--init-image", "init.png", "--strength", "1.5"], ["--strength", "at most 1"]),
    (["--sampler", "Euler b"], ["--sampler", "'Euler b'", "DPM++ 2M"]),
    (["--model", "./no/such.safetensors"], ["--model", "no such file or folder"]),
    (["--init-image", "broken.png", "--strength", "0.5"], ["--init-image", "not a readable image"]),
    (["--device", "gpu"], ["--device", "accepted: auto, cpu"]),
])
def test_bad_input_is_one_clear_line_and_nothing_is_written(tmp_path: Path, args: list[str],
                                                            words: list[str]) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "init.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    result = run_cli("generate", "a fox", "--model", "tiny", *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "data").exists(), "nothing is written for bad input"


def spawn_worker(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "promptdex", "worker", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_workers_do_each_of_twenty_jobs_exactly_once(tmp_path: Path, database_url: str, models: Path) -> None:
    env = tiny_env(database_url, models)
    with psycopg.connect(database_url, autocommit=True) as conn:
        open_database(settings_for(tmp_path, database_url, models)).close()  # migrate
        job_ids = enqueue_jobs(conn, payloads=[{"prompt": "a lantern", "seeds": [seed], "steps": 2, "width": 32,
                                                "height": 32} for seed in range(1, 21)])
    assert len(job_ids) == 20
    workers = [spawn_worker(tmp_path, env, "--once", "--batch", "3", "--json", "--name", f"w{i}") for i in (1, 2)]
    reports = []
    for proc in workers:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        reports.append(json.loads(stdout))
    assert sum(r["done"] for r in reports) == 20 and sum(r["failed"] for r in reports) == 0
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT status, attempts, worker, image_ids FROM jobs ORDER BY id").fetchall()
        images = conn.execute("SELECT count(*), count(DISTINCT (params->>'seed')) FROM images").fetchone()
    assert [r[0] for r in rows] == ["done"] * 20 and {r[1] for r in rows} == {1}
    assert all(len(r[3]) == 1 for r in rows) and len({r[3][0] for r in rows}) == 20
    assert {r[2] for r in rows} <= {"w1", "w2"}
    assert images == (20, 20)


def test_a_killed_worker_leaves_its_job_to_the_next(tmp_path: Path, database_url: str, models: Path) -> None:
    env = tiny_env(database_url, models)
    settings = settings_for(tmp_path, database_url, models)
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            [job_id] = enqueue_jobs(conn, payloads=[{"prompt": "a mill", "seeds": list(range(30, 42)), "steps": 3,
                                                     "width": 64, "height": 64}])
            victim = spawn_worker(tmp_path, env, "--once", "--batch", "1", "--lease", "2", "--name", "victim")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job = get_job(conn, job_id=job_id)
                if job is not None and job.status == "running":
                    break
                time.sleep(0.05)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(30)
            job = get_job(conn, job_id=job_id)
            assert job is not None and job.status == "running" and job.worker == "victim", "killed mid-job"
            time.sleep(2.5)  # the victim's lease runs out
            report = run_worker(settings, once=True, batch_size=4, device="cpu", threads=int(THREADS), name="heir")
            job = get_job(conn, job_id=job_id)
            assert report.done == 1 and job is not None
            assert (job.status, job.worker, job.attempts) == ("done", "heir", 2)
            assert len(job.image_ids) == 12 and count_images(conn) == 12  # what the victim stored is not doubled
            leftovers = list((settings.images_path / ".incoming").glob("*")) if settings.images_path.exists() else []
            assert leftovers == []
    finally:
        db.close()
