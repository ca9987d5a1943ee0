"""The FastAPI app factory: the lifespan opens the pool and loads embedders and bundles; routes are thin."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from promptdex.db import open_database
from promptdex.errors import ConfigError
from promptdex.settings import Settings
from promptdex.storage import check_storage
from search_api import errors, openapi, routes_auth, routes_files, routes_generations, routes_jobs, routes_search
from search_api.engines import Engines, load_engines
from search_api.limits import RateLimits
from search_api.middleware import GuardMiddleware, split_list
from search_api.service import SearchService
from search_api.state import AppState

logger = logging.getLogger(__name__)

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"
SECRET_FILE = "api-secret"


def server_secret(settings: Settings) -> bytes:
    """PROMPTDEX_API__SECRET, or a random one kept in DATA_DIR/api-secret (made once, readable by us only)."""
    if settings.api.secret:
        if len(settings.api.secret) < 16:
            raise ConfigError("PROMPTDEX_API__SECRET: use at least 16 characters (e.g. `openssl rand -hex 32`)")
        return settings.api.secret.encode()
    path = settings.data_path / SECRET_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)  # atomic, and never replaces a secret another process wrote first
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot keep the API secret there ({exc.strerror}); set PROMPTDEX_API__SECRET "
                          "or PROMPTDEX_DATA_DIR") from exc
    if len(value) < 16:
        raise ConfigError(f"{path}: the API secret is too short; delete the file to make a new one")
    return value.encode()


def create_app(settings: Settings, *, engines: Engines | None = None) -> FastAPI:
    """Build the app. `engines` may be injected (tests); by default the lifespan loads them from settings."""
    secret = server_secret(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_storage(settings)  # PROMPTDEX_STORAGE_URL that cannot be written and read back: stop here
        database = open_database(settings)
        # Connections are checked as they leave the pool (a restarted server leaves dead ones behind), and a
        # request waits at most DB__REQUEST_TIMEOUT for one: while the database is down, answers are fast 503s.
        pool: ConnectionPool[Any] = ConnectionPool(
            database.url, min_size=settings.db.pool_min_size, max_size=settings.db.pool_max_size,
            kwargs={"row_factory": dict_row, "autocommit": True,
                    "connect_timeout": max(1, int(settings.db.request_timeout))},
            open=False, check=ConnectionPool.check_connection, timeout=settings.db.request_timeout,
        )
        pool.open(wait=True, timeout=settings.db.connect_timeout)
        supervisor = database.embedded.supervise() if database.embedded is not None else None
        loaded = engines or load_engines(settings, pool.connection)
        service = SearchService(pool=pool, engines=loaded, secret=secret)
        app.state.promptdex = AppState(settings, database, pool, loaded, service, RateLimits(settings.api))
        logger.info("promptdex API ready (%s)", database.display)
        try:
            yield
        finally:
            if supervisor is not None:
                supervisor.set()
            pool.close()
            database.close()

    app = FastAPI(
        title="promptdex",
        summary="Search Stable Diffusion images by keyword, meaning or likeness, and reproduce them.",
        version="0.2.0",
        lifespan=lifespan,
    )
    errors.install(app)
    routers = [routes_search.router, routes_generations.router, routes_jobs.router, routes_auth.router,
               routes_files.router]
    for router in routers:
        app.include_router(router)
    routes_files.mount_frontend(app, FRONTEND_DIR)
    openapi.install(app, routers=routers, anonymous=settings.api.anonymous)

    origins = split_list(settings.api.cors_origins)
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(GuardMiddleware, allowed_hosts=split_list(settings.api.allowed_hosts) or ["localhost"],
                       max_json=settings.api.max_json_bytes, max_upload=settings.api.max_upload_bytes)
    return app
