"""`promptdex serve`: run the search API and the web page (and, on loopback, print a one-time sign-in link)."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from promptdex import accounts
from promptdex.console import out
from promptdex.db import open_database
from promptdex.errors import ConfigError
from promptdex.settings import AnonymousAccess, Settings
from search_api.middleware import split_list


def register(sub: Any) -> None:
    parser = sub.add_parser("serve", help="serve the search API and the web page")
    parser.add_argument("--host", default=None, help="address to bind (default PROMPTDEX_API__HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default PROMPTDEX_API__PORT, 8000)")
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prepare(settings: Settings, host: str, port: int) -> str | None:
    """Check the settings fit the address; on loopback make a one-time sign-in link for the local admin."""
    loopback = is_loopback(host)
    if settings.api.anonymous is AnonymousAccess.CREATE:
        if not loopback:
            raise ConfigError(f"PROMPTDEX_API__ANONYMOUS=create lets anyone who reaches {host} queue generation "
                              "work; set it to read or none to serve on a non-loopback address")
        public = [h for h in split_list(settings.api.allowed_hosts) if not is_loopback(h)]
        if public:
            raise ConfigError(f"PROMPTDEX_API__ANONYMOUS=create with PROMPTDEX_API__ALLOWED_HOSTS naming "
                              f"{', '.join(public)} (reached through a proxy?) lets anyone queue generation work; "
                              "set PROMPTDEX_API__ANONYMOUS to read or none")
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            if not loopback:
                if not accounts.has_admin(conn):
                    raise ConfigError(f"serving on {host} with no admin user: add one first with `promptdex user add "
                                      "NAME --role admin`, or serve on 127.0.0.1 (PROMPTDEX_API__HOST)")
                return None
            admin = accounts.ensure_local_admin(conn)
            token = accounts.create_login_link(conn, user_id=admin.id, minutes=settings.api.login_link_minutes)
    finally:
        db.close()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/auth/link?token={token}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from search_api.app import create_app

    host = args.host or settings.api.host
    port = args.port or settings.api.port
    link = prepare(settings, host, port)
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    out(f"promptdex is serving on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs)")
    if link:
        minutes = settings.api.login_link_minutes
        out(f"sign in as the local admin with this one-time link (valid once, for {minutes:g} minutes):")
        out(f"    {link}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False,
                proxy_headers=True, forwarded_allow_ips=settings.api.forwarded_allow_ips)
    return 0
