"""Faults during `promptdex import`: kill -9 mid-run, a full thumbnails disk, the database ended mid-import.

Each asserts that nothing is lost or duplicated, the exit code and the message, and that the next import
recovers without a person (no clean-up by hand, no leftover temporary files).
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
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

from indexer import images as images_module
from indexer.images import thumbnail_path
from indexer.importer import ImportStopped, import_paths
from tests.helpers import clean_env

pytestmark = pytest.mark.integration

FILES = 160  # small noise PNGs: each costs a few tens of ms to decode and thumbnail, enough to stop mid-run


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FILES distinct PNGs of noise (their WebP thumbnails do not compress: ~45 kB each)."""
    root = tmp_path_factory.mktemp("noise") / "pics"
    root.mkdir()
    rng = np.random.default_rng(7)
    for i in range(FILES):
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
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
    """Every file once, under its own path and content, with a complete thumbnail; nothing half-written."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT sha256, path, missing FROM images").fetchall()
        recorded = conn.execute("SELECT path, status FROM imported_files").fetchall()
    expected = {str(p): sha_of(p) for p in sorted(folder.iterdir())}
    assert {path: sha for sha, path, _ in rows} == expected  # nothing lost, nothing duplicated
    assert len(rows) == FILES and not any(missing for *_, missing in rows)
    assert sorted(path for path, _ in recorded) == sorted(expected)
    assert {status for _, status in recorded} == {"imported"}
    for sha in expected.values():
        with Image.open(thumbnail_path(thumbs, sha)) as thumb:
            thumb.load()  # a complete WebP, not a truncated one
    assert temp_files(thumbs) == []


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
    # what a kill during a thumbnail write leaves behind: a temporary file of the dead process
    (thumbs / ".tmp").mkdir(parents=True, exist_ok=True)
    (thumbs / ".tmp" / f"{proc.pid}-{'0' * 64}.webp-abc.tmp").write_bytes(b"RIFF half a thumbnail")

    second = run_import(folder, tmp_path, env)
    assert second.returncode == 0, second.stderr
    summary = second.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"imported {FILES - stored}, unchanged {stored}, duplicates 0, errors 0"), summary
    assert_corpus_is_whole(database_url, folder, thumbs)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 2 MB tmpfs for the thumbnails, or None where this machine may not mount one (then a seam fails writes)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                              check=False, timeout=30)
        mounted = done.returncode == 0
    except OSError:  # no mount command here
        mounted = False
    if not mounted:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_import_at_once_and_leaves_nothing_half_written(
        folder: Path, tmp_path: Path, database_url: str, small_disk: Path | None, settings: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if small_disk is not None:
        thumbs = small_disk / "thumbs"
        env = clean_env(PROMPTDEX_DATABASE_URL=database_url, PROMPTDEX_DATA_DIR=str(tmp_path / "data"),
                        PROMPTDEX_THUMBS_DIR=str(thumbs))
        first = run_import(folder, tmp_path, env)
        assert first.returncode == 1, first.stdout
        message = first.stderr
    else:  # no mounting here: the file-writing seam fails as a full disk does, after 40 thumbnails
        thumbs = settings.thumbs_path
        written = {"n": 0}
        real_write = images_module._write_all

        def full_after_40(file: Any, data: bytes) -> None:
            written["n"] += 1
            if written["n"] > 40:
                real_write(file, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_write(file, data)

        monkeypatch.setattr(images_module, "_write_all", full_after_40)
        from promptdex.db import open_database

        db = open_database(settings)
        with db.connect(autocommit=True) as conn, pytest.raises(ImportStopped) as stopped:
            import_paths(conn, settings, [folder], progress=False)
        db.close()
        message = f"promptdex: error: {stopped.value}\n"
        monkeypatch.setattr(images_module, "_write_all", real_write)
    lines = [line for line in message.splitlines() if line.strip()]
    assert len(lines) == 1, message  # one message, not one per remaining file
    assert lines[0].startswith(f"promptdex: error: {thumbs}: cannot write thumbnails: the disk is full"), message
    assert "PROMPTDEX_THUMBS_DIR" in message and "run the same import again" in message
    stored = recorded_files(database_url)
    made = list(thumbs.rglob("*.webp"))
    assert 0 < stored < FILES and len(made) < FILES  # stopped at once, not after trying every file
    assert temp_files(thumbs) == []
    with psycopg.connect(database_url, autocommit=True) as conn:
        stored_shas = [r[0] for r in conn.execute("SELECT sha256 FROM images").fetchall()]
    for sha in stored_shas:  # every stored row has its complete thumbnail
        with Image.open(thumbnail_path(thumbs, sha)) as thumb:
            thumb.load()

    if small_disk is not None:  # space is freed; the same command then finishes the job
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        second = run_import(folder, tmp_path, env)
        assert second.returncode == 0, second.stderr
        assert "duplicates 0, errors 0" in second.stdout
    else:
        from promptdex.db import open_database

        db = open_database(settings)
        with db.connect(autocommit=True) as conn:
            again = import_paths(conn, settings, [folder], progress=False)
        db.close()
        assert (again.imported + again.unchanged, again.duplicates, again.errors) == (FILES, 0, [])
    assert_corpus_is_whole(database_url, folder, thumbs)


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
    assert len(list(thumbs.rglob("*.webp"))) < FILES  # the remaining files were not decoded and thumbnailed
    assert temp_files(thumbs) == []

    second = run_import(folder, tmp_path, env)
    assert second.returncode == 0, second.stderr
    assert "duplicates 0, errors 0" in second.stdout
    assert_corpus_is_whole(database_url, folder, thumbs)
