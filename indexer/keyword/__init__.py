"""Keyword index back ends behind one protocol: PostgreSQL full-text search (default) and Meilisearch."""

from __future__ import annotations

import logging

from indexer.keyword.base import ConnectionSource, KeywordIndex
from indexer.keyword.meili import MeiliKeywordIndex, meili_from_settings
from indexer.keyword.postgres import PostgresKeywordIndex
from promptdex.errors import ConfigError
from promptdex.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["KeywordIndex", "MeiliKeywordIndex", "PostgresKeywordIndex", "open_keyword_index"]


def open_keyword_index(settings: Settings, connect: ConnectionSource) -> KeywordIndex:
    """The keyword back end PROMPTDEX_INDEXER__KEYWORD_BACKEND names; `connect()` yields a database connection."""
    backend = settings.indexer.keyword_backend.strip().lower()
    if backend == "postgres":
        return PostgresKeywordIndex(connect)
    if backend == "meilisearch":
        return meili_from_settings(settings.indexer.meili_url, settings.indexer.meili_key)
    raise ConfigError(f"PROMPTDEX_INDEXER__KEYWORD_BACKEND: {backend!r} is not a keyword back end "
                      "(accepted: postgres, meilisearch)")
