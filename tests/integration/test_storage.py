"""Shared storage (PROMPTDEX_STORAGE_URL) against a real S3-protocol server: moto's standalone server, on 127.0.0.1."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.bundles import read_manifest
from indexer.images import thumbnail_key
from indexer.publish import POINTER, publish_bundle, sync_bundle
from promptdex.errors import ConfigError, IndexCorrupt
from promptdex.settings import get_settings
from promptdex.storage import ObjectInfo, Storage, check_storage, get_storage, missing_keys
from search_api.app import create_app
from tests.helpers import clean_env, moto_s3, run_cli
from tests.integration.api_corpus import create_database

pytestmark = pytest.mark.integration

BUCKET = "promptdex-test"
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """The endpoint of a moto S3 server this module starts (and stops), with one bucket."""
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)


def s3_settings(endpoint: str, prefix: str, **overrides: Any) -> Any:
    return get_settings(storage_url=f"s3://{BUCKET}/{prefix}", storage={"endpoint_url": endpoint, "poll_seconds": 0.1,
                                                                          "timeout_seconds": 2, "max_retries": 0},
                        **overrides)


def test_storage_round_trip_on_s3(s3: str) -> None:
    storage = get_storage(s3_settings(s3, "rt"), "images")
    storage.put("ab/one.bin", b"0123456789")
    assert storage.get("ab/one.bin") == b"0123456789"
    assert storage.get_range("ab/one.bin", 2, 5) == b"234"
    assert b"".join(storage.stream("ab/one.bin")) == b"0123456789"
    info = storage.head("ab/one.bin")
    assert info is not None and info.size == 10 and info.etag
    assert [o.key for o in storage.list("ab/")] == ["ab/one.bin"]
    storage.delete("ab/one.bin")
    assert storage.head("ab/one.bin") is None
    assert storage.local_path("ab/one.bin") is None


def test_unreachable_endpoint_is_one_clear_error(s3: str) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match="PROMPTDEX_STORAGE_URL=s3://"):
        check_storage(s3_settings(f"http://127.0.0.1:{port}", "x"))


def test_missing_bucket_is_one_clear_error(s3: str) -> None:
    settings = get_settings(storage_url="s3://no-such-bucket/x", storage={"endpoint_url": s3, "max_retries": 0})
    with pytest.raises(ConfigError, match="PROMPTDEX_STORAGE_URL=s3://no-such-bucket"):
        check_storage(settings)


def test_generate_index_and_a_second_api_instance_on_shared_s3(s3: str, pg_server_url: str, tmp_path: Path) -> None:
    url = create_database(pg_server_url)
    env = clean_env(PROMPTDEX_DATA_DIR=str(tmp_path / "writer"), PROMPTDEX_DATABASE_URL=url, PROMPTDEX_MODELS="tiny",
                    PROMPTDEX_STORAGE_URL=f"s3://{BUCKET}/shared", PROMPTDEX_STORAGE__ENDPOINT_URL=s3, **AWS)
    gen = run_cli("generate", "a red fox in the snow", "--size", "64x64", "--steps", "2", "--model", "tiny",
                  "--json", cwd=tmp_path, env=env, timeout=600)
    assert gen.returncode == 0, gen.stderr
    image_id = int(json.loads(gen.stdout)[0])
    assert not (tmp_path / "writer" / "images").exists() or not any((tmp_path / "writer" / "images").rglob("*.png"))
    idx = run_cli("index", "--no-progress", cwd=tmp_path, env=env, timeout=600)
    assert idx.returncode == 0, idx.stderr
    bundles = get_storage(s3_settings(s3, "shared"), "bundles")
    assert any(o.key.endswith(POINTER) for o in bundles.list())

    replica = s3_settings(s3, "shared", data_dir=tmp_path / "replica", database_url=url, models="tiny",
                          api={"rate_burst": 10_000, "rate_sustained": 100_000})
    with TestClient(create_app(replica), base_url="http://localhost") as client:
        first = client.get(f"/images/{image_id}")
        assert first.status_code == 200, first.text
        assert first.content[:8] == b"\x89PNG\r\n\x1a\n"
        etag = first.headers["etag"]
        assert client.get(f"/images/{image_id}", headers={"If-None-Match": etag}).status_code == 304
        # the indexer put its thumbnail into the store; the replica (no thumbnails of its own) serves that one
        thumbs = get_storage(s3_settings(s3, "shared"), "thumbs")
        [made] = thumbs.list()
        assert made.key == thumbnail_key(made.key.split("/")[1].removesuffix(".webp"))
        indexed = thumbs.get(made.key)
        thumb = client.get(f"/thumbs/{image_id}")
        assert thumb.status_code == 200 and thumb.content == indexed and thumb.content[:4] == b"RIFF"
        assert thumb.headers["etag"] and thumb.headers["content-type"] == "image/webp"
        assert client.get(f"/thumbs/{image_id}", headers={"If-None-Match": thumb.headers["etag"]}).status_code == 304
        own = tmp_path / "replica" / "thumbs"
        assert not own.exists() or not any(own.rglob("*.webp"))
        # one missing from the store is made on its first request, from the original in the store, and put there
        thumbs.delete(made.key)
        remade = client.get(f"/thumbs/{image_id}")
        assert remade.status_code == 200 and remade.headers["etag"] == thumb.headers["etag"]
        assert thumbs.get(made.key) == remade.content and remade.content[:4] == b"RIFF"
        found = client.get("/api/search", params={"q": "fox"})
        assert found.status_code == 200, found.text
        assert image_id in [item["id"] for item in found.json()["data"]]
        folder = tmp_path / "replica" / "indexes" / "clip-image"
        before = read_manifest(folder)
        # the writer decoded the image from the store (its images folder is empty) and the replica downloaded it
        assert before is not None and before.count == 1
        # a new generation published from the writer is picked up without a restart
        again = run_cli("index", "--rebuild", "--no-progress", cwd=tmp_path, env=env, timeout=600)
        assert again.returncode == 0, again.stderr
        import time

        time.sleep(0.2)
        assert client.get("/api/search", params={"q": "fox"}).status_code == 200
        after = read_manifest(folder)
        assert after is not None and after.generation > before.generation
        assert client.get("/api/health").json()["bundles"]["storage"] == {"ok": True}
        # a pointer to a generation whose files never reached the store: the replica keeps serving the one it has,
        # health says the store is the problem, and names the bundle (admins see the text)
        pointer = json.loads(bundles.get(f"clip-image/{POINTER}"))
        bundles.put(f"clip-image/{POINTER}", json.dumps({**pointer, "generation": pointer["generation"] + 1}).encode())
        time.sleep(0.2)
        assert client.get("/api/search", params={"q": "fox"}).json()["data"]
        health = client.get("/api/health").json()
        assert health["status"] == "degraded" and health["bundles"]["images"]["ok"]
        assert health["bundles"]["storage"] == {"ok": False, "error": "not available"}
        problem = client.app.state.promptdex.engines.bundle_sync.problem  # type: ignore[attr-defined]
        assert problem.startswith("bundle 'clip-image': ") and "prompt-text" not in problem
        assert read_manifest(folder).generation == after.generation  # type: ignore[union-attr]
        bundles.put(f"clip-image/{POINTER}", json.dumps(pointer).encode())  # the publisher's pointer again
        time.sleep(0.2)
        client.get("/api/search", params={"q": "fox"})
        assert client.get("/api/health").json()["status"] == "ok"


def test_corrupt_download_is_refused_and_the_old_generation_kept(s3: str, tmp_path: Path) -> None:
    import numpy as np

    from indexer.bundles import Bundle

    source = tmp_path / "built" / "b"
    bundle = Bundle.create(source, name="b", kind="image", model="m", dim=4)
    bundle.add(np.eye(4, dtype=np.float32), [1, 2, 3, 4])
    bundle.save()
    storage = get_storage(s3_settings(s3, "corrupt"), "bundles")
    assert publish_bundle(storage, source) == 1
    local = tmp_path / "cache" / "b"
    local.mkdir(parents=True)
    assert sync_bundle(storage, "b", local)
    assert read_manifest(local).generation == 1  # type: ignore[union-attr]
    bundle.add(np.ones((1, 4), dtype=np.float32), [5])
    manifest = bundle.save()
    publish_bundle(storage, source)
    key = f"b/{manifest.generation:06d}/{manifest.index_file}"
    storage.put(key, storage.get(key)[:-7])  # truncated in the store
    with pytest.raises(IndexCorrupt, match="truncated or corrupt"):
        sync_bundle(storage, "b", local)
    kept = Bundle.open(local)
    assert kept.manifest.generation == 1 and kept.count == 4
    assert not [p for p in local.iterdir() if p.name.startswith(".incoming")]
    assert os.environ["AWS_REGION"] == "us-east-1"


class Counting:
    """A store that counts the requests made of it."""

    def __init__(self, inner: Storage) -> None:
        self.inner, self.name, self.heads, self.lists = inner, inner.name, 0, 0

    def head(self, key: str) -> ObjectInfo | None:
        self.heads += 1
        return self.inner.head(key)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        self.lists += 1
        return self.inner.list(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def generated_row(sha: str, **fields: Any) -> Any:
    from generator.output import image_path
    from promptdex.records import NewImage

    return NewImage(sha256=sha, path=image_path(sha), width=64, height=64, format="PNG", source="generated", **fields)


def test_missing_files_are_found_in_the_store_a_folder_at_a_time(s3: str, conn: Any, database_url: str,
                                                                   tmp_path: Path) -> None:
    from generator.output import find_missing_files, image_path
    from promptdex.store import add_image

    settings = s3_settings(s3, "missing", data_dir=tmp_path / "data", database_url=database_url)
    images = get_storage(settings, "images")
    shas = [f"ab{i:062x}" for i in range(12)] + ["cd" + "0" * 62]  # twelve in one folder, one alone
    ids = {}
    for sha in shas:
        images.put(image_path(sha), b"png " + sha.encode())
        ids[sha] = add_image(conn, image=generated_row(sha))[0]
    images.delete(image_path(shas[3]))
    images.delete(image_path(shas[-1]))
    counting = Counting(images)
    missing = find_missing_files(conn, images_path=settings.images_path, storage=counting)  # type: ignore[arg-type]
    assert missing == sorted([ids[shas[3]], ids[shas[-1]]])
    assert (counting.lists, counting.heads) == (1, 1)  # the busy folder listed once, the lone key asked once
    assert missing_keys(images, [image_path(s) for s in shas], list_above=100) == {image_path(shas[3]),
                                                                                  image_path(shas[-1])}
    # `promptdex reproduce --missing` finds them in the store and queues one reproduce job each
    env = clean_env(PROMPTDEX_DATA_DIR=str(tmp_path / "data"), PROMPTDEX_DATABASE_URL=database_url,
                    PROMPTDEX_STORAGE_URL=f"s3://{BUCKET}/missing", PROMPTDEX_STORAGE__ENDPOINT_URL=s3, **AWS)
    queued = run_cli("reproduce", "--missing", "--json", cwd=tmp_path, env=env, timeout=300)
    assert queued.returncode == 0, queued.stderr
    body = json.loads(queued.stdout)
    assert body["missing"] == missing and len(body["jobs"]) == 2


def test_reproduce_restores_a_deleted_object_bit_for_bit(s3: str, conn: Any, database_url: str, tmp_path: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    import io

    import numpy as np
    from PIL import Image

    from generator.environment import torch_threads
    from generator.output import find_missing_files
    from generator.reproduce import reproduce_image
    from generator.service import ModelCache, generate_images
    from generator.tiny import ensure_tiny_model
    from promptdex.catalog import fill_defaults
    from promptdex.generation import GenerateRequest
    from promptdex.store import get_image

    models = tmp_path_factory.getbasetemp() / "generator-models"
    ensure_tiny_model(models)
    settings = s3_settings(s3, "reproduce", data_dir=tmp_path / "data", database_url=database_url, models="tiny",
                           models_dir=models)
    request = fill_defaults(GenerateRequest(prompt="a lighthouse in a storm", steps=2, width=64, height=64,
                                            sampler="Euler a", seeds=[9]), settings)
    cache = ModelCache(settings, device="cpu")
    try:
        with torch_threads(2):
            image_id = generate_images(conn, settings, [request], cache=cache, batch_size=1).ids[0][0]
        image = get_image(conn, image_id=image_id)
        assert image is not None
        images = get_storage(settings, "images")
        original = images.get(image.path)
        images.delete(image.path)
        assert find_missing_files(conn, images_path=settings.images_path, storage=images) == [image_id]
        report = reproduce_image(conn, settings, image_id=image_id, cache=cache)
        assert report.identical and report.restored, report.summary()
        assert images.get(image.path) == original  # back in the store, bit for bit
        assert find_missing_files(conn, images_path=settings.images_path, storage=images) == []
        assert not settings.images_path.exists() or not any(settings.images_path.rglob("*.png"))
        # with the object present, reproduce compares against the store's bytes (not a local copy)
        pixels = np.asarray(Image.open(io.BytesIO(original)).convert("RGB")).copy()
        pixels[0, 0] ^= 1
        changed = io.BytesIO()
        Image.fromarray(pixels).save(changed, format="PNG")
        images.put(image.path, changed.getvalue())
        report = reproduce_image(conn, settings, image_id=image_id, cache=cache)
        assert not report.identical and report.pixels["differing"] == 3 and not report.restored
    finally:
        cache.close()


def test_rescore_scores_an_image_that_is_only_in_the_store(s3: str, conn: Any, database_url: str,
                                                           tmp_path: Path) -> None:
    import hashlib
    import io

    import numpy as np
    from PIL import Image

    from generator.output import image_path
    from indexer.safety import get_scorer
    from indexer.safety.rescore import rescore
    from promptdex.store import add_image
    from tests.safety_classifier import EXPLICIT, MAGENTA, paint

    settings = s3_settings(s3, "rescore", data_dir=tmp_path / "data", database_url=database_url,
                           safety={"classifiers": "tests.safety_classifier:marker"})
    images = get_storage(settings, "images")
    encoded = io.BytesIO()
    Image.fromarray(paint(np.full((64, 64, 3), 90, dtype=np.uint8), MAGENTA, 1)).save(encoded, format="PNG")
    data = encoded.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    images.put(image_path(sha), data)
    stored = add_image(conn, image=generated_row(sha))[0]
    gone = add_image(conn, image=generated_row("ef" + "1" * 62))[0]  # a row whose object is not in the store
    summary = rescore(conn, settings, get_scorer(settings), progress=False, workers=1)
    assert summary.scored == 1 and [image_id for image_id, _ in summary.errors] == [gone]
    row = conn.execute("SELECT nsfw, nsfw_scores FROM images WHERE id = %s", (stored,)).fetchone()
    assert row["nsfw"] == pytest.approx(EXPLICIT) and set(row["nsfw_scores"]) == {"marker"}
    assert not settings.images_path.exists()  # read from the store (through its download cache), not IMAGES_DIR
