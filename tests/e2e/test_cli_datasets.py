"""`promptdex import-dataset` as a user runs it: killed with SIGKILL mid-import (vectors and rows half written) and run
again: every image once, every precomputed vector once, and `promptdex index` embeds only what the dataset lacked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.e2e
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

PARTS, PER_PART = 8, 30


def _dataset(root: Path, dim: int) -> tuple[list[str], list[str]]:
    """A DiffusionDB layout of zip archives of small distinct PNGs, and clip-retrieval embeddings of all but the
    last part's images. Returns (every image name, the names with a vector)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    names = []
    for part in range(1, PARTS + 1):
        entries = {}
        with zipfile.ZipFile(root / "images" / f"part-{part:06d}.zip", "w") as archive:
            for i in range(PER_PART):
                name = f"{part:04d}{i:04d}-aaaa-4bbb-8ccc-dddddddddddd.png"
                pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
                buffer = Path(root / "tmp.png")
                Image.fromarray(pixels).save(buffer)
                archive.writestr(name, buffer.read_bytes())
                entries[name] = {"p": f"a castle number {part * 1000 + i}", "se": part * 1000 + i, "c": 7.5,
                                 "st": 30, "sa": "k_euler_a"}
                names.append(name)
            archive.writestr(f"part-{part:06d}.json", json.dumps(entries))
    (root / "tmp.png").unlink()
    covered = names[: (PARTS - 1) * PER_PART]
    emb = root.parent / "emb"
    (emb / "img_emb").mkdir(parents=True)
    (emb / "metadata").mkdir()
    for n in range(3):
        chunk = covered[n::3]
        np.save(emb / "img_emb" / f"img_emb_{n}.npy", rng.standard_normal((len(chunk), dim)).astype(np.float32))
        pq.write_table(pa.Table.from_pylist([{"image_path": f"/ddb/{c}"} for c in chunk]),
                       emb / "metadata" / f"metadata_{n}.parquet")
    return names, covered


def _count(url: str, query: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            row = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedTable:  # the import has not migrated the database yet
            return 0
        return int(row[0]) if row else 0


def test_killed_import_resumes_with_nothing_lost_or_twice(tmp_path: Path, database_url: str) -> None:
    from indexer.bundles import Bundle
    from indexer.embedders import clip_from_settings
    from promptdex.settings import get_settings

    data = tmp_path / "data"
    settings = get_settings(data_dir=data, database_url=database_url, models="tiny")
    model = clip_from_settings(settings)
    names, covered = _dataset(tmp_path / "ddb", model.dim)
    env = clean_env(PROMPTDEX_DATA_DIR=str(data), PROMPTDEX_DATABASE_URL=database_url, PROMPTDEX_MODELS="tiny",
                    PROMPTDEX_INDEXER__CHECKPOINT_EVERY="40", PROMPTDEX_INDEXER__IMPORT_WORKERS="2")
    args = ["import-dataset", "diffusiondb", str(tmp_path / "ddb"), "--embeddings", str(tmp_path / "emb"),
            "--embeddings-model", model.model_id, "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "promptdex", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = -1
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            stored = _count(database_url, "SELECT count(*) FROM images")
            if stored >= 3 * PER_PART:  # a few parts in, vectors checkpointed, more in flight
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = stored
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at < 0:
            proc.kill()
        proc.wait(30)
    assert killed_at >= 0, f"the import ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
    assert killed_at < len(names), "the kill came too late to test a resume"

    again = run_cli(*args, "--json", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    summary: dict[str, Any] = json.loads(again.stdout)
    assert summary["units_done_before"] >= 1 and summary["errors"] == []
    assert _count(database_url, "SELECT count(*) FROM images") == len(names)
    assert _count(database_url, "SELECT count(DISTINCT sha256) FROM images") == len(names)
    assert _count(database_url, "SELECT count(*) FROM dataset_units WHERE finished") == PARTS
    bundle = Bundle.open(data / "indexes" / "clip-image", model=model.model_id)
    ids = bundle.ids().tolist()
    assert len(ids) == len(set(ids)) == len(covered)  # each precomputed vector once, none lost to the kill
    recorded = _count(database_url, "SELECT count(*) FROM index_entries WHERE bundle = 'clip-image'")
    assert recorded == len(covered)

    index = run_cli("index", "--json", "--no-progress", cwd=tmp_path, env=env)
    assert index.returncode == 0, index.stderr
    added = {b["name"]: b["added"] for b in json.loads(index.stdout)["bundles"]}
    assert added["clip-image"] == len(names) - len(covered)  # only the images the dataset had no vector for
    assert Bundle.open(data / "indexes" / "clip-image", model=model.model_id).count == len(names)


def test_wrong_layout_and_missing_flags_are_clear(tmp_path: Path, database_url: str) -> None:
    env = clean_env(PROMPTDEX_DATA_DIR=str(tmp_path / "data"), PROMPTDEX_DATABASE_URL=database_url)
    (tmp_path / "empty").mkdir()
    result = run_cli("import-dataset", "webdataset", str(tmp_path / "empty"), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert f"promptdex: error: {tmp_path / 'empty'}: not a webdataset layout: expected .tar shards" in result.stderr
    result = run_cli("import-dataset", "hf", str(tmp_path / "empty"), "--embeddings", str(tmp_path), cwd=tmp_path,
                     env=env)
    assert result.returncode == 1 and "--embeddings needs --embeddings-model" in result.stderr
    assert "Traceback" not in result.stderr
