"""Faults during `promptdex import`: kill -9 mid-run, a full thumbnails disk, the database ended mid-import.

Each asserts that nothing is lost or duplicated, the exit code and the message, and that the next import
recovers without a person (no clean-up by hand, no leftover temporary files). Import writes no thumbnails (they
come from `promptdex index`'s one decode of each image): a full thumbnails disk stopping the index is tested in
test_indexer_pipeline.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image

from indexer import images as images_module
from indexer.importer import import_paths
from tests.helpers import clean_env

pytestmark = pytest.mark.integration

FILES = 160  # noise PNGs without text metadata: each is decoded for A1111 stealth text, enough to stop mid-run


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FILES distinct PNGs of noise, 384 kB each."""
    root = tmp_path_factory.mktemp("noise") / "pics"
    root.mkdir()
    rng = np.random.default_rng(7)
    for i in range(FILES):
        pixels = rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:03d}.png", compress_level=0)
    return root


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_import(folder: Path, cwd: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "promptdex", "import", "--no-progress", "--workers", "1",
                             *extra, str(folder)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_import(folder: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "promptdex", "import", "--no-progress", str(folder)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def recorded_files(database_url: str) -> int:
    """Files the running import has committed so far (0 before its tables exist)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM imported_files").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def wait_for_first_commit(proc: subprocess.Popen[str], database_url: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the import ended before the fault was injected: {proc.communicate()}"
        stored = recorded_files(database_url)
        if stored:
            return stored
        time.sleep(0.02)
    raise AssertionError("the import committed nothing in time")


def temp_files(thumbs: Path) -> list[Path]:
    return [p for p in thumbs.rglob("*.tmp") if p.is_file()]


def assert_corpus_is_whole(database_url: str, folder: Path, thumbs: Path) -> None:
    """Every file once, under its own path and content; nothing written under the thumbnails folder."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT sha256, path, missing FROM images").fetchall()
        recorded = conn.execute("SELECT path, status FROM imported_files").fetchall()
    expected = {str(p): sha_of(p) for p in sorted(folder.iterdir())}
    assert {path: sha for sha, path, _ in rows} == expected  # nothing lost, nothing duplicated
    assert len(rows) == FILES and not any(missing for *_, missing in rows)
    assert sorted(path for path, _ in recorded) == sorted(expected)
    assert {status for _, status in recorded} == {"imported"}
    assert not list(thumbs.rglob("*.webp")) and temp_files(thumbs) == []


def test_kill_9_mid_import_then_the_next_import_completes(folder: Path, tmp_path: Path, database_url: str) -> None:
    env = clean_env(PROMPTDEX_DATABASE_URL=database_url, PROMPTDEX_DATA_DIR=str(tmp_path / "data"))
    thumbs = tmp_path / "data" / "thumbs"
    proc = start_import(folder, tmp_path, env)
    wait_for_first_commit(proc, database_url)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    stored = recorded_files(database_url)
    assert 0 < stored < FILES, "killed mid-run: some files stored, not all"

    second = run_import(folder, tmp_path, env)
    assert second.returncode == 0, second.stderr
    summary = second.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"imported {FILES - stored}, unchanged {stored}, duplicates 0, errors 0"), summary
    assert_corpus_is_whole(database_url, folder, thumbs)


def test_a_full_thumbnails_disk_does_not_stop_the_import(folder: Path, database_url: str, settings: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Import writes nothing there: every file is imported though each write to the disk would fail."""
    def full(file: Any, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(images_module, "_write_all", full)
    from promptdex.db import open_database

    db = open_database(settings)
    with db.connect(autocommit=True) as conn:
        summary = import_paths(conn, settings, [folder], progress=False)
    db.close()
    assert (summary.imported, summary.duplicates, summary.errors) == (FILES, 0, [])
    assert_corpus_is_whole(database_url, folder, settings.thumbs_path)


def test_the_database_ended_mid_import_stops_it_with_one_message(folder: Path, tmp_path: Path,
                                                                   database_url: str) -> None:
    env = clean_env(PROMPTDEX_DATABASE_URL=database_url, PROMPTDEX_DATA_DIR=str(tmp_path / "data"))
    thumbs = tmp_path / "data" / "thumbs"
    proc = start_import(folder, tmp_path, env)
    wait_for_first_commit(proc, database_url)
    with psycopg.connect(database_url, autocommit=True) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
    assert ended and ended[0] >= 1
    out, err = proc.communicate(timeout=10)  # stops at once, not after decoding the rest of the folder
    assert proc.returncode == 1, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    assert len(lines) == 1 and lines[0].startswith("promptdex: error: "), err
    assert str(dbname) in lines[0] and "closed the connection" in lines[0], err
    assert "run the same import again" in lines[0] and "Traceback" not in err
    assert recorded_files(database_url) < FILES  # the remaining files were not imported

    second = run_import(folder, tmp_path, env)
    assert second.returncode == 0, second.stderr
    assert "duplicates 0, errors 0" in second.stdout
    assert_corpus_is_whole(database_url, folder, thumbs)
