"""Faults in FAISS bundles: truncated index files and manifests, under a serving API and before it starts, and
`promptdex index` killed with SIGKILL in the middle of a save.

Each test gets its own copy of a small real corpus (tiny PNGs imported and indexed through the CLI, real
PostgreSQL, real FAISS) and asserts: nothing lost, nothing duplicated, the exit code and message a person sees, and
recovery by the tools alone (the API picks the repaired bundle up without a restart).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer.bundles import MANIFEST, Bundle, read_manifest
from indexer.indexing import IMAGE_BUNDLE, PROMPT_BUNDLE
from promptdex import accounts
from promptdex.settings import get_settings
from search_api.app import create_app
from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.integration

BASE = "http://localhost"
N = 12  # images, each with its own prompt
SUBJECTS = ["fox", "lighthouse", "ramen", "village", "robot", "castle"]
RAW_TEXT = ("Error in", "faiss::", ".cpp", "Traceback", "RuntimeError", "Errno")


@dataclass(frozen=True)
class Golden:
    """A corpus built once: `imported` (rows, no bundles) and `indexed` (rows and bundles) database templates."""

    root: Path
    server_url: str
    imported: str
    indexed: str
    admin_token: str


@dataclass(frozen=True)
class Corpus:
    """One test's own copy: its database, data folder and CLI environment."""

    root: Path
    url: str
    env: dict[str, str]
    admin: dict[str, str]

    @property
    def indexes(self) -> Path:
        return self.root / "data" / "indexes"


def _url(server_url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def _copy_database(server_url: str, template: str) -> str:
    name = f"fb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def _make_pictures(folder: Path) -> None:
    folder.mkdir()
    for i in range(N):
        info = PngInfo()
        info.add_text("parameters", f"a {SUBJECTS[i % 6]} in style {i}\nSteps: 4, Sampler: Euler, CFG scale: 2, "
                                    f"Seed: {i}, Size: 24x24")
        Image.new("RGB", (24, 24), ((i * 40) % 256, (i * 90) % 256, (i * 150) % 256)).save(
            folder / f"{i:02d}.png", pnginfo=info)


def _env(root: Path, url: str) -> dict[str, str]:
    return clean_env(PROMPTDEX_DATA_DIR=str(root / "data"), PROMPTDEX_DATABASE_URL=url, PROMPTDEX_MODELS="tiny",
                     PROMPTDEX_INDEXER__BATCH_SIZE="1", PROMPTDEX_INDEXER__CHECKPOINT_EVERY="4")


@pytest.fixture(scope="module")
def golden(pg_server_url: str) -> Iterator[Golden]:
    with tempfile.TemporaryDirectory(prefix="promptdex-faults-") as tmp:
        root = Path(tmp)
        _make_pictures(root / "pictures")
        name = f"fb_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        work = root / "golden"
        work.mkdir()
        env = _env(work, _url(pg_server_url, name))
        imported = run_cli("import", "--no-progress", str(root / "pictures"), cwd=work, env=env)
        assert imported.returncode == 0 and imported.stdout.startswith(f"imported {N},"), imported.stdout
        with psycopg.connect(_url(pg_server_url, name), autocommit=True,
                             row_factory=psycopg.rows.dict_row) as conn:
            accounts.add_user(conn, name="root", role=accounts.Role.ADMIN, password="root-password")
            token = accounts.create_token(conn, name="root")[1]
        before_index = _copy_database(pg_server_url, name)
        (work / "data").mkdir(exist_ok=True)  # import writes no thumbnails (index makes them): maybe nothing yet
        shutil.copytree(work / "data", root / "data-imported")
        indexed = run_cli("index", "--no-progress", cwd=work, env=env)
        assert indexed.returncode == 0, indexed.stderr
        try:
            yield Golden(root, pg_server_url, before_index, name, token)
        finally:
            with psycopg.connect(pg_server_url, autocommit=True) as conn:
                for db in (name, before_index):
                    conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _corpus(golden: Golden, tmp_path: Path, *, indexed: bool) -> Iterator[Corpus]:
    name = _copy_database(golden.server_url, golden.indexed if indexed else golden.imported)
    root = tmp_path / "corpus"
    shutil.copytree(golden.root / ("golden/data" if indexed else "data-imported"), root / "data")
    url = _url(golden.server_url, name)
    yield Corpus(root, url, _env(root, url), {"Authorization": f"Bearer {golden.admin_token}"})
    with psycopg.connect(golden.server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def indexed(golden: Golden, tmp_path: Path) -> Iterator[Corpus]:
    yield from _corpus(golden, tmp_path, indexed=True)


@pytest.fixture
def imported(golden: Golden, tmp_path: Path) -> Iterator[Corpus]:
    yield from _corpus(golden, tmp_path, indexed=False)


def app_for(corpus: Corpus) -> TestClient:
    settings = get_settings(data_dir=corpus.root / "data", database_url=corpus.url, models="tiny",
                            api={"rate_burst": 10_000, "rate_sustained": 100_000})
    return TestClient(create_app(settings), base_url=BASE)


def cli(corpus: Corpus, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=corpus.root, env=corpus.env)


def table_ids(corpus: Corpus, table: str) -> list[int]:
    with psycopg.connect(corpus.url) as conn:
        return sorted(int(r[0]) for r in conn.execute(f"SELECT id FROM {table}").fetchall())


def recorded(corpus: Corpus, bundle: str) -> list[int]:
    with psycopg.connect(corpus.url) as conn:
        return sorted(int(r[0]) for r in conn.execute("SELECT item_id FROM index_entries WHERE bundle = %s",
                                                      (bundle,)).fetchall())


def assert_every_row_has_one_vector(corpus: Corpus) -> None:
    """Nothing lost, nothing duplicated, the records agree, and no file an interrupted save left behind."""
    for name, table in ((IMAGE_BUNDLE, "images"), (PROMPT_BUNDLE, "prompts")):
        ids = Bundle.open(corpus.indexes / name).ids().tolist()
        assert len(ids) == len(set(ids)), f"{name}: duplicate vectors"
        assert sorted(ids) == table_ids(corpus, table) == recorded(corpus, name), name
        manifest = read_manifest(corpus.indexes / name)
        assert manifest is not None
        assert sorted(p.name for p in (corpus.indexes / name).iterdir()) == [manifest.index_file, MANIFEST]


def assert_for_people(text: str) -> None:
    for raw in RAW_TEXT:
        assert raw not in text, text


def wait_until_ok(client: TestClient, params: dict[str, str], seconds: float = 10) -> Any:
    """The API reloads a changed bundle at most every 2 s: poll until the search answers again."""
    deadline = time.monotonic() + seconds
    while True:
        response = client.get("/api/search", params=params)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def assert_unavailable(response: Any, *names: str) -> None:
    """A 503 in JSON that names the damaged file and the command that repairs it, with a Retry-After."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json") and response.headers["retry-after"]
    detail = response.json()["detail"]
    assert "promptdex index --rebuild" in detail and all(name in detail for name in names), detail
    assert_for_people(detail)


def repair(corpus: Corpus, *damaged: Path) -> None:
    """What a person does, told by the messages: `index status` and `index` name the damaged files (and `index`
    stops before loading any model), `index --rebuild` repairs whatever the folders hold."""
    status = cli(corpus, "index", "status")
    assert status.returncode == 1 and status.stdout.count("DAMAGED") == len(damaged), status.stdout
    assert all(str(file) in status.stdout for file in damaged), status.stdout
    assert_for_people(status.stdout)
    refused = cli(corpus, "index", "--no-progress")
    assert refused.returncode == 1, refused.stderr
    assert str(damaged[0]) in refused.stderr and "promptdex index --rebuild" in refused.stderr, refused.stderr
    assert_for_people(refused.stderr)
    rebuilt = cli(corpus, "index", "--rebuild", "--no-progress")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.count("replaced a damaged bundle") == len(damaged), rebuilt.stdout
    assert cli(corpus, "index", "status").returncode == 0
    assert_every_row_has_one_vector(corpus)


def test_damaged_bundles_answer_503_naming_the_repair_until_rebuilt_under_a_serving_api(indexed: Corpus) -> None:
    """The prompt bundle's manifest is cut short before the API starts; the image bundle's memory-mapped index
    file is cut short while it serves. The searches that need a damaged bundle answer 503, keyword search keeps
    answering, health says which bundle and why; after `index --rebuild` it all answers again, with no restart."""
    manifest = indexed.indexes / PROMPT_BUNDLE / MANIFEST
    manifest.write_bytes(manifest.read_bytes()[:60])
    images = read_manifest(indexed.indexes / IMAGE_BUNDLE)
    assert images is not None
    index_file = indexed.indexes / IMAGE_BUNDLE / images.index_file
    image_id = table_ids(indexed, "images")[0]
    similar = f"/api/images/{image_id}/similar"
    semantic = {"q": "a fox", "mode": "semantic"}
    with app_for(indexed) as client:
        assert_unavailable(client.get("/api/search", params=semantic), str(manifest), "is damaged")
        assert_unavailable(client.get("/api/search", params={"q": "a fox", "mode": "hybrid"}), str(manifest))
        before = client.get(similar)
        assert before.status_code == 200 and before.json()["data"]  # the image bundle is fine yet
        health = client.get("/api/health", headers=indexed.admin).json()
        assert health["status"] == "degraded" and health["bundles"]["images"]["ok"]
        assert not health["bundles"]["prompts"]["ok"] and str(manifest) in health["bundles"]["prompts"]["error"]
        assert client.get("/api/health").json()["bundles"]["prompts"] == {"ok": False, "error": "not available"}

        os.truncate(index_file, index_file.stat().st_size // 2)  # the mapped file loses its second half
        assert_unavailable(client.get(similar), str(index_file), "changed in place")
        keyword = client.get("/api/search", params={"q": "fox", "mode": "keyword"})
        assert keyword.status_code == 200 and keyword.json()["data"]
        health = client.get("/api/health", headers=indexed.admin).json()
        assert not health["bundles"]["images"]["ok"] and str(index_file) in health["bundles"]["images"]["error"]

        repair(indexed, index_file, manifest)
        assert wait_until_ok(client, semantic).status_code == 200
        after = client.get(similar)
        assert after.status_code == 200 and after.json()["data"] == before.json()["data"]  # nothing lost
        assert client.get("/api/health", headers=indexed.admin).json()["status"] == "ok"


_KILL_AT = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import indexer.bundles as bundles
    from promptdex.cli import main

    marker, point, at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    saves = 0
    write_index, write_atomic = bundles._write_index, bundles._write_atomic

    def stop():
        marker.touch()
        time.sleep(600)  # the test kills this process with SIGKILL here

    def index_then_stop(index, handle):
        global saves
        saves += 1
        if point == "index file" and saves == at:
            handle.write(b"half an index")
            handle.flush()
            stop()
        return write_index(index, handle)

    def atomic_then_stop(dest, write):
        if point == "manifest" and saves == at and dest.name == "manifest.json":
            stop()
        return write_atomic(dest, write)

    bundles._write_index, bundles._write_atomic = index_then_stop, atomic_then_stop
    sys.exit(main(["index", "--no-progress"]))
""")


def kill_index_at(corpus: Corpus, point: str, save: int) -> None:
    """Run `promptdex index` and SIGKILL it at `point` of its `save`-th bundle save."""
    marker = corpus.root / "stopped"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _KILL_AT, str(marker), point, str(save)], cwd=corpus.root,
                            env=corpus.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the run never reached the save: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()


def test_index_killed_mid_save_twice_then_the_next_index_completes(imported: Corpus) -> None:
    """Killed while writing a checkpoint's index file, then (the next run) after that file is in place but before
    the manifest naming it is: each time the committed checkpoints stay, and the next `index` sweeps the leftovers
    and ends with every row embedded once. (Killed between the commit and the records: test_indexer_pipeline.)"""
    folder = imported.indexes / IMAGE_BUNDLE
    kill_index_at(imported, "index file", save=2)  # checkpoints hold 4 images: the first is committed
    assert any(p.name.startswith(".index-000002.faiss.") for p in folder.iterdir())  # the partial file
    assert len(recorded(imported, IMAGE_BUNDLE)) == 4

    kill_index_at(imported, "manifest", save=1)  # its first checkpoint: 4 more images, never committed
    assert "index-000002.faiss" in {p.name for p in folder.iterdir()}  # in place, but no manifest names it
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.count == 4 and len(recorded(imported, IMAGE_BUNDLE)) == 4

    resumed = cli(imported, "index", "--json", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    image, prompt = json.loads(resumed.stdout)["bundles"]
    assert (image["recovered"], image["dropped"], image["added"], image["total"]) == (0, 0, N - 4, N)
    assert (prompt["added"], prompt["total"]) == (N, N)
    assert_every_row_has_one_vector(imported)
