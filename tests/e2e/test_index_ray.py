"""`promptdex index --ray` on a real local multi-node Ray cluster (head + two worker nodes), losing a node mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer.bundles import Bundle
from tests.e2e.ray_helpers import dead_address, local_cluster, remove_a_worker, require_ray
from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.e2e

N = 24
BROKEN = 5  # this image's file is overwritten after import: index reports it and goes on


@pytest.fixture
def cluster() -> Iterator[Any]:
    # two CPUs a node: an embedding actor and a decode task side by side (`--actors 2` leaves 2 of 4 CPUs to decode)
    with local_cluster(workers=2, worker_cpus=2) as cluster:
        yield cluster


def make_corpus(folder: Path) -> None:
    """`N` small PNGs of random pixels (their CLIP vectors differ), each with its own prompt."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(N):
        info = PngInfo()
        info.add_text("parameters", f"a picture number {i}\nSteps: 4, Sampler: Euler, CFG scale: 2, Seed: {i}, "
                                    "Size: 96x80")
        pixels = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png", pnginfo=info)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def vectors(folder: Path) -> dict[int, np.ndarray]:
    ids, vecs = Bundle.open(folder).vectors()
    assert len(set(ids.tolist())) == len(ids), "no id twice in the bundle"
    return {int(i): v for i, v in zip(ids, vecs, strict=True)}


def test_index_on_ray_survives_losing_a_node(tmp_path: Path, database_url: str, cluster: Any) -> None:
    make_corpus(tmp_path / "pics")
    env = clean_env(PROMPTDEX_DATABASE_URL=database_url, PROMPTDEX_MODELS="tiny",
                    PROMPTDEX_INDEXER__BATCH_SIZE="2", PROMPTDEX_INDEXER__CHECKPOINT_EVERY="4",
                    PROMPTDEX_INDEXER__RUNTIME="torch")  # no ONNX export of the prompt model: CLIP runs on torch anyway
    imported = run_cli("import", "--no-progress", str(tmp_path / "pics"), cwd=tmp_path, env=env)
    assert imported.returncode == 0 and imported.stdout.strip().startswith(f"imported {N},"), imported.stdout
    ids = {int(r[0]): str(r[1]) for r in query(database_url, "SELECT id, path FROM images")}
    broken = next(i for i, path in ids.items() if path.endswith(f"{BROKEN:03d}.png"))
    Path(ids[broken]).write_bytes(Path(ids[broken]).read_bytes()[:120])  # a header, then no pixels
    good = set(ids) - {broken}

    args = [sys.executable, "-m", "promptdex", "index", "--ray", cluster.address, "--actors", "2", "--json",
            "--no-progress"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    entries = "SELECT count(*) FROM index_entries WHERE bundle = 'clip-image'"
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:  # lose a node once vectors are being committed
            try:
                if query(database_url, entries)[0][0] > 0:
                    break
            except psycopg.Error:
                pass  # the tables are being made
            time.sleep(0.05)
        running = proc.poll() is None
        remove_a_worker(cluster)
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:  # only the process this test started, by its handle
            proc.kill()
            proc.wait(10)
    assert running, f"index finished before a node could be lost: {stderr}"
    assert proc.returncode == 0, stderr
    report = json.loads(stdout)  # the whole of stdout: Ray's own messages go to stderr
    image, prompt = report["bundles"]
    assert image["added"] == len(good) and image["total"] == len(good)
    assert [s["id"] for s in image["skipped"]] == [broken]
    assert prompt["total"] == N

    # every decodable image exactly once, in the bundle and in index_entries; its perceptual hash stored
    on_ray = vectors(tmp_path / "data" / "indexes" / "clip-image")
    assert set(on_ray) == good
    recorded = [int(r[0]) for r in query(database_url, "SELECT item_id FROM index_entries WHERE bundle = 'clip-image'")]
    assert sorted(recorded) == sorted(good)
    hashed = {int(r[0]) for r in query(database_url, "SELECT id FROM images WHERE phash IS NOT NULL")}
    assert hashed == good
    thumbs = list((tmp_path / "data" / "thumbs").rglob("*.webp"))
    assert len(thumbs) == len(good)

    # the same vectors as a plain local run with the same tiny model
    local = run_cli("index", "--rebuild", "--json", "--no-progress", cwd=tmp_path, env=env)
    assert local.returncode == 0, local.stderr
    here = vectors(tmp_path / "data" / "indexes" / "clip-image")
    assert set(here) == good
    cosines = [float(np.dot(on_ray[i], here[i])) for i in sorted(good)]
    assert min(cosines) > 0.9999, cosines


def test_a_ray_address_that_does_not_answer_is_one_clear_error(tmp_path: Path) -> None:
    require_ray()
    address = dead_address()
    started = time.monotonic()
    result = run_cli("index", "--ray", address, cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < 45
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "--ray" in lines[0], result.stderr


def test_ray_with_rebuild_is_refused(tmp_path: Path) -> None:
    result = run_cli("index", "--ray", "127.0.0.1:6379", "--rebuild", cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert "--rebuild" in result.stderr and "--ray" in result.stderr, result.stderr
