"""`promptdex serve --workers 1` (what `make demo` runs): its worker answers a Create, the image reproduces bit for
bit, a worker killed with SIGKILL is started again, and the workers stop with the server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_web import _free_port, _wait_ready, add_account, corpus_env
from tests.helpers import run_cli, stop_process

pytestmark = pytest.mark.e2e


def _call(base: str, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"{base}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


def _finished(base: str, token: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = _call(base, "GET", f"/api/jobs/{job_id}", token)
        assert status == 200, job
        if job["status"] in ("done", "failed", "cancelled"):
            return dict(job)
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish in {timeout} s")


def _worker_pids(log: Path) -> list[int]:
    pids = []
    for line in log.read_text(errors="replace").splitlines():
        if m := re.search(r"started the generation worker: pid (\d+)", line):
            pids.append(int(m[1]))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_served_worker_creates_reproducible_images_and_comes_back_after_a_kill(
        pg_server_url: str, tmp_path: Path) -> None:
    with corpus_env(pg_server_url, tmp_path) as env:
        maker = add_account(tmp_path, env, "maker", "creator")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "serve.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "promptdex", "serve", "--port", str(port), "--workers", "1"],
                                    cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=sink,
                                    stderr=subprocess.STDOUT)
        try:
            _wait_ready(base, proc, log)
            [first_pid] = _worker_pids(log)
            status, created = _call(base, "POST", "/api/generations", maker.token,
                                    {"prompt": "a lighthouse at dusk", "seed": 11, "width": 64, "height": 64})
            assert status == 201, created
            job = _finished(base, maker.token, created["id"])
            assert job["status"] == "done", job
            [image_id] = job["image_ids"]
            result = run_cli("reproduce", str(image_id), cwd=tmp_path, env=env, timeout=600)
            assert result.returncode == 0, result.stdout + result.stderr  # bit for bit

            os.kill(first_pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "started another" not in log.read_text(errors="replace"):
                time.sleep(0.5)
            status, again = _call(base, "POST", "/api/generations", maker.token,
                                  {"prompt": "a lighthouse at dawn", "seed": 12, "width": 64, "height": 64})
            assert status == 201, again
            assert _finished(base, maker.token, again["id"])["status"] == "done"  # the new worker took it
        finally:
            stop_process(proc, timeout=60)
        restarted = re.findall(r"pid (\d+) exited with -9; started another: pid (\d+)", log.read_text(errors="replace"))
        assert restarted and int(restarted[0][0]) == first_pid, log.read_text()[-3000:]
        second = int(restarted[0][1])
        deadline = time.monotonic() + 60  # the worker got SIGTERM with the server: it finishes, then exits
        while time.monotonic() < deadline and _alive(second):
            time.sleep(0.2)
        assert not _alive(first_pid) and not _alive(second)
