"""Migrations: forward-only, versioned, idempotent, concurrent-safe, and a newer schema is refused."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from promptdex.db import code_schema_version, migrate_schema, migrations, open_database, schema_version
from promptdex.errors import SchemaTooNew

pytestmark = [pytest.mark.integration, pytest.mark.external_db]


def test_migrations_are_numbered_in_order() -> None:
    versions = [v for v, _name, _sql in migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_empty_database_is_migrated_to_the_code_version(settings: Any) -> None:
    db = open_database(settings, migrate=False)
    with db.connect() as conn:
        assert schema_version(conn) == 0
        before, after = migrate_schema(conn)
        assert (before, after) == (0, code_schema_version())
        assert migrate_schema(conn) == (after, after)  # second run changes nothing
        tables = {r["table_name"] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()}
    assert {"images", "prompts", "jobs", "index_bundles", "index_entries", "schema_version"} <= tables


def test_newer_schema_is_refused_with_both_versions_and_nothing_written(settings: Any) -> None:
    db = open_database(settings)
    newer = code_schema_version() + 5
    with db.connect() as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, 'from_the_future.sql')", (newer,))
        conn.commit()
        count_before = conn.execute("SELECT count(*) AS n FROM schema_version").fetchone()["n"]
    with pytest.raises(SchemaTooNew) as info:
        open_database(settings)
    message = str(info.value)
    assert str(newer) in message and str(code_schema_version()) in message
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) AS n FROM schema_version").fetchone()["n"] == count_before


def test_concurrent_migrations_apply_once(settings: Any) -> None:
    import concurrent.futures

    db = open_database(settings, migrate=False)

    def run() -> tuple[int, int]:
        with db.connect() as conn:
            return migrate_schema(conn)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(), range(4)))
    assert sorted(r[0] for r in results)[-1] == code_schema_version()
    assert sum(1 for before, _after in results if before == 0) == 1
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(migrations())
