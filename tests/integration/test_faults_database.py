"""The API outlives its database: kill -9 of PostgreSQL under a serving API, embedded and external.

While the server is down, requests fail fast (503 JSON naming the cause, Retry-After) and health answers at
once; the embedded server is started again by the serving API; with an external URL the pool reconnects by
itself when the server returns. Nobody runs a command in between.
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from promptdex.pg_embedded import EmbeddedPostgres
from promptdex.settings import get_settings
from search_api.app import create_app
from tests.helpers import clean_env

pytestmark = pytest.mark.integration


def _get(url: str, timeout: float = 10) -> tuple[int, dict[str, Any], dict[str, str], float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers), time.monotonic() - started


def _postmaster(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture
def root() -> Iterator[Path]:
    # Not under pytest's basetemp (see conftest.pg_server_url): the server runs as another account when root.
    path = Path(tempfile.mkdtemp(prefix="promptdex-dbfault-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_killed_embedded_database_is_restarted_under_a_serving_api(root: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = clean_env(PROMPTDEX_DATA_DIR=str(root / "data"), PROMPTDEX_MODELS="tiny")
    log = root / "serve.log"
    with log.open("wb") as sink:
        serve = subprocess.Popen([sys.executable, "-m", "promptdex", "serve", "--port", str(port)], cwd=root,
                                 env=env, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    pgdata = root / "data" / "postgres" / "pgdata"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert serve.poll() is None, log.read_text()[-3000:]
            try:
                if _get(f"{base}/api/search")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        before = _postmaster(pgdata)
        os.kill(before, signal.SIGKILL)
        time.sleep(0.2)
        status, body, headers, took = _get(f"{base}/api/search")
        assert took < 2.5, f"a request took {took:.1f} s while the database was down"
        if status == 503:  # down, or (restarted at once by serve's workers) still starting: either way it says so
            assert body["detail"].startswith(("database: PostgreSQL", "database: no connection to PostgreSQL"))
            assert headers["Retry-After"]
        else:
            assert status == 200  # already restarted
        health_status, health, _, health_took = _get(f"{base}/api/health")
        assert health_status == 200 and health_took < 2.0
        deadline = time.monotonic() + 30
        while _get(f"{base}/api/search")[0] != 200:
            assert time.monotonic() < deadline, "the API did not come back by itself:\n" + log.read_text()[-3000:]
            time.sleep(0.5)
        assert _postmaster(pgdata) != before
        assert _get(f"{base}/api/health")[1]["database"]["ok"] is True
        text = log.read_text()
        assert "not running: starting it again" in text and "Traceback" not in text
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    deadline = time.monotonic() + 30  # the last user left: the embedded server stops
    while (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (pgdata / "postmaster.pid").exists()


def test_the_pool_reconnects_by_itself_to_an_external_server_that_returns(root: Path) -> None:
    server = EmbeddedPostgres(root / "external")  # stands in for an external server: the app only has its URL
    url = server.acquire()
    try:
        settings = get_settings(data_dir=root / "data", database_url=url, models="tiny",
                                api={"rate_burst": 10_000, "rate_sustained": 100_000})
        with TestClient(create_app(settings), base_url="http://localhost") as api:
            assert api.get("/api/search").status_code == 200
            os.kill(_postmaster(server.pgdata), signal.SIGKILL)
            time.sleep(0.3)
            for _ in range(3):
                started = time.monotonic()
                response = api.get("/api/search")
                assert time.monotonic() - started < 2.5
                assert response.status_code == 503 and response.headers["retry-after"] == "2"
                assert response.json()["detail"].startswith("database: ")
                assert str(root) not in response.text  # no socket paths in the answer
            started = time.monotonic()
            health = api.get("/api/health")
            assert health.status_code == 200 and time.monotonic() - started < 2.0
            assert health.json()["status"] == "degraded" and health.json()["database"]["ok"] is False
            server.ensure_running()  # the external server comes back (its operator restarts it)
            deadline = time.monotonic() + 20
            while api.get("/api/search").status_code != 200:
                assert time.monotonic() < deadline, "the pool did not reconnect"
                time.sleep(0.3)
            assert api.get("/api/health").json()["database"]["ok"] is True
    finally:
        server.release()
