"""`run_index` end to end on a real corpus: bundles, keyword index, resume after a crash, model checks, service."""

from __future__ import annotations

import colorsys
import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer import images as images_module
from indexer.bundles import MANIFEST, Bundle, read_manifest
from indexer.embedders import ClipEmbedder, Embedders, load_clip
from indexer.embedders.clip import TINY_CLIP_NAME
from indexer.images import index_pixels, thumbnail_path
from indexer.importer import import_paths
from indexer.indexing import IMAGE_BUNDLE, PROMPT_BUNDLE, IndexStopped, index_status, run_index
from indexer.keyword import PostgresKeywordIndex
from indexer.service import IndexerService
from promptdex.errors import IndexCorrupt, IndexMismatch, PromptdexError
from tests.unit.test_indexer_embedders import real_minilm, tiny_clip

pytestmark = pytest.mark.integration

SUBJECTS = ["a red fox", "a lighthouse in a storm", "a bowl of ramen", "a snowy mountain village", "a robot cat"]


def make_corpus(folder: Path, n: int, start: int = 0) -> None:
    """`n` small PNGs in distinct colours with A1111 parameters; prompts repeat, so prompts < images."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        r, g, b = (int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.137) % 1, 0.8, 0.9))
        info = PngInfo()
        prompt = f"{SUBJECTS[i % len(SUBJECTS)]}, style {i % 7}"
        info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {i}, Size: 48x32")
        Image.new("RGB", (48, 32), (r, g, b)).save(folder / f"img-{i:04d}.png", pnginfo=info)


@pytest.fixture
def setup(settings: Any, db: Any, conn: Any, tmp_path: Path) -> dict[str, Any]:
    settings.indexer.batch_size = 4
    settings.indexer.checkpoint_every = 8
    make_corpus(tmp_path / "corpus", 40)
    assert import_paths(conn, settings, [tmp_path / "corpus"], progress=False).imported == 40
    embedders = Embedders(clip=tiny_clip(settings.models_path, batch_size=4), prompt=real_minilm())
    keyword = PostgresKeywordIndex(lambda: db.connect(autocommit=True))
    return {"settings": settings, "conn": conn, "embedders": embedders, "keyword": keyword, "db": db}


def ids_of(conn: Any, table: str) -> list[int]:
    return sorted(r["id"] for r in conn.execute(f"SELECT id FROM {table}").fetchall())


def recorded(conn: Any, bundle: str) -> list[int]:
    return sorted(r["item_id"] for r in conn.execute(
        "SELECT item_id FROM index_entries WHERE bundle = %s", (bundle,)).fetchall())


def assert_complete(s: dict[str, Any]) -> None:
    """Every row has exactly one vector, and index_entries says so."""
    conn, settings = s["conn"], s["settings"]
    for name, table in ((IMAGE_BUNDLE, "images"), (PROMPT_BUNDLE, "prompts")):
        bundle_ids = Bundle.open(settings.indexes_path / name).ids().tolist()
        assert len(bundle_ids) == len(set(bundle_ids)), f"{name}: duplicate vectors"
        assert sorted(bundle_ids) == ids_of(conn, table) == recorded(conn, name), name


def run(s: dict[str, Any], **kwargs: Any) -> Any:
    return run_index(s["conn"], s["settings"], kwargs.pop("embedders", s["embedders"]), s["keyword"],
                     progress=False, **kwargs)


def test_index_builds_everything_then_only_adds_new_items(setup: dict[str, Any], tmp_path: Path) -> None:
    s = setup
    report = run(s)
    prompts = len(ids_of(s["conn"], "prompts"))
    assert [(b.name, b.added, b.total) for b in report.bundles] == [(IMAGE_BUNDLE, 40, 40),
                                                                    (PROMPT_BUNDLE, prompts, prompts)]
    assert report.keyword_added == prompts and prompts == 35  # 5 subjects x 7 styles
    assert_complete(s)
    status = index_status(s["conn"], s["settings"], s["keyword"])
    assert [(b["name"], b["count"], b["pending"]) for b in status["bundles"]] == [
        (IMAGE_BUNDLE, 40, 0), (PROMPT_BUNDLE, 35, 0)]
    assert status["keyword"] == {"backend": "postgres", "recorded": 35, "pending": 0}
    assert [b.added for b in run(s).bundles] == [0, 0] and run(s).keyword_added == 0
    make_corpus(tmp_path / "more", 3, start=40)
    import_paths(s["conn"], s["settings"], [tmp_path / "more"], progress=False)
    assert [b.added for b in run(s).bundles] == [3, 0]
    assert_complete(s)


def assert_every_image_has_its_thumbnail(s: dict[str, Any]) -> None:
    settings = s["settings"]
    for row in s["conn"].execute("SELECT sha256, width, height FROM images").fetchall():
        with Image.open(thumbnail_path(settings.thumbs_path, row["sha256"])) as thumb:
            thumb.load()  # a complete WebP, not a truncated one
            assert thumb.format == "WEBP" and thumb.size == (row["width"], row["height"])  # 48x32: never enlarged
    assert [p for p in settings.thumbs_path.rglob("*.tmp") if p.is_file()] == []


def test_index_makes_the_thumbnails_import_left_out(setup: dict[str, Any]) -> None:
    """Import decodes no pixels; the index's one decode of each image writes its thumbnail."""
    s = setup
    assert not list(s["settings"].thumbs_path.rglob("*.webp"))
    run(s)
    assert_every_image_has_its_thumbnail(s)


def test_a_full_thumbnails_disk_stops_the_index_at_once_and_the_next_run_finishes(
        setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The file-writing seam fails as a full disk does after 20 thumbnails (a tmpfs needs mount rights)."""
    s = setup
    thumbs = s["settings"].thumbs_path
    written = {"n": 0}
    real_write = images_module._write_all

    def full_after_20(file: Any, data: bytes) -> None:
        written["n"] += 1
        if written["n"] > 20:
            real_write(file, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(file, data)

    monkeypatch.setattr(images_module, "_write_all", full_after_20)
    with pytest.raises(IndexStopped) as stopped:
        run(s)
    message = str(stopped.value)
    assert message.startswith(f"{thumbs}: cannot write thumbnails: the disk is full"), message
    assert "PROMPTDEX_THUMBS_DIR" in message and "`promptdex index` again" in message
    assert written["n"] < 40  # stopped at once, not after trying every image
    assert [p for p in thumbs.rglob("*.tmp") if p.is_file()] == []
    saved = recorded(s["conn"], IMAGE_BUNDLE)
    assert 0 < len(saved) < 40
    monkeypatch.setattr(images_module, "_write_all", real_write)
    assert run(s).bundles[0].added == 40 - len(saved)
    assert_complete(s)
    assert_every_image_has_its_thumbnail(s)


def test_service_searches_what_the_index_wrote(setup: dict[str, Any]) -> None:
    s = setup
    run(s)
    service = IndexerService(s["settings"], s["embedders"], s["keyword"], mmap=True, check_every=0)
    row = s["conn"].execute("SELECT id, sha256, path FROM images ORDER BY id LIMIT 1 OFFSET 7").fetchone()
    picture = index_pixels(Path(row["path"]), row["sha256"], s["settings"].thumbs_path,
                           thumb_size=s["settings"].indexer.thumb_size, max_pixels=10**6).clip_input
    ids, scores = service.search_images(service.embed_images([picture])[0], 3)
    assert ids[0] == row["id"] and scores[0] == pytest.approx(1.0, abs=1e-4)
    assert len(service.search_images(service.embed_text(["a red fox"])[0], 5)[0]) == 5
    fox = s["conn"].execute("SELECT id FROM prompts WHERE text = 'a red fox, style 0'").fetchone()["id"]
    found, _ = service.search_prompts(service.embed_prompts(["a red fox, style 0"])[0], 1)
    assert found.tolist() == [fox]
    assert fox in [i for i, _ in service.keyword.search("red fox", 10)]


class Crash(RuntimeError):
    pass


class CrashingClip:
    """The tiny CLIP, except that its third batch of images kills the run."""

    def __init__(self, inner: ClipEmbedder) -> None:
        self.inner, self.calls = inner, 0
        self.model_id, self.dim, self.supports_images = inner.model_id, inner.dim, True

    def embed_text(self, texts: Any) -> Any:
        return self.inner.embed_text(texts)

    def embed_images(self, images: Any) -> Any:
        self.calls += 1
        if self.calls == 3:
            raise Crash("killed")
        return self.inner.embed_images(images)


def test_crash_mid_run_then_resume_gives_no_duplicate_and_no_missing_vector(setup: dict[str, Any]) -> None:
    s = setup
    crashing = Embedders(clip=CrashingClip(s["embedders"].clip), prompt=s["embedders"].prompt)  # type: ignore[arg-type]
    with pytest.raises(Crash):
        run(s, embedders=crashing)
    saved = Bundle.open(s["settings"].indexes_path / IMAGE_BUNDLE).ids().tolist()
    assert 0 < len(saved) < 40 and sorted(saved) == recorded(s["conn"], IMAGE_BUNDLE)
    report = run(s)
    assert report.bundles[0].added == 40 - len(saved)
    assert_complete(s)


def test_interrupted_between_save_and_record_is_reconciled(setup: dict[str, Any]) -> None:
    s = setup
    conn, settings = s["conn"], s["settings"]
    run(s)
    # killed after the bundle was saved but before its ids were recorded:
    lost = recorded(conn, IMAGE_BUNDLE)[-6:]
    conn.execute("DELETE FROM index_entries WHERE bundle = %s AND item_id = ANY(%s)", (IMAGE_BUNDLE, lost))
    # a bundle restored from an older copy: records for vectors it no longer has
    bundle = Bundle.open(settings.indexes_path / PROMPT_BUNDLE)
    missing = sorted(bundle.ids().tolist())[:4]
    bundle.remove(missing)
    bundle.save()
    report = run(s)
    image, prompt = report.bundles
    assert (image.recovered, image.added) == (6, 0)  # recorded, not embedded again
    assert (prompt.dropped, prompt.added) == (4, 4)  # embedded again
    assert_complete(s)


def test_bundle_of_another_model_is_refused_until_rebuild(setup: dict[str, Any]) -> None:
    s = setup
    run(s)
    other = load_clip(TINY_CLIP_NAME, None, device="cpu", batch_size=4, models_dir=s["settings"].models_path)
    embedders = Embedders(clip=other, prompt=s["embedders"].prompt)
    with pytest.raises(IndexMismatch, match="--rebuild"):
        run(s, embedders=embedders)
    report = run(s, embedders=embedders, rebuild=True)
    assert [b.added for b in report.bundles] == [40, 35] and report.keyword_added == 35
    assert Bundle.open(s["settings"].indexes_path / IMAGE_BUNDLE, model=other.model_id).count == 40
    assert_complete(s)


def folder(settings: Any, name: str) -> dict[str, bytes]:
    """Every file of a bundle folder with its content."""
    return {p.name: p.read_bytes() for p in sorted((settings.indexes_path / name).iterdir())}


def test_damaged_bundles_stop_the_run_before_any_work_and_rebuild_repairs_them(setup: dict[str, Any]) -> None:
    s = setup
    conn, settings = s["conn"], s["settings"]
    run(s)
    images = settings.indexes_path / IMAGE_BUNDLE
    manifest = read_manifest(images)
    assert manifest is not None
    index_file = images / manifest.index_file
    with index_file.open("r+b") as handle:  # the image bundle's index file cut short
        handle.truncate(index_file.stat().st_size // 3)
    prompt_manifest = settings.indexes_path / PROMPT_BUNDLE / MANIFEST  # the prompt bundle's manifest cut short
    prompt_manifest.write_bytes(prompt_manifest.read_bytes()[:40])
    before = {name: folder(settings, name) for name in (IMAGE_BUNDLE, PROMPT_BUNDLE)}
    records = {name: recorded(conn, name) for name in (IMAGE_BUNDLE, PROMPT_BUNDLE)}

    with pytest.raises(IndexCorrupt, match=f"{index_file}.*truncated.*promptdex index --rebuild"):
        run(s)
    assert {name: folder(settings, name) for name in before} == before  # nothing written
    assert {name: recorded(conn, name) for name in records} == records  # nothing forgotten
    status = {b["name"]: b for b in index_status(conn, settings, s["keyword"])["bundles"]}
    assert status[IMAGE_BUNDLE]["state"] == "damaged" and str(index_file) in status[IMAGE_BUNDLE]["error"]
    assert status[PROMPT_BUNDLE]["state"] == "damaged" and str(prompt_manifest) in status[PROMPT_BUNDLE]["error"]
    assert status[IMAGE_BUNDLE]["recorded"] == 40 and status[PROMPT_BUNDLE]["recorded"] == 35

    report = run(s, rebuild=True)
    assert all(b.replaced_damaged for b in report.bundles) and [b.added for b in report.bundles] == [40, 35]
    assert "replaced a damaged bundle" in report.line()
    assert_complete(s)
    for name in (IMAGE_BUNDLE, PROMPT_BUNDLE):
        rebuilt = read_manifest(settings.indexes_path / name)
        assert rebuilt is not None and list(folder(settings, name)) == [rebuilt.index_file, MANIFEST]
    assert [b["state"] for b in index_status(conn, settings, s["keyword"])["bundles"]] == ["ok", "ok"]


def test_a_rebuild_that_fails_half_way_leaves_the_old_bundle_and_its_records(setup: dict[str, Any]) -> None:
    s = setup
    conn, settings = s["conn"], s["settings"]
    run(s)
    before = folder(settings, IMAGE_BUNDLE)
    row = conn.execute("SELECT manifest FROM index_bundles WHERE name = %s", (IMAGE_BUNDLE,)).fetchone()
    crashing = Embedders(clip=CrashingClip(s["embedders"].clip), prompt=s["embedders"].prompt)  # type: ignore[arg-type]
    with pytest.raises(Crash):
        run(s, embedders=crashing, rebuild=True)
    assert folder(settings, IMAGE_BUNDLE) == before  # the old bundle, as it was: nothing was swapped in
    assert conn.execute("SELECT manifest FROM index_bundles WHERE name = %s", (IMAGE_BUNDLE,)).fetchone() == row
    assert_complete(s)  # and its records: every row still has its one vector
    assert [b.added for b in run(s).bundles] == [0, 0]


def test_one_index_run_at_a_time(setup: dict[str, Any], database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (0x70646978,))
        with pytest.raises(PromptdexError, match="another `promptdex index` is running"):
            run(setup)
    assert np.all(np.asarray(recorded(setup["conn"], IMAGE_BUNDLE)) >= 0)


def test_generated_rows_get_thumbnails_and_missing_files_are_skipped(setup: dict[str, Any], tmp_path: Path) -> None:
    """Generated images have paths relative to the images folder and no thumbnail yet; a vanished file is
    reported, left pending, and indexed once it is back."""
    from indexer.images import decode_image, thumbnail_path
    from promptdex.records import NewImage
    from promptdex.store import add_image

    s = setup
    settings, conn = s["settings"], s["conn"]
    make_corpus(tmp_path / "gen", 2, start=100)
    ids = {}
    for name in ("img-0100.png", "img-0101.png"):
        decoded = decode_image(tmp_path / "gen" / name, max_pixels=10**6)
        rel = f"{decoded.sha256[:2]}/{decoded.sha256}.png"
        (settings.images_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "gen" / name).rename(settings.images_path / rel)
        ids[name], _ = add_image(conn, image=NewImage(sha256=decoded.sha256, path=rel, width=48, height=32,
                                                      format="PNG", source="generated"))
        ids[name + "-file"] = settings.images_path / rel
    hidden = ids["img-0101.png-file"].rename(tmp_path / "away.png")
    report = run(s)
    image = report.bundles[0]
    assert image.added == 40 + 1 and [i for i, _ in image.skipped] == [ids["img-0101.png"]]
    made = decode_image(ids["img-0100.png-file"], max_pixels=10**6).sha256
    assert thumbnail_path(settings.thumbs_path, made).is_file()
    assert index_status(conn, settings, s["keyword"])["bundles"][0]["pending"] == 1
    hidden.rename(ids["img-0101.png-file"])
    assert run(s).bundles[0].added == 1
    assert_complete(s)


def test_empty_corpus_gives_empty_bundles_the_api_can_open(settings: Any, db: Any, conn: Any) -> None:
    embedders = Embedders(clip=tiny_clip(settings.models_path), prompt=real_minilm())
    keyword = PostgresKeywordIndex(lambda: db.connect(autocommit=True))
    report = run_index(conn, settings, embedders, keyword, progress=False)
    assert [b.total for b in report.bundles] == [0, 0]
    service = IndexerService(settings, embedders, keyword, mmap=True)
    ids, _ = service.search_images(service.embed_text(["anything"])[0], 5)
    assert ids.size == 0 and service.prompts.count == 0
