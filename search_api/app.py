"""The FastAPI app factory: the lifespan opens the pool and loads embedders and bundles; routes are thin."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from promptdex.db import Database, open_database
from promptdex.errors import (
    ConfigError,
    DatabaseError,
    IndexMismatch,
    IndexMissing,
    InvalidInput,
    NotFound,
    PromptdexError,
)
from promptdex.settings import Settings
from search_api.engines import Engines, load_engines
from search_api.service import SearchService

logger = logging.getLogger(__name__)

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"


@dataclass
class AppState:
    """What the lifespan built; routes reach it through `search_api.deps`."""

    settings: Settings
    database: Database
    pool: ConnectionPool[Any]
    engines: Engines
    service: SearchService


class PayloadTooLarge(PromptdexError):
    """An upload over the configured size or pixel limit."""


class UnsupportedMedia(PromptdexError):
    """An upload that is not an image we can read."""


_STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404), (InvalidInput, 422), (IndexMismatch, 409), (IndexMissing, 503), (PayloadTooLarge, 413),
    (UnsupportedMedia, 415), (DatabaseError, 503), (ConfigError, 500),
]


def create_app(settings: Settings, *, engines: Engines | None = None) -> FastAPI:
    """Build the app. `engines` may be injected (tests); by default the lifespan loads them from settings."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = open_database(settings)
        pool: ConnectionPool[Any] = ConnectionPool(
            database.url, min_size=settings.db.pool_min_size, max_size=settings.db.pool_max_size,
            kwargs={"row_factory": dict_row, "autocommit": True}, open=False,
        )
        pool.open(wait=True, timeout=settings.db.connect_timeout)
        loaded = engines or load_engines(settings, pool.connection)
        app.state.promptdex = AppState(settings, database, pool, loaded, SearchService(pool=pool, engines=loaded))
        logger.info("promptdex API ready (%s)", database.display)
        try:
            yield
        finally:
            pool.close()
            database.close()

    app = FastAPI(
        title="promptdex",
        summary="Search Stable Diffusion images by keyword, meaning or likeness, and reproduce them.",
        version="0.1.0",
        lifespan=lifespan,
    )

    for exc_type, status in _STATUS:
        app.add_exception_handler(exc_type, _handler(status))

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"] if p not in ("query", "body", "path"))
            problems.append(f"{field}: {err['msg']}")
        return JSONResponse({"detail": "; ".join(problems), "errors": jsonable(exc.errors())}, status_code=422)

    from search_api import routes_files, routes_jobs, routes_search

    app.include_router(routes_search.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_files.router)
    routes_files.mount_frontend(app, FRONTEND_DIR)
    return app


def _handler(status: int) -> Any:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handle


def jsonable(errors: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str, bytes: lambda b: b.decode(errors="replace")})
