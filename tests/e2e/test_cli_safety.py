"""`promptdex safety` as a user runs it: generated images are scored before their rows exist; rescore shows
progress, survives kill -9 mid-run (a rerun finishes without scoring a committed image twice); status and check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from psycopg.rows import dict_row

from tests.conftest import REPO
from tests.helpers import clean_env, run_cli
from tests.safety_classifier import MAGENTA, paint

pytestmark = pytest.mark.e2e

IMAGES = 150


def env_for(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    return clean_env(PROMPTDEX_DATA_DIR=str(tmp_path / "data"), PROMPTDEX_DATABASE_URL=database_url,
                     PROMPTDEX_MODELS="tiny", PROMPTDEX_SAFETY__CLASSIFIERS="words,tests.safety_classifier:marker",
                     PROMPTDEX_TEST_SAFETY_LOG=str(tmp_path / "scored.log"), PYTHONPATH=str(REPO), **extra)


def calls(tmp_path: Path) -> int:
    log = tmp_path / "scored.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def scored_rows(database_url: str, key: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM images WHERE nsfw_key = %s", (key,)).fetchone()
    return int(row[0]) if row else 0


def test_generated_images_are_scored_before_their_rows_exist(tmp_path: Path, database_url: str) -> None:
    env = env_for(tmp_path, database_url)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\na nude statue in a garden\n")
    gen = run_cli("generate", "--prompts-file", str(prompts), "--size", "64x64", "--steps", "2", "--model", "tiny",
                  "--json", cwd=tmp_path, env=env, timeout=600)
    assert gen.returncode == 0, gen.stderr
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT i.nsfw, i.nsfw_key, i.nsfw_scores, p.text, p.nsfw AS prompt_nsfw FROM images i "
                            "JOIN prompts p ON p.id = i.prompt_id ORDER BY i.id").fetchall()
    assert len(rows) == 2 and calls(tmp_path) == 2  # the image classifier saw each picture once
    assert all(r["nsfw_key"] and set(r["nsfw_scores"]) == {"words", "marker"} for r in rows)
    assert rows[0]["nsfw"] < 0.5 and rows[1]["nsfw"] == 1.0 and rows[1]["prompt_nsfw"] == 1.0  # "nude"


def test_rescore_survives_kill_9_and_a_rerun_finishes_without_scoring_twice(tmp_path: Path,
                                                                          database_url: str) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(IMAGES):
        pixels = paint(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8),
                       MAGENTA if i % 10 == 0 else None, i)
        info = PngInfo()
        info.add_text("parameters", f"a quiet pond {i}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {i}, "
                                    "Size: 32x32")
        Image.fromarray(pixels).save(folder / f"{i:03d}.png", pnginfo=info)
    env = env_for(tmp_path, database_url, PROMPTDEX_TEST_SAFETY_DELAY="0.02")
    assert run_cli("import", str(folder), "--no-progress", cwd=tmp_path, env=env).returncode == 0
    assert calls(tmp_path) == 0  # import scores prompts only; the pixels wait for index or rescore
    status = json.loads(run_cli("safety", "status", "--json", cwd=tmp_path, env=env).stdout)
    key = status["key"]
    assert status["classifiers"] == ["words", "marker"] and status["images"]["current"] == 0

    proc = subprocess.Popen([sys.executable, "-m", "promptdex", "safety", "rescore"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while scored_rows(database_url, key) < 64 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    committed = scored_rows(database_url, key)
    first_calls = calls(tmp_path)
    assert 64 <= committed < IMAGES, "killed after a batch was committed and before the end"

    rerun = run_cli("safety", "rescore", "--json", cwd=tmp_path, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["scored"] == IMAGES - committed and not summary["errors"]
    assert calls(tmp_path) - first_calls == IMAGES - committed  # no committed image was scored again
    assert scored_rows(database_url, key) == IMAGES
    again = run_cli("safety", "rescore", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "0 images scored" in again.stdout
    assert "rescore" in rerun.stderr  # --json prints the summary; the bar still goes to stderr

    status = json.loads(run_cli("safety", "status", "--json", cwd=tmp_path, env=env).stdout)
    assert status["images"]["current"] == IMAGES and status["images"]["flagged"] == IMAGES // 10


def test_rescore_shows_a_progress_bar_and_check_explains_a_score(tmp_path: Path, database_url: str) -> None:
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(paint(np.full((32, 32, 3), 40 * i, np.uint8), None, i)).save(folder / f"{i}.png")
    Image.fromarray(paint(np.full((32, 32, 3), 200, np.uint8), None, 9)).save(folder / "cut.png")
    env = env_for(tmp_path, database_url)
    assert run_cli("import", str(folder), "--no-progress", cwd=tmp_path, env=env).returncode == 0
    cut = folder / "cut.png"
    cut.write_bytes(cut.read_bytes()[:60])  # truncated after import: its pixels cannot be read any more
    done = run_cli("safety", "rescore", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "rescore" in done.stderr and "4/4" in done.stderr  # tqdm's bar
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: image ") and str(cut) in lines[0]
    assert lines[1].startswith("3 images scored (0 flagged), 0 prompts, 1 errors")
    check = run_cli("safety", "check", "a (Topless:1.2) dancer", cwd=tmp_path, env=env)
    assert check.returncode == 0 and "topless (0.95)" in check.stdout and "refused" in check.stdout
    bad = run_cli("safety", "status", cwd=tmp_path, env={**env, "PROMPTDEX_SAFETY__CLASSIFIERS": "words,bogus"})
    assert bad.returncode == 1 and "PROMPTDEX_SAFETY__CLASSIFIERS: 'bogus' is not a classifier" in bad.stderr
