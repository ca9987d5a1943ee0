"""`promptdex import --watch`: import and index images as they are written into folders, follow moves and deletions.

Events come from watchdog (inotify here; its polling observer with PROMPTDEX_INDEXER__WATCH_POLLING for network
drives). A file is imported once its writer is done: at its close-write event, at once when it was renamed into
place, or, where no close event comes, once its size and mtime have held still for WATCH_SETTLE_SECONDS. Files that
vanish or move are handed to the importer's prune, so a moved file keeps its row (same content, same id) and a
deleted one is marked missing until its content comes back. Every WATCH_RESCAN_SECONDS the folders are scanned
whole (`import --prune`), for events the file system lost. After each batch that changed the corpus, the new rows
are indexed, so they show in search without a restart. A lost database is waited for (PROMPTDEX_DB__RECONNECT_SECONDS,
the embedded server started again), then the folders are scanned whole for what the lost batch held.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from watchdog.events import (
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from indexer.images import IMAGE_SUFFIXES
from indexer.importer import ImportSummary, import_paths
from promptdex.db import Database
from promptdex.errors import InvalidInput, PromptdexError
from promptdex.settings import Settings

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
_TICK = 0.25  # seconds between looks at the queue of events
_CLOSED_GRACE = 0.2  # after a close-write, wait this long for another writer's event before importing


def watch_roots(raw: str | None) -> list[str]:
    """The folders of PROMPTDEX_WATCH (separated by ':'), empty when unset."""
    return [part.strip() for part in (raw or "").split(os.pathsep) if part.strip()]


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES) and not os.path.basename(path).startswith(".")


class _Events(FileSystemEventHandler):
    """watchdog's thread puts (kind, path) pairs on a queue the watch loop drains."""

    def __init__(self, sink: queue.Queue[tuple[str, str]]) -> None:
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            dest = os.fsdecode(event.dest_path)
            self.sink.put(("gone", src))
            self.sink.put(("placed" if isinstance(event, FileMovedEvent) else "dir", dest))
        elif isinstance(event, FileDeletedEvent):
            self.sink.put(("gone", src))
        elif isinstance(event, FileClosedEvent):
            self.sink.put(("closed", src))
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self.sink.put(("changed", src))


@dataclass
class _Pending:
    stat: tuple[int, int] | None  # (size, mtime_ns) last seen
    since: float  # when it last changed
    closed: bool = False


@dataclass
class WatchState:
    """What the loop has in hand: files waiting for their writer, paths gone, whether indexing is owed."""

    waiting: dict[str, _Pending] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    index_owed: bool = False


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class FolderWatch:
    """Watch `roots`; `report` gets each batch's ImportSummary (and the kind: "scan", "rescan" or "changes").

    `index` runs after a batch that changed the corpus (None: import only). It is called with the connection and
    returns nothing; a PromptdexError from it (another `promptdex index` holds the lock) is logged and the indexing
    is tried again after the next batch or rescan."""

    def __init__(self, conn: Conn, settings: Settings, roots: Sequence[str | Path], *,
                 index: Callable[[Conn], None] | None, report: Callable[[str, ImportSummary], None],
                 database: str | None = None, db: Database | None = None) -> None:
        self.conn, self.settings, self.index, self.report, self.database = conn, settings, index, report, database
        self.db = db  # to reconnect through when the connection is lost (None: a lost database stops the watch)
        self.roots = [os.path.normpath(os.path.abspath(os.path.expanduser(str(r)))) for r in roots]
        bad = [r for r in self.roots if not os.path.isdir(r)]
        if bad:
            raise InvalidInput(f"--watch: {', '.join(bad)}: not a folder; watch accepts folders only")
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.state = WatchState()
        cfg = settings.indexer
        self.settle, self.rescan_every = cfg.watch_settle_seconds, cfg.watch_rescan_seconds
        self.observer = PollingObserver(timeout=1.0) if cfg.watch_polling else Observer()

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set: the folders are scanned first, then followed."""
        handler = _Events(self.events)
        for root in self.roots:
            self.observer.schedule(handler, root, recursive=True)
        self.observer.start()  # before the first scan, so nothing written during it is missed
        try:
            scan: str | None = "scan"  # a whole scan owed (its kind), None when none is
            last_scan = time.monotonic()
            while True:
                try:
                    if scan is None and time.monotonic() - last_scan >= self.rescan_every:
                        scan = "rescan"
                    if scan is not None:
                        self._import(self.roots, scan)
                        scan, last_scan = None, time.monotonic()
                    else:
                        self._drain()
                        ready, gone = self._ready()
                        if ready or gone:
                            self._import(ready + gone, "changes")
                        elif self.state.index_owed:
                            self._index()
                except (PromptdexError, psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    if not self._reconnect(exc, stop):
                        return
                    scan = "rescan"  # what the lost batch held, and what was written meanwhile
                if stop.wait(_TICK):
                    return
        finally:
            self.observer.stop()
            self.observer.join(timeout=10)

    def _reconnect(self, exc: Exception, stop: threading.Event) -> bool:
        """After a failed step: reconnect when the connection was lost (False: stopped meanwhile), else raise."""
        if self.db is None or not (self.conn.closed or self.conn.broken):
            raise exc
        self.conn.close()
        conn = self.db.reconnect(exc.__cause__ or exc, who="import --watch", stop=stop)
        if conn is None:
            return False
        self.conn = conn
        return True

    def _drain(self) -> None:
        now = time.monotonic()
        while True:
            try:
                kind, path = self.events.get_nowait()
            except queue.Empty:
                return
            path = os.path.normpath(path)
            if kind == "dir":  # a folder moved in: everything under it is new here (its old paths went "gone")
                for root, _dirs, files in os.walk(path):
                    for name in files:
                        self._waiting(os.path.join(root, name), now, closed=True)
            elif kind == "gone":
                self.state.waiting.pop(path, None)
                self.state.gone.add(path)
            elif _is_image(path):
                self.state.gone.discard(path)
                self._waiting(path, now, closed=kind in ("closed", "placed"))

    def _waiting(self, path: str, now: float, *, closed: bool) -> None:
        if not _is_image(path):
            return
        entry = self.state.waiting.get(path)
        stat = _stat(path)
        if entry is None or entry.stat != stat:
            self.state.waiting[path] = _Pending(stat, now, closed)
        elif closed:
            entry.closed = True

    def _ready(self) -> tuple[list[str], list[str]]:
        """Files whose writer is done, and paths gone (or that were replaced: their prune finds them present)."""
        now = time.monotonic()
        ready: list[str] = []
        for path, entry in list(self.state.waiting.items()):
            stat = _stat(path)
            if stat is None:  # gone before it was finished: the "gone" event follows, or the rescan sees it
                del self.state.waiting[path]
                continue
            if stat != entry.stat:  # still being written
                entry.stat, entry.since, entry.closed = stat, now, False
                continue
            quiet = now - entry.since
            if (entry.closed and quiet >= _CLOSED_GRACE) or quiet >= self.settle:
                ready.append(path)
                del self.state.waiting[path]
        gone = sorted(p for p in self.state.gone if not os.path.exists(p))
        self.state.gone.clear()
        return sorted(ready), gone

    def _import(self, paths: list[str], kind: str) -> None:
        summary = import_paths(self.conn, self.settings, paths, progress=False, prune=True, database=self.database)
        # a file made and removed between two looks (an editor's temporary file) was never recorded: not an error
        summary.errors = [(p, e) for p, e in summary.errors
                          if os.path.exists(p) or p in self.roots or p not in paths]
        if summary.imported or summary.missing or summary.vanished or summary.duplicates:
            self.state.index_owed = True
        self.report(kind, summary)
        if self.state.index_owed:
            self._index()

    def _index(self) -> None:
        if self.index is None:
            self.state.index_owed = False
            return
        try:
            self.index(self.conn)
            self.state.index_owed = False
        except PromptdexError as exc:
            if self.conn.closed or self.conn.broken:
                raise  # the database, not the index: reconnect
            logger.warning("watch: indexing postponed: %s", exc)


def indexer_for(settings: Settings) -> Callable[[Conn], None]:
    """What the watch runs after a batch: `promptdex index` without a progress bar (the models load once, on first
    use), then the bundles published to PROMPTDEX_STORAGE_URL when it is set."""
    loaded: dict[str, Any] = {}

    def embedders() -> Any:
        if "e" not in loaded:
            from indexer.embedders import load_embedders

            loaded["e"] = load_embedders(settings)
        return loaded["e"]

    def index(conn: Conn) -> None:
        from indexer.indexing import run_index
        from indexer.keyword import open_keyword_index
        from indexer.publish import publish_all

        keyword = open_keyword_index(settings, lambda: nullcontext(conn))
        report = run_index(conn, settings, embedders, keyword, progress=False)
        logger.info("watch: %s", report.line())
        publish_all(settings)

    return index
