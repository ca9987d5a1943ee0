"""Database access: pick the external or embedded server, connect, and migrate the schema forward."""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row

from promptdex.errors import ConfigError, DatabaseError, SchemaTooNew
from promptdex.pg_embedded import EmbeddedPostgres
from promptdex.settings import Settings

logger = logging.getLogger(__name__)

MIN_SERVER_VERSION = 140000
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATION_LOCK = 0x70726F6D  # pg_advisory_xact_lock key shared by every promptdex process


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with this code, in order."""
    found = []
    for entry in resources.files("promptdex.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def code_schema_version() -> int:
    return migrations()[-1][0]


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


@dataclass
class Database:
    """Where the corpus lives. `kind` is "embedded" or "external"; `url` connects to it."""

    kind: str
    url: str
    connect_timeout: float
    embedded: EmbeddedPostgres | None = field(default=None, repr=False)
    reconnect_seconds: float = 0.0

    @property
    def display(self) -> str:
        if self.embedded is not None:
            return f"embedded PostgreSQL in {self.embedded.pgdata}"
        return f"external PostgreSQL at {_redact(self.url)}"

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(
                self.url, autocommit=autocommit, row_factory=dict_row, connect_timeout=int(self.connect_timeout)
            )
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            setting = "PROMPTDEX_DATABASE_URL" if self.kind == "external" else "the embedded server"
            raise DatabaseError(f"{setting}: cannot connect to {self.display}: {reason}") from exc

    def reconnect(self, lost: BaseException, *, who: str, stop: threading.Event | None = None,
                  autocommit: bool = True) -> psycopg.Connection[dict[str, Any]] | None:
        """A new connection once the server answers again, after `who` lost its connection (`lost`): tried for
        PROMPTDEX_DB__RECONNECT_SECONDS, starting the embedded server again if it died. None when `stop` was set
        meanwhile; DatabaseError (naming `who` and the setting) when the server did not come back in time."""
        reason = (str(lost).strip().splitlines() or [type(lost).__name__])[0]
        message = f"{who}: lost the database ({self.display}): {reason}"
        if self.reconnect_seconds <= 0:
            raise DatabaseError(f"{message} (PROMPTDEX_DB__RECONNECT_SECONDS is 0: not reconnecting)") from lost
        logger.warning("%s; reconnecting for up to %g s (PROMPTDEX_DB__RECONNECT_SECONDS)", message,
                       self.reconnect_seconds)
        stop = stop or threading.Event()
        deadline = time.monotonic() + self.reconnect_seconds
        delay = 0.5
        while not stop.is_set():
            try:
                if self.embedded is not None:
                    self.embedded.ensure_running()
                conn = self.connect(autocommit=autocommit)
                logger.warning("%s: the database is back (%s)", who, self.display)
                return conn
            except (DatabaseError, OSError, subprocess.SubprocessError) as exc:
                last: BaseException = exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseError(f"{message}; it did not come back within PROMPTDEX_DB__RECONNECT_SECONDS "
                                    f"({self.reconnect_seconds:g} s): {last}") from lost
            stop.wait(min(delay, left))
            delay = min(delay * 2, 5.0)
        return None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.release()


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """Connect to PROMPTDEX_DATABASE_URL or start/join the embedded server; migrate unless told not to."""
    if settings.database_url:
        url = settings.database_url.strip()
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"PROMPTDEX_DATABASE_URL is not a valid PostgreSQL URL: {exc}") from exc
        if not url.startswith(("postgresql://", "postgres://")) and "=" not in url:
            raise ConfigError(f"PROMPTDEX_DATABASE_URL must start with postgresql:// (got {_redact(url)!r})")
        db = Database("external", url, settings.db.connect_timeout, reconnect_seconds=settings.db.reconnect_seconds)
    else:
        embedded = EmbeddedPostgres(settings.postgres_path, start_timeout=settings.db.embedded_start_timeout)
        db = Database("embedded", embedded.acquire(), settings.db.connect_timeout, embedded,
                      reconnect_seconds=settings.db.reconnect_seconds)
    if migrate:
        with db.connect() as conn:
            check_server_version(conn, db)
            migrate_schema(conn)
    return db


def check_server_version(conn: psycopg.Connection[Any], db: Database) -> None:
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise DatabaseError(
            f"{db.display} runs PostgreSQL {version // 10000}; promptdex needs PostgreSQL 14 or newer"
        )


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The highest applied migration, 0 for an empty database."""
    exists = conn.execute("SELECT to_regclass('public.schema_version') IS NOT NULL AS e").fetchone()
    if not exists or not _first(exists):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_version").fetchone()
    return int(_first(row)) if row else 0


def _first(row: Any) -> Any:
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


def migrate_schema(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Apply every migration newer than the database, each in its own transaction. Returns (before, after)."""
    code_version = code_schema_version()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = schema_version(conn)
        if before > code_version:
            raise SchemaTooNew(
                f"the database schema is version {before}, newer than this promptdex's version {code_version}: "
                "upgrade promptdex (nothing was changed)"
            )
        for version, name, sql in migrations():
            if version <= before:
                continue
            logger.info("applying migration %s", name)
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name))
        after = schema_version(conn)
    return before, after
