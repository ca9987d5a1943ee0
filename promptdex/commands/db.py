"""`promptdex db init|migrate|status`: create, migrate and describe the corpus database."""

from __future__ import annotations

import argparse
import json
from typing import Any

from promptdex.console import out
from promptdex.db import code_schema_version, migrate_schema, open_database, schema_version
from promptdex.settings import Settings
from promptdex.store import count_rows


def register(sub: Any) -> None:
    parser = sub.add_parser("db", help="create, migrate and describe the corpus database")
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="start or connect to the database and create the schema")
    init.set_defaults(func=run_init)
    migrate = actions.add_parser("migrate", help="apply pending schema migrations")
    migrate.set_defaults(func=run_migrate)
    status = actions.add_parser("status", help="which server, schema version, row counts")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)


def run_init(args: argparse.Namespace, settings: Settings) -> int:
    db = open_database(settings)
    try:
        with db.connect() as conn:
            out(f"database ready: {db.display}, schema version {schema_version(conn)}")
    finally:
        db.close()
    return 0


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    db = open_database(settings, migrate=False)
    try:
        with db.connect() as conn:
            before, after = migrate_schema(conn)
        out(f"schema version {before} -> {after}" if after != before else f"schema is up to date (version {after})")
    finally:
        db.close()
    return 0


def status(settings: Settings) -> dict[str, Any]:
    """What `db status` reports, as data."""
    db = open_database(settings)
    try:
        with db.connect() as conn:
            server = conn.execute("SHOW server_version").fetchone()
            return {
                "server": db.kind,
                "location": db.display,
                "server_version": (server or {}).get("server_version"),
                "schema_version": schema_version(conn),
                "code_schema_version": code_schema_version(),
                "rows": count_rows(conn),
            }
    finally:
        db.close()


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    info = status(settings)
    if args.json:
        out(json.dumps(info, indent=2))
        return 0
    out(f"server:         {info['location']}")
    out(f"PostgreSQL:     {info['server_version']}")
    out(f"schema version: {info['schema_version']} (code {info['code_schema_version']})")
    for table, count in info["rows"].items():
        out(f"{table + ':':<15} {count}")
    return 0
