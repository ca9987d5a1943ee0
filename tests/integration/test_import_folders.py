"""`import_paths` against a real PostgreSQL: incremental, deduplicated, per-file errors, thumbnails, raw metadata."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer.images import thumbnail_path
from indexer.importer import import_paths
from indexer.metadata.containers import read_text_chunks
from promptdex.store import count_images, get_image_by_sha256
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
    with Image.open(thumb) as t:
        assert t.format == "WEBP" and max(t.size) == settings.indexer.thumb_size


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
    assert "decompression bomb" in errors[str(folder / "bomb.png")]
    assert "no such file" in errors[str(tmp_path / "missing")]
    assert summary.imported == 2
    assert [path for path, _ in summary.warnings] == [str(folder / "broken-meta.png")]
    broken = rows(conn, "SELECT * FROM images WHERE path = %s", str(folder / "broken-meta.png"))[0]
    assert broken["source"] == "unknown" and broken["raw_metadata"] == {"prompt": '{"3": {"class_type": "KSampler", '}
    again = import_paths(conn, settings, [folder], progress=False)
    assert again.imported == 0 and len(again.errors) == 5  # errors are reported again, never silently dropped


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
