"""Schema-driven fuzzing of the live API (schemathesis, every check): no 5xx, nothing the OpenAPI document denies.

`promptdex serve` runs in a subprocess on 127.0.0.1 over a small real corpus. Every operation gets a
bounded number of positive and negative cases from a fixed seed, once anonymously and once with an
admin's Bearer token. A failing check fails the test with schemathesis's report (check, status, curl).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from promptdex import accounts
from promptdex.accounts import Role
from tests.helpers import clean_env, run_cli, stop_process
from tests.integration.api_corpus import create_database

pytestmark = pytest.mark.e2e

SEED = 20261201
MAX_EXAMPLES = int(os.environ.get("PROMPTDEX_FUZZ_EXAMPLES", "20"))
CONFIG = f"""
seed = {SEED}
workers = 1
suppress-health-check = ["too_slow", "filter_too_much"]
request-timeout = 30
[cache]
enabled = false
[generation]
mode = "all"
max-examples = {MAX_EXAMPLES}
database = "none"
[checks]
enabled = true
# DELETE /api/jobs/{id} cancels a job; the job stays readable (its status says cancelled), by design.
use_after_free.enabled = false
[phases.examples]
enabled = true
[phases.coverage]
enabled = true
[phases.fuzzing]
enabled = true

# Schema-valid input these operations must still refuse, so positive data may get these answers too:
# a cursor is signed by the server (no generated string can carry a valid signature), and random bytes
# are not an image.
[[operations]]
include-path = "/api/search"
include-method = "GET"
checks = {{ positive_data_acceptance = {{ expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"] }} }}
# A generation request has rules across fields that a schema cannot state (a model on this server's list, a
# known sampler name, strength only with an init image, at most 75 CLIP tokens), and random bytes are not an image.
[[operations]]
include-path = "/api/generations"
checks = {{ positive_data_acceptance = {{ expected-statuses = ["2xx", "401", "403", "413", "415", "422", "429"] }} }}
# A job's event stream lasts until the job ends (there is no worker here): it is tested in test_api_generations.
[[operations]]
include-path = "/api/jobs/{{job_id}}/events"
enabled = false
[[operations]]
include-path = "/api/search/image"
checks = {{ positive_data_acceptance = {{ expected-statuses = ["2xx", "401", "403", "404", "409", "413", "415",
                                                            "429"] }} }}
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"promptdex serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/openapi.json", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"promptdex serve did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def live(pg_server_url: str) -> Iterator[tuple[str, str]]:
    """(base URL, admin token) of `promptdex serve` on a small corpus; the server is stopped by its pid."""
    with tempfile.TemporaryDirectory(prefix="promptdex-fuzz-") as tmp:
        root = Path(tmp)
        url = create_database(pg_server_url)
        env = clean_env(PROMPTDEX_DATA_DIR=str(root / "data"), PROMPTDEX_DATABASE_URL=url, PROMPTDEX_MODELS="tiny",
                        PROMPTDEX_API__RATE_BURST="100000", PROMPTDEX_API__RATE_SUSTAINED="1000000",
                        PROMPTDEX_API__LOGIN_ATTEMPTS="100000", PROMPTDEX_API__IMAGES_PER_HOUR="100000",
                        PROMPTDEX_API__IMAGES_QUEUED="100000", PROMPTDEX_API__QUEUE_CAP="100000")
        gen = run_cli("generate", "a lighthouse on a cliff", "--seeds", "1-3", "--size", "64x64", "--steps", "2",
                      "--model", "tiny", "--json", cwd=root, env=env, timeout=600)
        assert gen.returncode == 0, gen.stderr
        assert run_cli("index", "--no-progress", cwd=root, env=env, timeout=600).returncode == 0
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            accounts.add_user(conn, name="fuzz-admin", role=Role.ADMIN, password="fuzz-password")
            _, token = accounts.create_token(conn, name="fuzz-admin")
        port = _free_port()
        log = root / "serve.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "promptdex", "serve", "--port", str(port)], cwd=root,
                                    env=env, stdout=sink, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(base, proc, log)
            yield base, token
        finally:
            stop_process(proc, timeout=20)
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(text[-6000:])


def fuzz(base: str, tmp_path: Path, *headers: str) -> None:
    """Run `schemathesis run` with every check; fail with its report when any check failed."""
    config = tmp_path / "schemathesis.toml"
    # every check is on by default (CONFIG); `--checks all` would also override the per-operation settings.
    # With a token, a run where every secured operation still answered 401/403 fails instead of warning.
    config.write_text(CONFIG + ('\n[warnings]\nfail-on = ["missing_auth"]\n' if headers else ""))
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
           f"{base}/openapi.json", "--report", "json", "--report-dir", str(tmp_path)]
    for header in headers:
        cmd += ["-H", header]
    env = {**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis"), "COLUMNS": "160"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    reports = list(tmp_path.glob("json-*.json"))
    report = json.loads(reports[0].read_text()) if reports else {}
    assert result.returncode == 0 and reports and not report.get("failures") and not report.get("errors"), (
        f"schemathesis exited {result.returncode}:\n{result.stdout[-30000:]}\n{result.stderr[-3000:]}")


def test_fuzz_anonymous(live: tuple[str, str], tmp_path: Path) -> None:
    fuzz(live[0], tmp_path)


def test_fuzz_admin(live: tuple[str, str], tmp_path: Path) -> None:
    fuzz(live[0], tmp_path, f"Authorization: Bearer {live[1]}")


def test_health_still_answers_after_the_fuzzing(live: tuple[str, str]) -> None:
    with urllib.request.urlopen(f"{live[0]}/api/health", timeout=10) as response:
        body = json.loads(response.read())
    assert body["database"]["ok"] is True


def _raw_exchange(base: str, head: str, timeout: float = 10) -> bytes:
    """Send only `head` (request line and headers) on a raw socket and read what the server answers."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_an_oversized_upload_is_refused_before_its_body_is_sent(live: tuple[str, str]) -> None:
    """413 arrives while the 200 MB body has not been sent at all: the server never waits to read it."""
    head = ("POST /api/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 209715200\r\n\r\n")
    answer = _raw_exchange(live[0], head)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:500]
    assert b"connection: close" in rest.lower()


def test_a_foreign_host_is_refused_on_the_live_server(live: tuple[str, str]) -> None:
    answer = _raw_exchange(live[0], "GET /api/search HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
