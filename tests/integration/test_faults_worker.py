"""Worker faults with real processes: a render longer than the lease, kill -9 mid-render, kill -9 of the database
mid-render (waited for, or given up on after PROMPTDEX_DB__RECONNECT_SECONDS), a full disk.

Each asserts nothing lost (the job ends done with its images linked), nothing duplicated (one row per image,
one render when the worker lives), the exit code and message, and recovery without a person.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from promptdex.pg_embedded import EmbeddedPostgres
from tests.helpers import clean_env, run_cli, wait_for

pytestmark = pytest.mark.integration

SLOW = ["--size", "128x128", "--steps", "60", "--model", "tiny"]  # a few seconds per image on a CPU


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return clean_env(PROMPTDEX_DATA_DIR=str(tmp_path / "data"), PROMPTDEX_DATABASE_URL=database_url,
                     PROMPTDEX_MODELS="tiny")


def enqueue(tmp_path: Path, env: dict[str, str], seeds: str) -> int:
    result = run_cli("generate", "a slow lighthouse", "--seeds", seeds, *SLOW, "--batch", "8", "--enqueue",
                     "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    (job_id,) = json.loads(result.stdout)
    return int(job_id)


def worker(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "promptdex", "worker", "--json", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_row(url: str, job_id: int) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def image_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM images").fetchone()
    return int(row[0]) if row else 0


def test_a_live_worker_keeps_a_job_that_outlasts_its_lease(tmp_path: Path, env: dict[str, str],
                                                           database_url: str) -> None:
    job_id = enqueue(tmp_path, env, "1-4")
    first = worker(tmp_path, env, "--once", "--lease", "1", "--name", "first")
    wait_for(lambda: job_row(database_url, job_id)["status"] == "running", 120, "the first worker to start")
    time.sleep(2.5)  # past the lease: without heartbeats the job would be claimable now
    second = worker(tmp_path, env, "--once", "--lease", "1", "--name", "second")
    out2, err2 = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert json.loads(out2)["done"] == 0 and json.loads(out2)["images"] == 0  # nothing rendered twice
    assert json.loads(out1)["done"] == 1
    job = job_row(database_url, job_id)
    assert job["status"] == "done" and job["attempts"] == 1 and job["worker"] == "first"
    assert len(job["image_ids"]) == 4 and image_count(database_url) == 4


def test_a_killed_workers_job_is_retried_and_linked_once(tmp_path: Path, env: dict[str, str],
                                                         database_url: str) -> None:
    job_id = enqueue(tmp_path, env, "11-13")
    doomed = worker(tmp_path, env, "--once", "--lease", "2", "--name", "doomed")
    wait_for(lambda: job_row(database_url, job_id)["status"] == "running", 120, "the worker to take the job")
    time.sleep(1.0)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    time.sleep(2.5)  # the lease runs out
    rescuer = worker(tmp_path, env, "--once", "--lease", "30", "--name", "rescuer")
    out, err = rescuer.communicate(timeout=300)
    assert rescuer.returncode == 0, err
    job = job_row(database_url, job_id)
    assert job["status"] == "done" and job["attempts"] == 2 and job["worker"] == "rescuer"
    assert len(job["image_ids"]) == len(set(job["image_ids"])) == 3 and image_count(database_url) == 3
    assert not list((tmp_path / "data" / "images").rglob("*.tmp"))


def _terminate_worker_sessions(url: str) -> bool:
    """End the worker's sessions from the server side once it polls the queue."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND pid <> pg_backend_pid() AND query LIKE '%%jobs%%'").fetchall()
    return bool(rows)


def test_with_reconnect_off_a_lost_database_stops_the_worker_at_once(tmp_path: Path, env: dict[str, str],
                                                                     database_url: str) -> None:
    running = worker(tmp_path, {**env, "PROMPTDEX_DB__RECONNECT_SECONDS": "0"}, "--poll", "0.2", "--name", "waiting")
    wait_for(lambda: _terminate_worker_sessions(database_url), 60, "the worker's connection")
    started = time.monotonic()
    _, err = running.communicate(timeout=60)
    assert running.returncode == 1 and time.monotonic() - started < 10
    lines = [line for line in err.splitlines() if line.startswith("promptdex: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "worker waiting: lost the database" in lines[0] and "PROMPTDEX_DB__RECONNECT_SECONDS is 0" in lines[0]


@pytest.fixture
def own_server() -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL server of this test's own, to kill: the workers get only its URL (an external server)."""
    root = Path(tempfile.mkdtemp(prefix="promptdex-workerdb-"))  # not under basetemp: see conftest.pg_server_url
    server = EmbeddedPostgres(root / "external")
    try:
        yield server, server.acquire()
    finally:
        server.release()
        shutil.rmtree(root, ignore_errors=True)


def _postmaster(server: EmbeddedPostgres) -> int:
    return int((server.pgdata / "postmaster.pid").read_text().splitlines()[0])


def test_a_worker_outlives_a_killed_database_and_finishes_its_job_once(
        tmp_path: Path, own_server: tuple[EmbeddedPostgres, str]) -> None:
    server, url = own_server
    env = clean_env(PROMPTDEX_DATA_DIR=str(tmp_path / "data"), PROMPTDEX_DATABASE_URL=url, PROMPTDEX_MODELS="tiny",
                    PROMPTDEX_DB__RECONNECT_SECONDS="60")
    job_id = enqueue(tmp_path, env, "31-33")
    running = worker(tmp_path, env, "--once", "--lease", "30", "--name", "steady")
    wait_for(lambda: job_row(url, job_id)["status"] == "running", 120, "the worker to take the job")
    time.sleep(1.0)  # mid-render
    os.kill(_postmaster(server), signal.SIGKILL)
    time.sleep(3.0)  # the database stays down a while; the worker keeps rendering, then waits for it
    assert running.poll() is None, running.communicate()[1]
    server.ensure_running()  # its operator brings it back
    out, err = running.communicate(timeout=300)
    assert running.returncode == 0, err
    assert "worker steady: lost the database" in err and "the database is back" in err and "Traceback" not in err
    job = job_row(url, job_id)
    # taken again at once by the same worker (its lease of 30 s released), not after the lease ran out
    assert job["status"] == "done" and job["attempts"] == 2 and job["worker"] == "steady"
    assert len(job["image_ids"]) == len(set(job["image_ids"])) == 3 and image_count(url) == 3
    assert json.loads(out)["done"] == 1
    assert not list((tmp_path / "data" / "images").rglob("*.tmp"))


def test_a_database_that_stays_down_stops_the_worker_naming_the_setting(
        tmp_path: Path, own_server: tuple[EmbeddedPostgres, str]) -> None:
    server, url = own_server
    env = clean_env(PROMPTDEX_DATA_DIR=str(tmp_path / "data"), PROMPTDEX_DATABASE_URL=url, PROMPTDEX_MODELS="tiny",
                    PROMPTDEX_DB__RECONNECT_SECONDS="3")
    running = worker(tmp_path, env, "--poll", "0.2", "--name", "patient")
    wait_for(lambda: _terminate_worker_sessions(url), 60, "the worker's connection")  # it is up and polling
    os.kill(_postmaster(server), signal.SIGKILL)
    started = time.monotonic()
    _, err = running.communicate(timeout=60)
    assert running.returncode == 1 and 2.5 < time.monotonic() - started < 30, err
    lines = [line for line in err.splitlines() if line.startswith("promptdex: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "worker patient: lost the database" in lines[0]
    assert "did not come back within PROMPTDEX_DB__RECONNECT_SECONDS (3 s)" in lines[0]


def test_a_full_disk_stops_the_worker_and_requeues_its_job(tmp_path: Path, env: dict[str, str],
                                                           database_url: str) -> None:
    images = tmp_path / "small-disk"
    images.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(images)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        (images / "filler").write_bytes(b"\0" * (508 * 1024))
        full = {**env, "PROMPTDEX_IMAGES_DIR": str(images)}
        job_id = enqueue(tmp_path, full, "21-22")
        result = run_cli("worker", "--once", cwd=tmp_path, env=full)
        assert result.returncode == 1
        lines = [line for line in result.stderr.splitlines() if line.startswith("promptdex: error:")]
        assert len(lines) == 1 and str(images) in lines[0] and "disk is full" in lines[0], result.stderr
        job = job_row(database_url, job_id)
        assert job["status"] == "queued" and "disk is full" in job["error"]
        assert image_count(database_url) == 0
        assert [p.name for p in images.rglob("*") if p.is_file()] == ["filler"]  # nothing half-written
        (images / "filler").unlink()  # a person frees space; the next run finishes the job
        again = run_cli("worker", "--once", cwd=tmp_path, env=full)
        assert again.returncode == 0, again.stderr
        assert job_row(database_url, job_id)["status"] == "done" and image_count(database_url) == 2
    finally:
        subprocess.run(["umount", "-l", str(images)], check=False)
