"""Errors on the wire: one JSON error schema, the status of each domain error, and what routes declare."""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from promptdex.errors import (
    ConfigError,
    Conflict,
    DatabaseError,
    Forbidden,
    IndexMismatch,
    IndexMissing,
    InvalidFields,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthorized,
    UnsupportedMedia,
)

logger = logging.getLogger(__name__)


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: `query`, `path`, `body` or `header`, then the field name.")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: `detail` says what was wrong; validation errors also list each field."""

    detail: str
    errors: list[FieldError] | None = None


STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404), (InvalidInput, 422), (IndexMismatch, 409), (IndexMissing, 503), (PayloadTooLarge, 413),
    (UnsupportedMedia, 415), (DatabaseError, 503), (Unauthorized, 401), (Forbidden, 403), (QuotaExceeded, 429),
    (ConfigError, 500), (Conflict, 409),
]

_DESCRIPTIONS = {
    400: "A malformed request (bad Host or Content-Length header, a body that cannot be parsed).",
    401: "Sign-in needed, or the credentials are unknown, expired or revoked.",
    403: "The caller's role is too low (the message names the role needed), or the CSRF token is missing.",
    404: "No such record.",
    409: "The record's state does not allow it (a job that has ended), or an index bundle was built by another "
         "model than the one loaded.",
    410: "The image's file is gone or now holds other content; the image is hidden until it is imported again.",
    413: "The body or upload is over its limit.",
    415: "The upload is not an image that is accepted.",
    422: "A parameter or field is not acceptable; `errors` names each one.",
    429: "Over a rate limit or quota; `Retry-After` says when to try again.",
    503: "The database or an index is not available.",
}
_RATE_HEADERS = {
    "Retry-After": {"description": "Seconds until the limit resets.", "schema": {"type": "integer"}},
    "RateLimit-Limit": {"description": "The limit that was hit.", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "Requests left in the window.", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "Seconds until the window resets.", "schema": {"type": "integer"}},
}
COMMON = (400, 401, 403, 413, 422, 429, 503)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route can give, with their schema, for its OpenAPI entry (the common ones always)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*COMMON, *codes}):
        entry: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[code]}
        if code in (429, 503):
            entry["headers"] = _RATE_HEADERS if code == 429 else {"Retry-After": _RATE_HEADERS["Retry-After"]}
        out[code] = entry
    return out


def _error(status: int, detail: str, headers: dict[str, str] | None = None,
           errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Map domain errors, validation errors, HTTP errors and any bug to JSON `{detail}` answers."""
    for exc_type, status in STATUS:
        app.add_exception_handler(exc_type, _domain_handler(status))

    @app.exception_handler(InvalidFields)
    async def invalid_fields(_: Request, exc: InvalidFields) -> JSONResponse:
        errors = [{"loc": ["body", name], "msg": message, "type": "value_error"} for name, message in exc.fields]
        return _error(422, str(exc), errors=errors)

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
            errors.append({"loc": loc, "msg": str(err.get("msg", "invalid")), "type": str(err.get("type", "value"))})
        problems = []
        for e in errors:
            field = ".".join(str(p) for p in e["loc"] if p not in ("query", "body", "path", "header", "cookie"))
            problems.append(f"{field or 'body'}: {e['msg']}")
        return _error(422, "; ".join(problems) or "invalid request", errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 413:
            headers["Connection"] = "close"  # the rest of the body is not read
        if exc.status_code == 405:
            # Starlette names only the methods of the first route on the path; list every route's
            methods = _methods_of(app, request.url.path)
            if methods:
                headers["Allow"] = ", ".join(methods)
        return _error(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg.InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        return _error(503, f"database: {database_cause(exc)}; try again in a few seconds", {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error: the server could not answer this request (it was logged)",
                      {"Connection": "close"})


def database_cause(exc: BaseException) -> str:
    """Why the database did not answer, in words (never the socket path or the server's address)."""
    text = str(exc).lower()
    if isinstance(exc, PoolTimeout):
        return "no connection to PostgreSQL became available in time (the server is down or overloaded)"
    if "no such file" in text or "connection refused" in text or "could not connect" in text:
        return "PostgreSQL is not running or not reachable"
    if "terminat" in text or "closed" in text or "shutdown" in text or "server closed" in text:
        return "PostgreSQL closed the connection (it stopped or restarted)"
    return "PostgreSQL is not answering"


def _methods_of(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document gives the path (templated paths matched segment by segment)."""
    found: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            found.update(method.upper() for method in operations)
    return sorted(found)


def _domain_handler(status: int) -> Any:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        headers: dict[str, str] = {}
        if isinstance(exc, QuotaExceeded):
            headers = {"Retry-After": str(exc.retry_after), "RateLimit-Reset": str(exc.retry_after),
                       "RateLimit-Remaining": str(exc.remaining)}
            if exc.limit is not None:
                headers["RateLimit-Limit"] = str(exc.limit)
        elif isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": 'Bearer realm="promptdex"'}
        elif status == 503:
            headers = {"Retry-After": "5"}
        elif status == 413:
            headers = {"Connection": "close"}
        return _error(status, str(exc), headers)

    return handle
