"""The folder watch (`promptdex import --watch`) on a real folder and database: a file is imported once its writer
is done, moves keep the id, deletions hide the image until its content comes back, and a rescan finds what the
events missed."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer.importer import ImportSummary
from indexer.watch import FolderWatch, watch_roots
from promptdex.errors import InvalidInput, PromptdexError
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

PARAMETERS = "{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: {width}x{height}"
WAIT = 30.0  # seconds a test waits for the watch to see a change before it fails


def png_bytes(seed: int, prompt: str = "a lighthouse in a watched folder", size: tuple[int, int] = (96, 64)) -> bytes:
    """An A1111-style PNG of noise (each call's pixels differ) carrying `prompt` and `seed` in its parameters."""
    info = PngInfo()
    info.add_text("parameters", PARAMETERS.format(prompt=prompt, seed=seed, width=size[0], height=size[1]))
    buffer = io.BytesIO()
    Image.effect_noise(size, 50).convert("RGB").save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


@dataclass
class Watching:
    watch: FolderWatch
    reports: list[tuple[str, ImportSummary]] = field(default_factory=list)
    indexed: int = 0

    def imported(self) -> int:
        return sum(s.imported for _, s in self.reports)

    def errors(self) -> list[tuple[str, str]]:
        return [e for _, s in self.reports for e in s.errors]


@contextmanager
def watching(conn: Any, settings: Any, roots: list[Path], *, index: Callable[[Any], None] | None = None,
             events: bool = True) -> Iterator[Watching]:
    """FolderWatch on its own thread (with `conn`, which the test then leaves alone) until the block ends."""
    state: Watching
    crashed: list[BaseException] = []

    def counted(c: Any) -> None:
        if index is not None:
            index(c)
        state.indexed += 1

    watch = FolderWatch(conn, settings, roots, index=counted, report=lambda kind, s: state.reports.append((kind, s)))
    if not events:  # events the file system never delivers: only the rescan can find the files
        watch.observer.schedule = lambda *args, **kwargs: None  # type: ignore[method-assign]
    state = Watching(watch)
    stop = threading.Event()

    def run() -> None:
        try:
            watch.run(stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            crashed.append(exc)

    thread = threading.Thread(target=run, name="watch", daemon=True)
    thread.start()
    try:
        until(lambda: bool(state.reports) or bool(crashed), "the first scan")
        yield state
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the watch did not stop"
    if crashed:
        raise crashed[0]


def until(done: Callable[[], bool], what: str) -> None:
    wait_for(done, WAIT, f"the watch to see {what}")


def rows(db: Any, sql: str, *args: Any) -> list[dict[str, Any]]:
    with db.connect(autocommit=True) as other:
        return list(other.execute(sql, args).fetchall())


def image_rows(db: Any) -> list[dict[str, Any]]:
    return rows(db, "SELECT id, sha256, path, width, height, seed, missing FROM images ORDER BY id")


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_a_file_written_in_two_parts_is_imported_once_and_complete(
        settings: Any, conn: Any, db: Any, tmp_path: Path, polling: bool) -> None:
    settings.indexer.watch_polling = polling
    settings.indexer.watch_settle_seconds = 2.5  # longer than the writer's pause
    folder = tmp_path / "outputs"
    folder.mkdir()
    data = png_bytes(seed=41)
    with watching(conn, settings, [folder]) as w:
        with (folder / "slow.png").open("wb") as sink:
            sink.write(data[: len(data) // 2])
            sink.flush()
            os.fsync(sink.fileno())
            time.sleep(1.5)  # the writer pauses half way: the watch must not take the half file
            sink.write(data[len(data) // 2:])
        until(lambda: w.imported() >= 1, "the finished file")
        time.sleep(settings.indexer.watch_settle_seconds + 1)  # nothing more comes of it
    [image] = image_rows(db)
    assert image["sha256"] == hashlib.sha256(data).hexdigest()
    assert (image["width"], image["height"], image["seed"], image["missing"]) == (96, 64, 41, False)
    assert w.imported() == 1 and w.errors() == [] and not any(s.warnings for _, s in w.reports)
    [record] = rows(db, "SELECT path, status FROM imported_files")
    assert (record["path"], record["status"]) == (str(folder / "slow.png"), "imported")
    assert w.indexed >= 1  # the new row was indexed


def test_moves_keep_the_id_deletions_hide_it_and_its_return_restores_it(
        settings: Any, conn: Any, db: Any, tmp_path: Path) -> None:
    folder = tmp_path / "outputs"
    (folder / "day1").mkdir(parents=True)
    first = folder / "day1" / "a.png"
    first.write_bytes(png_bytes(seed=7))
    outside = tmp_path / "trash"
    outside.mkdir()
    with watching(conn, settings, [folder]) as w:
        [image] = image_rows(db)  # the first scan imported it
        assert w.imported() == 1

        def path_is(path: Path, missing: bool = False) -> Callable[[], bool]:
            return lambda: [(r["id"], r["path"], r["missing"]) for r in image_rows(db)] == [
                (image["id"], str(path), missing)]

        renamed = folder / "day1" / "lighthouse.png"
        first.rename(renamed)
        until(path_is(renamed), "the rename")
        (folder / "sorted").mkdir()
        moved = folder / "sorted" / "lighthouse.png"
        renamed.rename(moved)
        until(path_is(moved), "the move to another folder")
        (folder / "sorted").rename(folder / "best")  # the folder itself moves
        until(path_is(folder / "best" / "lighthouse.png"), "the folder's move")

        shutil.move(folder / "best" / "lighthouse.png", outside / "lighthouse.png")  # out of the watch: deleted
        until(path_is(folder / "best" / "lighthouse.png", missing=True), "the deletion")
        assert rows(db, "SELECT path FROM imported_files") == []

        back = folder / "restored.png"
        shutil.copy(outside / "lighthouse.png", back)  # the same content comes back (a copy: written, closed)
        until(path_is(back), "the restore")
    assert w.errors() == []
    assert len(image_rows(db)) == 1  # one content, one row, all along


def test_a_second_copy_is_a_duplicate_of_the_same_image(settings: Any, conn: Any, db: Any, tmp_path: Path) -> None:
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "one.png").write_bytes(png_bytes(seed=3))
    with watching(conn, settings, [folder]) as w:
        shutil.copy(folder / "one.png", folder / "two.png")
        until(lambda: sum(s.duplicates for _, s in w.reports) == 1, "the copy")
        (folder / "one.png").unlink()
        until(lambda: image_rows(db)[0]["path"] == str(folder / "two.png"), "the first path's deletion")
    [image] = image_rows(db)
    assert not image["missing"]  # the other copy still holds the content


def test_the_rescan_finds_files_whose_events_were_lost(settings: Any, conn: Any, db: Any, tmp_path: Path) -> None:
    settings.indexer.watch_rescan_seconds = 1.0
    folder = tmp_path / "network-drive"
    folder.mkdir()
    (folder / "gone-soon.png").write_bytes(png_bytes(seed=1))
    with watching(conn, settings, [folder], events=False) as w:
        assert [r["seed"] for r in image_rows(db)] == [1]
        (folder / "later.png").write_bytes(png_bytes(seed=2))
        (folder / "gone-soon.png").unlink()
        until(lambda: [(r["seed"], r["missing"]) for r in image_rows(db)] == [(1, True), (2, False)], "the rescan")
    assert any(kind == "rescan" and s.imported == 1 and s.missing == 1 for kind, s in w.reports)


def test_indexing_that_fails_is_tried_again(settings: Any, conn: Any, db: Any, tmp_path: Path) -> None:
    folder = tmp_path / "outputs"
    folder.mkdir()
    calls: list[int] = []

    def busy_once(_conn: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise PromptdexError("another `promptdex index` holds the index lock")

    (folder / "a.png").write_bytes(png_bytes(seed=5))
    with watching(conn, settings, [folder], index=busy_once) as w:
        until(lambda: w.indexed >= 1, "indexing after the lock is free")
    assert len(calls) >= 2 and not w.watch.state.index_owed


def test_only_folders_are_watched(settings: Any, conn: Any, tmp_path: Path) -> None:
    (tmp_path / "file.png").write_bytes(png_bytes(seed=9))
    with pytest.raises(InvalidInput, match=r"--watch: .*file\.png: not a folder"):
        FolderWatch(conn, settings, [tmp_path / "file.png", tmp_path], index=None, report=lambda *_: None)
    assert watch_roots(f"/a{os.pathsep}{os.pathsep}/b ") == ["/a", "/b"]
    assert watch_roots(None) == []
