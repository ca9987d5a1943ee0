"""Typed dependencies for the routes: the app state, a pooled connection, the search service, filters."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Query, Request
from pydantic import AfterValidator, BeforeValidator

from promptdex.records import ImageFilter
from search_api.service import SearchService
from search_api.state import AppState


def _storable(value: str) -> str:
    """Text PostgreSQL can store: no NUL character (surrogates never get this far: the query is UTF-8)."""
    if "\x00" in value:
        raise ValueError("contains a NUL character, which is not accepted in text")
    return value


SafeStr = Annotated[str, AfterValidator(_storable)]
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _iso_only(value: Any) -> Any:
    """A date or time as ISO 8601 text; a bare number (pydantic would read it as a Unix time) is refused."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError("give an ISO 8601 date or time, e.g. 2026-01-31 or 2026-01-31T12:00:00Z")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.promptdex
    state.engines.reload_if_changed()
    return state


def get_conn(state: Annotated[AppState, Depends(get_state)]) -> Iterator[psycopg.Connection[Any]]:
    with state.pool.connection() as conn:
        yield conn


def get_service(state: Annotated[AppState, Depends(get_state)]) -> SearchService:
    return state.service


def get_filters(
    model: Annotated[SafeStr | None, Query(max_length=500, description="Model name, exactly.")] = None,
    sampler: Annotated[SafeStr | None, Query(max_length=200,
                                             description="Sampler as the front end names it, e.g. 'DPM++ 2M'.")] = None,
    width: Annotated[int | None, Query(ge=1, le=65536)] = None,
    height: Annotated[int | None, Query(ge=1, le=65536)] = None,
    min_steps: Annotated[int | None, Query(ge=0, le=10000)] = None,
    max_steps: Annotated[int | None, Query(ge=0, le=10000)] = None,
    min_cfg: Annotated[float | None, Query(ge=0, le=100)] = None,
    max_cfg: Annotated[float | None, Query(ge=0, le=100)] = None,
    seed: Annotated[int | None, Query(ge=0, le=2**64 - 1)] = None,
    source: Annotated[SafeStr | None, Query(max_length=100,
                                            description="generated, a1111, comfyui, invokeai, novelai, ...")] = None,
    since: Annotated[IsoDatetime | None, Query(description="ISO 8601 date or time, inclusive.")] = None,
    until: Annotated[IsoDatetime | None, Query(description="ISO 8601 date or time, exclusive.")] = None,
) -> ImageFilter:
    return ImageFilter(model=model, sampler=sampler, width=width, height=height, min_steps=min_steps,
                       max_steps=max_steps, min_cfg=min_cfg, max_cfg=max_cfg, seed=seed, source=source,
                       since=since, until=until)


State = Annotated[AppState, Depends(get_state)]
Conn = Annotated[psycopg.Connection[Any], Depends(get_conn)]
Service = Annotated[SearchService, Depends(get_service)]
Filters = Annotated[ImageFilter, Depends(get_filters)]
