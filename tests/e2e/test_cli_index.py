"""`promptdex index` as a user runs it: kill -9 in the middle, run again, then every item has exactly one vector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer.bundles import MANIFEST, Bundle
from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.e2e

WORDS = ["neon", "forest", "castle", "ocean", "desert", "robot", "dragon", "garden", "winter", "city", "ruins",
         "sunset", "library", "harbor", "canyon", "temple", "market", "glacier", "meadow", "volcano", "station",
         "bridge", "island", "tower", "swamp"]


def make_images(folder: Path, n: int) -> None:
    """`n` tiny PNGs, each with its own prompt (so the prompt bundle has `n` items to embed)."""
    folder.mkdir()
    for i in range(n):
        info = PngInfo()
        prompt = f"{WORDS[i % 25]} {WORDS[(i // 25) % 25]} scene number {i}, detailed"
        info.add_text("parameters", f"{prompt}\nSteps: 4, Sampler: Euler, CFG scale: 2, Seed: {i}, Size: 16x16")
        Image.new("RGB", (16, 16), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(folder / f"{i:04d}.png",
                                                                                  pnginfo=info)


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def test_index_killed_then_resumed(tmp_path: Path, database_url: str) -> None:
    n = 600
    make_images(tmp_path / "pics", n)
    env = clean_env(PROMPTDEX_DATABASE_URL=database_url, PROMPTDEX_MODELS="tiny",
                    PROMPTDEX_INDEXER__BATCH_SIZE="16", PROMPTDEX_INDEXER__CHECKPOINT_EVERY="50")
    imported = run_cli("import", "--no-progress", str(tmp_path / "pics"), cwd=tmp_path, env=env)
    assert imported.returncode == 0 and imported.stdout.strip().startswith(f"imported {n},"), imported.stdout

    proc = subprocess.Popen([sys.executable, "-m", "promptdex", "index"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    entries = "SELECT count(*) FROM index_entries WHERE bundle = 'prompt-text'"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if count(database_url, entries) > 0:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"index finished before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    done_before = count(database_url, entries)
    assert 0 < done_before < n

    resumed = run_cli("index", "--json", "--no-progress", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    image, prompt = report["bundles"]
    assert image["added"] == 0 and image["total"] == n
    assert prompt["added"] + prompt["recovered"] == n - done_before and prompt["total"] == n

    status = run_cli("index", "status", "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert [(b["name"], b["state"], b["count"], b["recorded"], b["pending"]) for b in data["bundles"]] == [
        ("clip-image", "ok", n, n, 0), ("prompt-text", "ok", n, n, 0)]
    assert data["keyword"]["pending"] == 0
    for name in ("clip-image", "prompt-text"):
        folder = tmp_path / "data" / "indexes" / name
        bundle = Bundle.open(folder)
        ids = bundle.ids().tolist()
        assert len(ids) == len(set(ids)) == n, name
        # whatever the kill left (a partial temporary file, an uncommitted index file) is gone
        assert sorted(p.name for p in folder.iterdir()) == [bundle.manifest.index_file, MANIFEST], name
    text = run_cli("index", "status", cwd=tmp_path, env=env)
    assert "clip-image: 600 vectors, flat" in text.stdout and "pending 0" in text.stdout
