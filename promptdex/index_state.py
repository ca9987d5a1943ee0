"""Index state: which bundles exist and which items (image or prompt ids) went into each."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]


def upsert_bundle(conn: Conn, *, name: str, kind: str, model: str, dim: int, metric: str, path: str,
                  manifest: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO index_bundles (name, kind, model, dim, metric, path, manifest) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, "
        " model = EXCLUDED.model, dim = EXCLUDED.dim, metric = EXCLUDED.metric, path = EXCLUDED.path, "
        " manifest = EXCLUDED.manifest, updated_at = now()",
        (name, kind, model, dim, metric, path, json.dumps(manifest)),
    )


def record_indexed(conn: Conn, *, bundle: str, item_ids: Sequence[int]) -> int:
    """Mark items as added to a bundle (idempotent); returns how many were new."""
    cur = conn.execute(
        "INSERT INTO index_entries (bundle, item_id) SELECT %s, unnest(%s::bigint[]) "
        "ON CONFLICT DO NOTHING",
        (bundle, list(item_ids)),
    )
    conn.execute(
        "UPDATE index_bundles SET count = (SELECT count(*) FROM index_entries WHERE bundle = %s), "
        " updated_at = now() WHERE name = %s",
        (bundle, bundle),
    )
    return cur.rowcount


def indexed_ids(conn: Conn, *, bundle: str) -> set[int]:
    rows = conn.execute("SELECT item_id FROM index_entries WHERE bundle = %s", (bundle,)).fetchall()
    return {int(r["item_id"] if isinstance(r, dict) else r[0]) for r in rows}


def unindexed_image_ids(conn: Conn, *, bundle: str, limit: int) -> list[int]:
    """Images not yet in `bundle`, oldest id first."""
    rows = conn.execute(
        "SELECT i.id FROM images i WHERE NOT EXISTS "
        "(SELECT 1 FROM index_entries e WHERE e.bundle = %s AND e.item_id = i.id) ORDER BY i.id LIMIT %s",
        (bundle, limit),
    ).fetchall()
    return [int(r["id"] if isinstance(r, dict) else r[0]) for r in rows]


def list_bundles(conn: Conn) -> list[dict[str, Any]]:
    return list(conn.execute("SELECT name, kind, model, dim, metric, count, path, updated_at "
                             "FROM index_bundles ORDER BY name").fetchall())


def replace_indexed(conn: Conn, *, bundle: str, item_ids: Sequence[int]) -> None:
    """Make `item_ids` exactly the items of `bundle` (a rebuild's swap; call it inside a transaction)."""
    conn.execute("DELETE FROM index_entries WHERE bundle = %s", (bundle,))
    record_indexed(conn, bundle=bundle, item_ids=item_ids)
