"""`promptdex serve`: run the search API and the web page."""

from __future__ import annotations

import argparse
from typing import Any

from promptdex.cli import out
from promptdex.settings import Settings


def register(sub: Any) -> None:
    parser = sub.add_parser("serve", help="serve the search API and the web page")
    parser.add_argument("--host", default=None, help="address to bind (default PROMPTDEX_API__HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default PROMPTDEX_API__PORT, 8000)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from search_api.app import create_app

    host = args.host or settings.api.host
    port = args.port or settings.api.port
    app = create_app(settings)
    out(f"promptdex is serving on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0
