"""The CLI as a user runs it: no configuration, embedded server lifecycle, crash recovery, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptdex.db import code_schema_version
from promptdex.pg_embedded import EmbeddedPostgres
from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.e2e

HOLDER = """
import sys
from pathlib import Path
from promptdex.pg_embedded import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[1]))
server.acquire()
print(server.server_pid(), flush=True)
sys.stdin.readline()
"""


def wait_until(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def holder(root: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=clean_env())
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(60)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("env", "db"):
        assert command in result.stdout


def test_env_reports_versions_and_devices(tmp_path: Path) -> None:
    result = run_cli("env", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["python"].count(".") == 2
    assert info["packages"]["promptdex"]
    assert info["packages"]["torch"].startswith("2.14.1")
    assert "PostgreSQL" not in (info["postgresql"] or "") and info["postgresql"].split()[0][0].isdigit()
    assert info["devices"]["cpu_threads"] >= 1


def test_db_status_with_no_configuration_then_no_server_left(tmp_path: Path) -> None:
    result = run_cli("db", "status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["server"] == "embedded"
    assert str(tmp_path / "data") in info["location"]
    assert info["schema_version"] == info["code_schema_version"] == code_schema_version()
    assert info["rows"] == {"images": 0, "prompts": 0, "jobs": 0, "index_entries": 0}
    server = EmbeddedPostgres(tmp_path / "data" / "postgres")
    assert wait_until(lambda: server.server_pid() is None, 10), "the embedded server outlived its last user"
    text = run_cli("db", "status", cwd=tmp_path)
    assert text.returncode == 0 and "schema version" in text.stdout


def test_processes_share_one_server_and_the_last_stops_it(tmp_path: Path) -> None:
    root = tmp_path / "data" / "postgres"
    first, pid1 = holder(root)
    second, pid2 = holder(root)
    assert pid1 == pid2
    result = run_cli("db", "status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    server = EmbeddedPostgres(root)
    release(first)
    assert server.server_pid() == pid1, "server stopped while a process still used it"
    release(second)
    assert wait_until(lambda: server.server_pid() is None, 10)


def test_kill_9_of_the_server_then_the_next_command_recovers(tmp_path: Path) -> None:
    root = tmp_path / "data" / "postgres"
    proc, pid = holder(root)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: EmbeddedPostgres(root).server_pid() is None, 10)
    result = run_cli("db", "status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["schema_version"] == code_schema_version()
    release(proc)
    assert wait_until(lambda: EmbeddedPostgres(root).server_pid() is None, 15)


def test_kill_9_of_every_user_leaves_no_orphan(tmp_path: Path) -> None:
    root = tmp_path / "data" / "postgres"
    proc, pid = holder(root)
    proc.kill()
    proc.wait()
    assert wait_until(lambda: EmbeddedPostgres(root).server_pid() is None, 20), "orphaned server"
    result = run_cli("db", "status", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_data_dir_that_cannot_be_written_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("db", "status", cwd=tmp_path, env=clean_env(PROMPTDEX_DATA_DIR=str(blocker / "data")))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PROMPTDEX_DATA_DIR" in lines[0] and str(blocker) in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url, words", [
    ("not a url at all", ["PROMPTDEX_DATABASE_URL"]),
    ("postgresql://nobody@127.0.0.1:1/nothing", ["PROMPTDEX_DATABASE_URL", "cannot connect"]),
])
def test_bad_database_url_is_one_clear_line(tmp_path: Path, url: str, words: list[str]) -> None:
    result = run_cli("db", "status", cwd=tmp_path, env=clean_env(PROMPTDEX_DATABASE_URL=url))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "data").exists(), "nothing is written for a bad URL"


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    result = run_cli("db", "status", cwd=tmp_path, env=clean_env(PROMPTDEX_API__PORT="eighty"))
    assert result.returncode != 0
    assert "PROMPTDEX_API__PORT" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_trace(tmp_path: Path) -> None:
    result = run_cli("--debug", "db", "status", cwd=tmp_path, env=clean_env(PROMPTDEX_DATABASE_URL="bogus"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_newer_schema_is_refused_by_the_cli(tmp_path: Path, database_url: str) -> None:
    env = clean_env(PROMPTDEX_DATABASE_URL=database_url)
    assert run_cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'future.sql')")
    result = run_cli("db", "migrate", cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "99" in result.stderr and str(code_schema_version()) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
