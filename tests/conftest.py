"""Shared fixtures: the shared metadata fixtures, and a real PostgreSQL server with a fresh database per test."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One cache of ONNX exports for the whole run (each model is exported once, not once per test's data dir); the
# runtime tests that need a cold cache pass their own folder.
_OWN_ONNX_CACHE = "PROMPTDEX_INDEXER__ONNX_DIR" not in os.environ
ONNX_CACHE = os.environ.setdefault("PROMPTDEX_INDEXER__ONNX_DIR", tempfile.mkdtemp(prefix="promptdex-test-onnx-"))



def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OWN_ONNX_CACHE:
        import shutil

        shutil.rmtree(ONNX_CACHE, ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures" / "metadata"


def require_shared_fixtures() -> Path:
    """The shared metadata fixtures; skip outside this workplace, but fail under CI=true."""
    if SHARED_FIXTURES.is_dir():
        return SHARED_FIXTURES
    reason = f"shared fixtures not found at {SHARED_FIXTURES}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: a missing fixture must not pass silently)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def metadata_fixtures() -> Path:
    return require_shared_fixtures()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A URL to the maintenance database of a real server: PROMPTDEX_DATABASE_URL's, or an embedded one."""
    external = os.environ.get("PROMPTDEX_DATABASE_URL")
    if external:
        yield external
        return
    import shutil
    import tempfile

    from promptdex.pg_embedded import EmbeddedPostgres

    # Not under pytest's basetemp: another pytest session on this machine resets its permissions to 0700,
    # which would lock out the unprivileged account the server runs as when tests run as root.
    root = Path(tempfile.mkdtemp(prefix="promptdex-test-pg-"))
    server = EmbeddedPostgres(root / "postgres")
    server.acquire()
    yield server.url("postgres")
    server.release()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(pg_server_url)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**info)
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Settings for a test: data dir under tmp_path, the fresh test database."""
    from promptdex.settings import get_settings

    for key in list(os.environ):
        if key.startswith("PROMPTDEX_") and key != "PROMPTDEX_INDEXER__ONNX_DIR":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return get_settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def db(settings: Any) -> Iterator[Any]:
    """A migrated database for the test."""
    from promptdex.db import open_database

    database = open_database(settings)
    yield database
    database.close()


@pytest.fixture
def conn(db: Any) -> Iterator[psycopg.Connection[Any]]:
    with db.connect(autocommit=True) as connection:
        yield connection
