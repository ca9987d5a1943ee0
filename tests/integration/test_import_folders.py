"""`import_paths` against a real PostgreSQL: incremental, deduplicated, per-file errors, thumbnails, raw metadata."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer.images import ensure_thumbnail, thumbnail_path
from indexer.importer import import_paths
from indexer.metadata.containers import read_text_chunks
from promptdex.store import count_images, filter_images, get_image, get_image_by_sha256, get_images
from tests.conftest import require_shared_fixtures

pytestmark = [pytest.mark.integration, pytest.mark.external_db]  # CI also runs these on Debian PostgreSQL 15

A1111 = "{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x48"


def png(path: Path, *, colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48),
        chunks: dict[str, str] | None = None) -> Path:
    info = PngInfo()
    for key, value in (chunks or {}).items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, pnginfo=info)
    return path


def rows(conn: Any, sql: str, *args: Any) -> list[dict[str, Any]]:
    return list(conn.execute(sql, args).fetchall())


def test_fixture_folders_import_once_then_nothing(settings: Any, conn: Any) -> None:
    fixtures = require_shared_fixtures()
    images = [p for p in fixtures.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
    unreadable = {fixtures / "sd-parsers" / "bad_images" / "empty_file.png"}
    first = import_paths(conn, settings, [fixtures], progress=False)
    assert first.files == len(images)
    assert [path for path, _ in first.errors] == [str(p) for p in unreadable]
    assert "empty file" in first.errors[0][1]
    assert first.imported + first.duplicates == len(images) - len(unreadable)
    assert count_images(conn) == first.imported
    second = import_paths(conn, settings, [fixtures], progress=False)
    assert (second.imported, second.duplicates, second.unchanged) == (0, 0, len(images) - len(unreadable))
    assert count_images(conn) == first.imported

    comfy = fixtures / "sd-metadata" / "png" / "comfyui-hires.png"
    row = rows(conn, "SELECT * FROM images WHERE path = %s", str(comfy))[0]
    assert row["source"] == "comfyui" and row["raw_metadata"] == read_text_chunks(comfy)
    assert (int(row["seed"]), row["steps"], row["params"]["width"], row["params"]["height"]) == (
        1116526567339338, 20, 1024, 1024)  # generation size; the file itself is the 1536 px hires result
    assert (row["width"], row["height"], row["format"]) == (1536, 1536, "PNG")
    sources = {r["source"] for r in rows(conn, "SELECT DISTINCT source FROM images")}
    assert {"a1111", "comfyui", "invokeai", "novelai", "swarmui", "fooocus", "ruined-fooocus", "hf-space",
            "civitai", "tensorart", "stability-matrix", "forge-neo", "none"} <= sources
    stealth = rows(conn, "SELECT * FROM images WHERE path LIKE %s", "%automatic1111_stealth.png")[0]
    assert stealth["source"] == "a1111" and "stealth_parameters" in stealth["raw_metadata"]
    empty = rows(conn, "SELECT i.*, i.prompt_id FROM images i WHERE path LIKE %s", "%sd-metadata/png/empty.png")[0]
    assert empty["source"] == "none" and empty["prompt_id"] is None and empty["steps"] is None
    thumb = thumbnail_path(settings.thumbs_path, row["sha256"])
    assert not thumb.exists()  # import decodes no pixels; the thumbnail is made when first asked for (or indexed)
    made = ensure_thumbnail(settings.thumbs_path, row["sha256"], comfy, size=settings.indexer.thumb_size,
                            max_pixels=settings.indexer.max_image_pixels)
    with Image.open(made) as t:
        assert made == thumb and t.format == "WEBP" and max(t.size) == settings.indexer.thumb_size


def test_duplicates_changes_and_paths(settings: Any, conn: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    a = png(folder / "a.png", chunks={"parameters": A1111.format(prompt="a red fox", seed=1)})
    png(folder / "sub" / "b.png", colour=(10, 200, 10), chunks={"parameters": A1111.format(prompt="a frog", seed=2)})
    (folder / "notes.txt").write_text("not an image")
    first = import_paths(conn, settings, [folder], progress=False)
    assert (first.files, first.imported, first.errors) == (2, 2, [])
    shutil.copy(a, folder / "copy-of-a.png")
    second = import_paths(conn, settings, [folder], progress=False)
    assert (second.imported, second.duplicates, second.unchanged) == (0, 1, 2)
    png(a, colour=(1, 2, 3), chunks={"parameters": A1111.format(prompt="a red fox", seed=3)})  # new content
    os.utime(a, (1_700_000_000, 1_700_000_000))
    third = import_paths(conn, settings, [folder], progress=False)
    assert (third.imported, third.duplicates, third.unchanged) == (1, 0, 2)
    assert count_images(conn) == 3
    paths = {r["path"] for r in rows(conn, "SELECT path FROM images")}
    assert str(a.absolute()) in paths and all(Path(p).is_absolute() for p in paths)
    prompts = rows(conn, "SELECT count(*) AS n FROM prompts")[0]["n"]
    assert prompts == 2  # "a red fox" once, shared by two images


def test_bad_files_are_reported_and_skipped(settings: Any, conn: Any, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    good = png(folder / "good.png", chunks={"parameters": A1111.format(prompt="fine", seed=1)})
    (folder / "empty.png").write_bytes(b"")
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (64, 64), (9, 9, 9)).save(folder / "cut.jpg", quality=90)
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:-300])
    (folder / "garbage.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPjunkjunkjunk")
    png(folder / "bomb.png", size=(2000, 2000))
    png(folder / "broken-meta.png", colour=(5, 5, 200), chunks={"prompt": '{"3": {"class_type": "KSampler", '})
    settings.indexer.max_image_pixels = 1_000_000
    summary = import_paths(conn, settings, [folder, tmp_path / "missing"], progress=False)
    errors = dict(summary.errors)
    assert set(errors) == {str(folder / n) for n in ("empty.png", "truncated.png", "cut.jpg", "garbage.webp",
                                                     "bomb.png")} | {str(tmp_path / "missing")}
    assert "empty" in errors[str(folder / "empty.png")]
    assert "truncated" in errors[str(folder / "truncated.png")]
    assert "truncated" in errors[str(folder / "cut.jpg")]
    assert errors[str(folder / "garbage.webp")] == "not a PNG, JPEG or WebP image (its content is not an image " \
        "format Pillow recognises)"  # never a Python repr such as <_io.BytesIO object at 0x...>
    assert "decompression bomb" in errors[str(folder / "bomb.png")]
    assert "no such file" in errors[str(tmp_path / "missing")]
    assert summary.imported == 2
    assert [path for path, _ in summary.warnings] == [str(folder / "broken-meta.png")]
    broken = rows(conn, "SELECT * FROM images WHERE path = %s", str(folder / "broken-meta.png"))[0]
    assert broken["source"] == "unknown" and broken["raw_metadata"] == {"prompt": '{"3": {"class_type": "KSampler", '}
    again = import_paths(conn, settings, [folder], progress=False)
    assert again.imported == 0 and len(again.errors) == 5  # errors are reported again, never silently dropped


def test_a_file_the_database_refuses_is_an_error_of_that_file_only(settings: Any, conn: Any, tmp_path: Path) -> None:
    """A prompt with a NUL character (valid in an iTXt chunk, refused by PostgreSQL's text) among new files: the
    batch they share is stored file by file, and only that file is an error."""
    folder = tmp_path / "batch"
    for i in range(5):
        png(folder / f"ok-{i}.png", colour=(i, 80, 80), chunks={"parameters": A1111.format(prompt=f"ok {i}", seed=i)})
    png(folder / "copy.png", colour=(0, 80, 80))  # the same pixels as ok-0 but no text: another file, other bytes
    shutil.copy(folder / "ok-1.png", folder / "zz-ok-1.png")  # the same content twice in one batch
    info = PngInfo()
    info.add_itxt("parameters", A1111.format(prompt="a fox \x00 with a NUL", seed=9))
    Image.new("RGB", (64, 48), (1, 2, 3)).save(folder / "nul.png", pnginfo=info)
    summary = import_paths(conn, settings, [folder], progress=False)
    errors = dict(summary.errors)
    assert list(errors) == [str(folder / "nul.png")] and errors[str(folder / "nul.png")].startswith(
        "the database refused it: ")
    assert (summary.imported, summary.duplicates) == (6, 1) and count_images(conn) == 6
    records = {r["path"]: r for r in rows(conn, "SELECT path, status, image_id FROM imported_files")}
    assert records[str(folder / "nul.png")]["status"] == "error"
    assert records[str(folder / "zz-ok-1.png")]["status"] == "duplicate"
    assert records[str(folder / "zz-ok-1.png")]["image_id"] == records[str(folder / "ok-1.png")]["image_id"]
    again = import_paths(conn, settings, [folder], progress=False)
    assert (again.imported, again.unchanged, len(again.errors)) == (0, 7, 1)


def test_new_files_of_one_batch_are_stored_with_their_records(settings: Any, conn: Any, tmp_path: Path) -> None:
    folder = tmp_path / "fresh"
    for i in range(4):
        png(folder / f"f-{i}.png", colour=(i, 9, 9), chunks={"parameters": A1111.format(prompt="shared", seed=i)})
    shutil.copy(folder / "f-2.png", folder / "f-2-copy.png")
    summary = import_paths(conn, settings, [folder], progress=False)
    assert (summary.imported, summary.duplicates, summary.errors) == (4, 1, [])
    records = rows(conn, "SELECT f.path, f.status, f.sha256, i.path AS row_path, i.seed FROM imported_files f "
                   "JOIN images i ON i.id = f.image_id ORDER BY f.path")
    by_name = {Path(r["path"]).name: r for r in records}
    assert {n: r["status"] for n, r in by_name.items() if n != "f-2.png"} == {
        "f-0.png": "imported", "f-1.png": "imported", "f-2-copy.png": "imported", "f-3.png": "imported"}
    assert by_name["f-2.png"]["status"] == "duplicate"  # its copy came first in the folder's order
    assert by_name["f-2.png"]["row_path"] == str(folder / "f-2-copy.png")  # the row stays with the first file
    assert all(r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() for r in records)
    assert [by_name[f"f-{i}.png"]["seed"] for i in range(4)] == [0, 1, 2, 3]
    assert rows(conn, "SELECT count(*) AS n FROM prompts")[0]["n"] == 1


def test_generator_record_is_kept(settings: Any, conn: Any, tmp_path: Path) -> None:
    record = {"model": {"id": "stabilityai/sd-turbo"}, "scheduler": {"class": "EulerAncestralDiscreteScheduler",
                                                                        "config": {"num_train_timesteps": 1000}}}
    path = png(tmp_path / "gen.png", chunks={"parameters": A1111.format(prompt="a lighthouse", seed=42),
                                             "promptdex": json.dumps(record)})
    summary = import_paths(conn, settings, [path], progress=False)
    assert summary.imported == 1
    from indexer.images import decode_image

    image = get_image_by_sha256(conn, sha256=decode_image(path, max_pixels=10**8).sha256)
    assert image is not None and image.source == "generated" and image.generation == record
    assert image.sampler_class == "EulerAncestralDiscreteScheduler"
    assert image.scheduler_config == {"num_train_timesteps": 1000}
    assert (image.params.prompt, image.params.seed) == ("a lighthouse", 42)


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def by_sha(conn: Any) -> dict[str, dict[str, Any]]:
    return {r["sha256"]: r for r in rows(conn, "SELECT id, sha256, path, missing FROM images")}


def assert_ids_serve_their_content(conn: Any) -> None:
    """No row that is not marked missing points at a file holding other bytes than its sha256."""
    for row in rows(conn, "SELECT sha256, path FROM images WHERE NOT missing"):
        assert sha_of(Path(row["path"])) == row["sha256"], row["path"]


def test_a_changed_file_moves_to_its_new_content_and_the_old_row_follows_a_copy_or_goes_missing(
        settings: Any, conn: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    a = png(folder / "a.png", chunks={"parameters": A1111.format(prompt="a red fox", seed=1)})
    old = sha_of(a)
    copy = folder / "copy.png"
    shutil.copy(a, copy)
    first = import_paths(conn, settings, [folder], progress=False)
    assert (first.imported, first.duplicates) == (1, 1)
    old_id = by_sha(conn)[old]["id"]

    png(a, colour=(1, 2, 3), chunks={"parameters": A1111.format(prompt="a red fox", seed=2)})  # edited in place
    new = sha_of(a)
    second = import_paths(conn, settings, [folder], progress=False)
    assert (second.imported, second.unchanged, second.duplicates, second.missing) == (1, 1, 0, 0)
    shas = by_sha(conn)
    assert shas[new]["path"] == str(a) and shas[old]["path"] == str(copy) and shas[old]["id"] == old_id
    assert_ids_serve_their_content(conn)

    png(copy, colour=(9, 9, 9))  # the last file holding the old content changes too: the old row goes missing
    third = import_paths(conn, settings, [folder], progress=False)
    assert (third.imported, third.unchanged, third.missing) == (1, 1, 1)
    assert by_sha(conn)[old]["missing"] is True
    assert_ids_serve_their_content(conn)
    assert count_images(conn) == 2 and old_id not in {im.id for im in filter_images(conn, limit=100)}
    assert old_id not in get_images(conn, ids=[old_id])
    image = get_image(conn, image_id=old_id)
    assert image is not None and image.missing  # kept: its id answers 410, and comes back with its content

    restored = png(folder / "restored.png", chunks={"parameters": A1111.format(prompt="a red fox", seed=1)})
    assert sha_of(restored) == old
    fourth = import_paths(conn, settings, [folder], progress=False)
    assert (fourth.imported, fourth.unchanged, fourth.duplicates) == (1, 2, 0)
    assert by_sha(conn)[old] == {"id": old_id, "sha256": old, "path": str(restored), "missing": False}
    assert count_images(conn) == 3


def test_a_touched_file_is_unchanged_and_keeps_its_status(settings: Any, conn: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    a = png(folder / "a.png")
    shutil.copy(a, folder / "b.png")
    import_paths(conn, settings, [folder], progress=False)
    before = {r["path"]: r["status"] for r in rows(conn, "SELECT path, status FROM imported_files")}
    assert before == {str(a): "imported", str(folder / "b.png"): "duplicate"}
    for name in ("a.png", "b.png"):
        os.utime(folder / name, (1_700_000_000, 1_700_000_000))
    again = import_paths(conn, settings, [folder], progress=False)
    assert (again.imported, again.unchanged, again.duplicates) == (0, 2, 0)
    after = {r["path"]: r["status"] for r in rows(conn, "SELECT path, status FROM imported_files")}
    assert after == before
    assert rows(conn, "SELECT file_mtime FROM images")[0]["file_mtime"] == 1_700_000_000


def test_each_file_is_counted_once_however_it_is_named(settings: Any, conn: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    a = png(folder / "a.png")
    png(folder / "sub" / "b.png", colour=(0, 0, 255))
    (tmp_path / "link.png").symlink_to(a)
    summary = import_paths(conn, settings, [folder, a, folder / "sub" / ".." / "a.png", tmp_path / "link.png",
                                            folder / "sub"], progress=False)
    assert (summary.files, summary.imported, summary.duplicates, summary.unchanged) == (2, 2, 0, 0)
    assert {r["path"] for r in rows(conn, "SELECT path FROM imported_files")} == {str(a), str(folder / "sub" / "b.png")}


def test_prune_marks_rows_whose_file_vanished(settings: Any, conn: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    a = png(folder / "a.png")
    b = png(folder / "b.png", colour=(0, 255, 0))
    kept = folder / "kept-copy-of-a.png"
    shutil.copy(a, kept)
    other = png(tmp_path / "elsewhere" / "c.png", colour=(0, 0, 255))
    import_paths(conn, settings, [folder, other], progress=False)
    ids = {sha: r["id"] for sha, r in by_sha(conn).items()}
    sha_a, sha_b, sha_c = sha_of(a), sha_of(b), sha_of(other)
    a.unlink()
    b.unlink()
    other.unlink()  # outside the pruned folder: left alone

    plain = import_paths(conn, settings, [folder], progress=False)
    assert (plain.vanished, plain.missing) == (None, 0)  # without --prune nothing is marked
    pruned = import_paths(conn, settings, [folder], progress=False, prune=True)
    assert (pruned.unchanged, pruned.vanished, pruned.missing, pruned.errors) == (1, 2, 1, [])
    shas = by_sha(conn)
    assert shas[sha_a]["path"] == str(kept) and not shas[sha_a]["missing"]  # served from the copy now
    assert shas[sha_b]["missing"] and not shas[sha_c]["missing"]
    assert {r["path"] for r in rows(conn, "SELECT path FROM imported_files")} == {str(kept), str(other)}
    assert {im.id for im in filter_images(conn, limit=100)} == {ids[sha_a], ids[sha_c]}

    shutil.rmtree(folder)  # the whole folder is gone: pruning it is not an error
    gone = import_paths(conn, settings, [folder], progress=False, prune=True)
    assert (gone.files, gone.vanished, gone.missing, gone.errors) == (0, 1, 1, [])
    assert by_sha(conn)[sha_a]["missing"]


def test_files_of_missing_or_replaced_images_answer_410(settings: Any, conn: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from promptdex.settings import get_settings
    from search_api.app import create_app

    folder = tmp_path / "pics"
    gone = png(folder / "gone.png")
    replaced = png(folder / "replaced.png", colour=(0, 255, 0))
    fine = png(folder / "fine.png", colour=(0, 0, 255))
    import_paths(conn, settings, [folder], progress=False)
    ids = {Path(r["path"]).name: r["id"] for r in rows(conn, "SELECT id, path FROM images")}
    gone.unlink()
    import_paths(conn, settings, [folder], progress=False, prune=True)
    png(replaced, colour=(50, 50, 50), size=(70, 50))  # replaced on disk, not imported again yet
    api = get_settings(data_dir=settings.data_dir, database_url=settings.database_url, models="tiny",
                       api={"rate_burst": 10_000, "rate_sustained": 100_000})
    with TestClient(create_app(api), base_url="http://localhost") as client:
        assert client.get(f"/images/{ids['fine.png']}").content == fine.read_bytes()
        for route in ("images", "thumbs"):
            answer = client.get(f"/{route}/{ids['gone.png']}")
            assert answer.status_code == 410 and "imported again" in answer.json()["detail"], answer.text
        answer = client.get(f"/images/{ids['replaced.png']}")
        assert answer.status_code == 410 and "promptdex import" in answer.json()["detail"], answer.text
        # browsing needs no index (moderate: strict waits for index to score the pixels)
        listed = client.get("/api/search", params={"q": "", "safe": "moderate"}).json()
        assert {item["id"] for item in listed["data"]} == {ids["replaced.png"], ids["fine.png"]}
