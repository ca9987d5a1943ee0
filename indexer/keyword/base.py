"""The keyword index protocol (ranked prompt search, suggestions) and the bookkeeping its back ends share."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from promptdex.index_state import record_indexed, upsert_bundle

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
ConnectionSource = Callable[[], AbstractContextManager[Conn]]
_WORD = re.compile(r"\w+")
MAX_QUERY_WORDS = 16


@runtime_checkable
class KeywordIndex(Protocol):
    """Ranked keyword search over distinct prompts. `search` gives (prompt_id, score), best first; a prompt
    holding more of the query's words ranks above one holding fewer. `update` indexes what is pending."""

    backend: str

    @property
    def state_name(self) -> str: ...

    def search(self, query: str, limit: int = 50) -> list[tuple[int, float]]: ...

    def suggest(self, prefix: str, limit: int = 10) -> list[str]: ...

    def update(self, conn: Conn, *, batch: int = 5000, progress: Callable[[int], None] | None = None) -> int: ...

    def pending(self, conn: Conn) -> int: ...

    def rebuild(self, conn: Conn) -> None: ...


def rows(conn: Conn, sql: str | pgsql.Composed, params: Any = None) -> list[dict[str, Any]]:
    """Rows as dicts whatever the connection's row factory (a pool's connections may differ from ours)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def query_words(query: str) -> list[str]:
    """The words of a query, lower case, at most MAX_QUERY_WORDS."""
    return _WORD.findall(query.casefold())[:MAX_QUERY_WORDS]


def ensure_state(conn: Conn, name: str, backend: str) -> None:
    """The index_bundles row that index_entries of this keyword back end hang from."""
    upsert_bundle(conn, name=name, kind="keyword", model=backend, dim=0, metric="rank", path="",
                  manifest={"backend": backend})


def pending_prompts(conn: Conn, name: str, limit: int) -> list[tuple[int, str]]:
    """Prompts not yet in the keyword index `name`, oldest first."""
    found = rows(conn, "SELECT p.id, p.text FROM prompts p WHERE NOT EXISTS "
                 "(SELECT 1 FROM index_entries e WHERE e.bundle = %s AND e.item_id = p.id) ORDER BY p.id LIMIT %s",
                 (name, limit))
    return [(int(r["id"]), str(r["text"])) for r in found]


def count_pending(conn: Conn, name: str) -> int:
    found = rows(conn, "SELECT count(*) AS n FROM prompts p WHERE NOT EXISTS "
                 "(SELECT 1 FROM index_entries e WHERE e.bundle = %s AND e.item_id = p.id)", (name,))
    return int(found[0]["n"]) if found else 0


def mark_indexed(conn: Conn, name: str, ids: list[int]) -> None:
    record_indexed(conn, bundle=name, item_ids=ids)
