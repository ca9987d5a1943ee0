"""Meilisearch keyword index (official client): prompts as documents {id, text}, its own typo tolerance."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from indexer.keyword.base import Conn, count_pending, ensure_state, mark_indexed, pending_prompts, query_words
from promptdex.errors import ConfigError, PromptdexError

logger = logging.getLogger(__name__)

DEFAULT_INDEX = "promptdex-prompts"
TASK_TIMEOUT_MS = 120_000


class MeiliKeywordIndex:
    """Keyword search by a Meilisearch server. `client` may be injected (tests); otherwise built from url/key."""

    backend = "meilisearch"

    def __init__(self, url: str, key: str | None = None, *, index_name: str = DEFAULT_INDEX,
                 client: Any = None) -> None:
        if client is None:
            import meilisearch

            client = meilisearch.Client(url, key)
        self.client, self.url, self.index_name = client, url, index_name
        self._ready = False

    @property
    def state_name(self) -> str:
        return f"keyword-meilisearch:{self.index_name}"

    @property
    def index(self) -> Any:
        return self.client.index(self.index_name)

    def _wait(self, task: Any, what: str) -> None:
        done = self.client.wait_for_task(task.task_uid, timeout_in_ms=TASK_TIMEOUT_MS)
        if done.status != "succeeded":
            raise PromptdexError(f"Meilisearch at {self.url}: {what} failed: {done.error}")

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except PromptdexError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client raises its own and requests' errors
            raise PromptdexError(f"Meilisearch at {self.url}: {what}: {type(exc).__name__}: {exc}") from exc

    def ensure_index(self) -> None:
        """Create the index (primary key `id`) and make `text` the searchable attribute."""
        if self._ready:
            return

        def create() -> None:
            self._wait(self.client.create_index(self.index_name, {"primaryKey": "id"}), "creating the index")

        try:
            self.client.get_index(self.index_name)
        except Exception:  # noqa: BLE001 - MeilisearchApiError (index_not_found) or a connection error
            self._call("creating the index", create)
        self._call("setting searchable attributes", lambda: self._wait(
            self.index.update_settings({"searchableAttributes": ["text"], "displayedAttributes": ["id", "text"]}),
            "updating settings"))
        self._ready = True

    def update(self, conn: Conn, *, batch: int = 5000, progress: Callable[[int], None] | None = None) -> int:
        """Send pending prompts; each batch is recorded only after Meilisearch says it is indexed."""
        ensure_state(conn, self.state_name, self.backend)
        self.ensure_index()
        done = 0
        while True:
            todo = pending_prompts(conn, self.state_name, batch)
            if not todo:
                return done
            self._add([{"id": i, "text": t} for i, t in todo])
            with conn.transaction():
                mark_indexed(conn, self.state_name, [i for i, _ in todo])
            done += len(todo)
            if progress is not None:
                progress(len(todo))

    def _add(self, documents: list[dict[str, Any]]) -> None:
        self._call("adding prompts", lambda: self._wait(self.index.add_documents(documents, primary_key="id"),
                                                        "adding prompts"))

    def pending(self, conn: Conn) -> int:
        return count_pending(conn, self.state_name)

    def rebuild(self, conn: Conn) -> None:
        self.ensure_index()
        self._call("deleting documents", lambda: self._wait(self.index.delete_all_documents(), "deleting documents"))
        with conn.transaction():
            conn.execute("DELETE FROM index_bundles WHERE name = %s", (self.state_name,))

    def search(self, query: str, limit: int = 50) -> list[tuple[int, float]]:
        if not query.strip() or limit < 1:
            return []
        result = self._call("searching", lambda: self.index.search(
            query, {"limit": limit, "showRankingScore": True, "attributesToRetrieve": ["id"]}))
        return [(int(hit["id"]), float(hit.get("_rankingScore", 0.0))) for hit in result.get("hits", [])]

    def suggest(self, prefix: str, limit: int = 10) -> list[str]:
        """Words starting with the last word of `prefix`, from the prompts Meilisearch finds for it."""
        words = query_words(prefix)
        if not words or limit < 1:
            return []
        result = self._call("suggesting", lambda: self.index.search(
            words[-1], {"limit": 200, "attributesToRetrieve": ["text"]}))
        counts: Counter[str] = Counter()
        for hit in result.get("hits", []):
            counts.update(w for w in set(query_words(hit.get("text", ""))) if w.startswith(words[-1]))
        return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]]


def meili_from_settings(url: str | None, key: str | None) -> MeiliKeywordIndex:
    if not url:
        raise ConfigError("PROMPTDEX_INDEXER__MEILI_URL must be set when PROMPTDEX_INDEXER__KEYWORD_BACKEND="
                          "meilisearch (e.g. http://127.0.0.1:7700)")
    return MeiliKeywordIndex(url, key)
