"""What the app's lifespan builds and every request reaches through `search_api.deps`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg_pool import ConnectionPool

from promptdex.db import Database
from promptdex.settings import Settings
from search_api.engines import Engines
from search_api.limits import RateLimits
from search_api.service import SearchService


@dataclass
class AppState:
    settings: Settings
    database: Database
    pool: ConnectionPool[Any]
    engines: Engines
    service: SearchService
    limits: RateLimits
