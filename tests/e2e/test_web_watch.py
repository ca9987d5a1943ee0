"""Watched folders as a user runs them: `promptdex import --watch --json` prints a line per batch and stops on
SIGTERM; `serve` with PROMPTDEX_WATCH shows an image written into the folder in the page without a restart, and
its watch, killed with SIGKILL, comes back and picks up what was written meanwhile; a standalone watch outlives
kill -9 of its embedded database (it starts the server again) and imports what was written while it was down."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_web import (
    DESKTOP,
    UNLIMITED_RATES,
    Served,
    Web,
    _new_web,
    chromium,  # noqa: F401  (the browser fixture)
    corpus_env,
    serve,
)
from tests.helpers import clean_env, run_cli, stop_process
from tests.integration.test_watch import png_bytes

pytestmark = pytest.mark.e2e

WAIT = 120.0  # seconds for the watch to import and index a file (the tiny models load on the first batch)


def write_png(path: Path, prompt: str, *, seed: int, pause: float = 0.0) -> None:
    """An A1111-style PNG; with `pause`, written in two parts with the writer idle between them."""
    data = png_bytes(seed, prompt, (64, 64))
    with path.open("wb") as sink:
        sink.write(data[: len(data) // 2])
        sink.flush()
        time.sleep(pause)
        sink.write(data[len(data) // 2:])


def found(served: Served, word: str) -> list[dict[str, Any]]:
    return list(served.get("/api/search", q=word, mode="keyword", limit=10)["data"])


def wait_found(served: Served, word: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if hits := found(served, word):
            return hits
        time.sleep(0.5)
    pytest.fail(f"{word!r} not in search {WAIT} s after it was written; serve's log:\n{served.log.read_text()}")


@pytest.fixture(scope="module")
def watched(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    root = tmp_path_factory.mktemp("web-watch")
    folder = root / "outputs"
    folder.mkdir()
    write_png(folder / "old.png", "an old harbour at noon", seed=1)
    with corpus_env(pg_server_url, root, PROMPTDEX_WATCH=str(folder), **UNLIMITED_RATES) as env:
        with serve(root, env, "serve-watch") as served:
            wait_found(served, "harbour")  # the watch's first scan, imported and indexed
            yield served, folder


@pytest.fixture
def web(chromium: Any, watched: tuple[Served, Path]) -> Iterator[Web]:  # noqa: F811
    yield from _new_web(chromium, watched[0], DESKTOP)


def test_a_new_image_in_a_watched_folder_shows_in_the_page_without_a_restart(
        web: Web, watched: tuple[Served, Path]) -> None:
    served, folder = watched
    web.goto("/?q=zeppelin&mode=keyword")
    web.settle()
    assert web.card_ids() == []
    write_png(folder / "new.png", "a zeppelin over a watched folder", seed=2, pause=1.0)
    [hit] = wait_found(served, "zeppelin")
    web.goto("/?q=zeppelin&mode=keyword")
    web.wait_cards()
    web.settle()
    assert web.card_ids() == [hit["id"]]
    assert "zeppelin" in (web.page.get_attribute("#results .card img", "alt") or "")
    detail = served.get(f"/api/images/{hit['id']}")
    assert (detail["seed"], detail["width"]) == (2, 64)  # the whole file, not its first half


def test_the_watch_killed_with_sigkill_comes_back_and_catches_up(watched: tuple[Served, Path]) -> None:
    served, folder = watched
    [pid] = [int(m[1]) for m in re.finditer(r"started the folder watch of .*: pid (\d+)", served.log.read_text())]
    os.kill(pid, signal.SIGKILL)
    write_png(folder / "while-down.png", "a kite written while the watch was down", seed=3)
    wait_found(served, "kite")  # the supervisor started another, whose first scan found the file
    assert re.search(rf"folder watch of .* pid {pid} exited with -9; started another: pid \d+", served.log.read_text())


def test_import_watch_prints_a_json_line_per_batch_and_stops_on_sigterm(pg_server_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "outputs"
    folder.mkdir()
    with corpus_env(pg_server_url, tmp_path) as env:
        proc = subprocess.Popen([sys.executable, "-m", "promptdex", "import", "--watch", "--json", str(folder)],
                                cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line.decode()) for line in proc.stdout or []], daemon=True).start()
        try:
            batches = [json.loads(lines.get(timeout=WAIT))]
            assert batches[0]["batch"] == "scan" and batches[0]["files"] == 0
            write_png(folder / "a.png", "a lantern in the rain", seed=4, pause=0.5)
            while not any(b["imported"] for b in batches):
                batches.append(json.loads(lines.get(timeout=WAIT)))
            assert batches[-1]["batch"] == "changes" and batches[-1]["errors"] == []
            time.sleep(1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, (proc.stderr.read() if proc.stderr else b"").decode()
        finally:
            stop_process(proc)
        status = run_cli("index", "status", "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    pending = {b["name"]: b["pending"] for b in json.loads(status.stdout)["bundles"]}
    assert pending and set(pending.values()) == {0}, pending  # indexed by the watch, before it stopped


def test_import_watch_outlives_a_killed_database_and_imports_what_was_written_meanwhile(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="promptdex-watchdb-"))  # the embedded server's home: not under basetemp
    pgdata = root / "data" / "postgres" / "pgdata"
    folder = tmp_path / "outputs"
    folder.mkdir()
    env = clean_env(PROMPTDEX_DATA_DIR=str(root / "data"), PROMPTDEX_MODELS="tiny", PYTHONUNBUFFERED="1",
                    PROMPTDEX_DB__RECONNECT_SECONDS="120")
    proc = subprocess.Popen([sys.executable, "-m", "promptdex", "import", "--watch", "--json", str(folder)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.decode()) for line in proc.stdout or []], daemon=True).start()

    def imported(total: int) -> list[dict[str, Any]]:
        batches: list[dict[str, Any]] = []
        while sum(b["imported"] for b in batches) < total:
            batches.append(json.loads(lines.get(timeout=WAIT)))
        return batches

    try:
        assert json.loads(lines.get(timeout=WAIT))["batch"] == "scan"
        write_png(folder / "before.png", "a lantern before the crash", seed=5)
        imported(1)
        before = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        os.kill(before, signal.SIGKILL)
        write_png(folder / "during.png", "a comet while the database was down", seed=6)
        [*_, last] = imported(1)  # the watch started the server again and scanned the folder whole
        assert last["batch"] == "rescan" and last["errors"] == []
        assert int((pgdata / "postmaster.pid").read_text().splitlines()[0]) != before
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err = (proc.stderr.read() if proc.stderr else b"").decode()
        assert "import --watch: lost the database" in err and "the database is back" in err, err
        assert "Traceback" not in err, err
        status = run_cli("index", "status", "--json", cwd=tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        bundles = json.loads(status.stdout)["bundles"]
        assert {b["name"]: b["pending"] for b in bundles} and all(b["pending"] == 0 for b in bundles), bundles
        again = run_cli("import", "--json", str(folder), cwd=tmp_path, env=env)  # nothing left to import
        assert again.returncode == 0 and json.loads(again.stdout)["imported"] == 0, again.stderr
        assert json.loads(again.stdout)["unchanged"] == 2  # both files, each once
    finally:
        stop_process(proc)
        deadline = time.monotonic() + 30  # the last user left: the embedded server stops
        while (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)
