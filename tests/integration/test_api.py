"""The search API against a real corpus: real PostgreSQL, real FAISS bundles, tiny real models."""

from __future__ import annotations

import concurrent.futures
import io
import json
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from promptdex.params import parse_a1111
from promptdex.settings import get_settings
from search_api.app import create_app
from tests.helpers import run_cli
from tests.integration.api_corpus import Corpus, build_corpus

pytestmark = pytest.mark.integration

BASE = "http://localhost"  # a Host name the API answers by default
ITEM_KEYS = {"id", "url", "thumb_url", "prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "scheduler",
             "model", "model_hash", "width", "height", "source", "created_at", "score", "nsfw"}


@pytest.fixture(scope="module")
def corpus(pg_server_url: str, metadata_fixtures: Path) -> Iterator[Corpus]:
    with tempfile.TemporaryDirectory(prefix="promptdex-api-") as tmp:
        yield build_corpus(Path(tmp), pg_server_url, metadata_fixtures / "sd-metadata")


def settings_for(corpus: Corpus, **overrides: Any) -> Any:
    """Test settings; read rates are high: these tests are not about rate limits (test_api_security is)."""
    api = {"rate_burst": 10_000, "rate_sustained": 100_000, **overrides.pop("api", {})}
    return get_settings(data_dir=corpus.data_dir, database_url=corpus.database_url, models="tiny", api=api,
                        **overrides)


@pytest.fixture(scope="module")
def client(corpus: Corpus) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(corpus)), base_url=BASE) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def creator(corpus: Corpus) -> dict[str, str]:
    """Authorization headers of a creator (queuing jobs needs that role)."""
    import psycopg

    from promptdex import accounts

    with psycopg.connect(corpus.database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        accounts.add_user(conn, name="maker", role=accounts.Role.CREATOR, password="maker-password")
        _, token = accounts.create_token(conn, name="maker")
    return {"Authorization": f"Bearer {token}"}


def search(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/api/search", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_hybrid_search_returns_items_with_every_field(client: TestClient) -> None:
    body = search(client, q="hatsune miku")
    assert body["data"] and body["took_ms"] >= 0
    for item in body["data"]:
        assert set(item) == ITEM_KEYS
        assert item["url"] == f"/images/{item['id']}" and item["thumb_url"] == f"/thumbs/{item['id']}"
    scores = [i["score"] for i in body["data"]]
    assert scores == sorted(scores, reverse=True)


def test_keyword_search_ranks_prompts_with_the_words_first(client: TestClient) -> None:
    body = search(client, q="lighthouse stormy", mode="keyword")
    assert body["data"], "the generated lighthouse image must be found"
    assert "lighthouse" in body["data"][0]["prompt"].lower()
    assert all("lighthouse" in i["prompt"].lower() or "stormy" in i["prompt"].lower() for i in body["data"])


def test_semantic_search_returns_results(client: TestClient) -> None:
    body = search(client, q="a fox in the snow", mode="semantic", limit=5)
    assert 0 < len(body["data"]) <= 5


def test_empty_query_browses_newest_first_and_pages_cover_everything_once(client: TestClient) -> None:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = search(client, **params)
        seen.extend(body["data"])
        cursor = body["next_cursor"]
        if not cursor:
            break
    ids = [i["id"] for i in seen]
    assert len(ids) == len(set(ids)) == search(client, limit=200)["data"].__len__()
    created = [i["created_at"] for i in seen]
    assert created == sorted(created, reverse=True)


def test_ranked_cursor_is_stable_while_the_corpus_grows(client: TestClient, corpus: Corpus) -> None:
    first = search(client, q="miku", mode="keyword", limit=3)
    assert first["next_cursor"]
    second = search(client, q="miku", mode="keyword", limit=3, cursor=first["next_cursor"])
    gen = run_cli("generate", "a new red fox image added later", "--size", "64x64", "--steps", "2", "--model",
                  "tiny", cwd=corpus.data_dir.parent, env=corpus.env, timeout=600)
    assert gen.returncode == 0, gen.stderr
    again = search(client, q="miku", mode="keyword", limit=3, cursor=first["next_cursor"])
    assert [i["id"] for i in again["data"]] == [i["id"] for i in second["data"]]
    assert not {i["id"] for i in first["data"]} & {i["id"] for i in second["data"]}


@pytest.mark.parametrize("params, check", [
    ({"model": "waiIllustriousSDXL_v160"}, lambda i: i["model"] == "waiIllustriousSDXL_v160"),
    ({"sampler": "Euler a"}, lambda i: i["sampler"] == "Euler a"),
    ({"width": 64, "height": 64}, lambda i: (i["width"], i["height"]) == (64, 64)),
    ({"min_steps": 20, "max_steps": 24}, lambda i: i["steps"] is not None and 20 <= i["steps"] <= 24),
    ({"min_cfg": 6.5, "max_cfg": 7.5}, lambda i: i["cfg"] is not None and 6.5 <= i["cfg"] <= 7.5),
    ({"source": "generated"}, lambda i: i["source"] == "generated"),
])
@pytest.mark.parametrize("q", ["", "miku", "red fox"])
def test_filters_apply_before_the_limit(client: TestClient, params: dict[str, Any], check: Any, q: str) -> None:
    unfiltered = search(client, q=q, limit=200)["data"]
    body = search(client, q=q, limit=200, **params)
    assert all(check(i) for i in body["data"])
    if not q:
        assert len(body["data"]) == sum(1 for i in unfiltered if check(i))


def test_seed_filter_finds_the_image(client: TestClient, corpus: Corpus) -> None:
    detail = client.get(f"/api/images/{corpus.generated_ids[0]}").json()
    body = search(client, seed=detail["seed"])
    assert [i["id"] for i in body["data"]] == [detail["id"]]


def test_sorts(client: TestClient) -> None:
    newest = [i["created_at"] for i in search(client, q="miku", sort="newest", limit=50)["data"]]
    assert newest == sorted(newest, reverse=True)
    oldest = [i["created_at"] for i in search(client, q="miku", sort="oldest", limit=50)["data"]]
    assert oldest == sorted(oldest)
    a = [i["id"] for i in search(client, sort="random", random_seed=1, limit=200)["data"]]
    b = [i["id"] for i in search(client, sort="random", random_seed=1, limit=200)["data"]]
    c = [i["id"] for i in search(client, sort="random", random_seed=2, limit=200)["data"]]
    assert a == b and a != c  # the same seed gives the same order, another seed another


def test_image_detail_has_raw_metadata_and_a_reproduce_block(client: TestClient, corpus: Corpus) -> None:
    image_id = corpus.generated_ids[1]
    detail = client.get(f"/api/images/{image_id}").json()
    assert detail["raw_metadata"] and detail["generation"]
    rep = detail["reproduce"]
    parsed = parse_a1111(rep["a1111"])
    assert parsed.prompt == detail["prompt"] and parsed.seed == detail["seed"] and parsed.steps == detail["steps"]
    assert rep["a1111"] == detail["raw_metadata"]["parameters"]  # exactly what the PNG carries
    compile(rep["diffusers"], "snippet.py", "exec")
    assert f"manual_seed({detail['seed']})" in rep["diffusers"]
    argv = shlex.split(rep["command"])
    assert argv[:3] == ["promptdex", "generate", detail["prompt"]] and str(detail["seed"]) in argv
    assert rep["parameters"]["seed"] == detail["seed"]


def test_imported_comfyui_image_detail(client: TestClient) -> None:
    body = search(client, source="comfyui", limit=5)
    assert body["data"], "the ComfyUI fixtures were imported"
    detail = client.get(f"/api/images/{body['data'][0]['id']}").json()
    raw = json.dumps(detail["raw_metadata"])
    assert "class_type" in raw or "inputs" in raw  # the ComfyUI graph, kept as found
    assert detail["reproduce"]["a1111"]


def test_near_duplicates_are_collapsed(client: TestClient) -> None:
    """The fixtures hold the same pictures as PNG, JPEG and WebP: one of each picture is shown."""
    everything = search(client, limit=200)["data"]
    ranked = search(client, q="hatsune miku", mode="keyword", limit=200)["data"]
    assert len(ranked) < sum(1 for i in everything if "miku" in i["prompt"].lower())
    seen: set[tuple[str, int | None]] = set()
    for item in ranked:
        key = (item["prompt"].strip(), item["seed"])
        assert key not in seen, f"{key} shown twice"
        seen.add(key)


def test_similar_excludes_the_image_itself(client: TestClient, corpus: Corpus) -> None:
    image_id = corpus.generated_ids[0]
    body = client.get(f"/api/images/{image_id}/similar", params={"k": 5}).json()
    ids = [i["id"] for i in body["data"]]
    assert 0 < len(ids) <= 5 and image_id not in ids
    scores = [i["score"] for i in body["data"]]
    assert scores == sorted(scores, reverse=True)


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def test_upload_search_returns_nearest_images(client: TestClient, corpus: Corpus) -> None:
    some_file = next((corpus.data_dir / "images").rglob("*.png"))
    response = client.post("/api/search/image", files={"file": ("x.png", some_file.read_bytes(), "image/png")},
                           data={"k": "4"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 < len(body["data"]) <= 4
    scores = [item["score"] for item in body["data"]]
    # The tiny random CLIP maps every picture to nearly the same direction, so which image comes first among
    # near-equals is not meaningful here; what is: the upload was embedded and matched by cosine, best first.
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.95, body["data"]


def test_suggest_completes_prefixes_and_typos(client: TestClient) -> None:
    words = [s["text"] for s in client.get("/api/suggest", params={"q": "lightho"}).json()["data"]]
    assert any(w.startswith("lighthouse") for w in words)
    assert client.get("/api/suggest", params={"q": ""}).json() == {"data": []}


def test_lexica_compatible_shape(client: TestClient) -> None:
    body = client.get("/api/v1/search", params={"q": "miku"}).json()
    assert set(body) == {"images"} and 0 < len(body["images"]) <= 50
    keys = {"id", "gallery", "src", "srcSmall", "prompt", "width", "height", "seed", "grid", "model", "guidance",
            "promptid", "nsfw"}
    for image in body["images"]:
        assert set(image) == keys
        assert isinstance(image["seed"], str) and isinstance(image["guidance"], float)
        assert image["src"].endswith(f"/images/{image['id']}")


def test_files_have_types_etags_and_cache_headers(client: TestClient, corpus: Corpus) -> None:
    image_id = corpus.generated_ids[0]
    response = client.get(f"/images/{image_id}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert "max-age" in response.headers["cache-control"]
    etag = response.headers["etag"]
    detail = client.get(f"/api/images/{image_id}").json()
    assert etag.strip('"') == detail["sha256"]
    assert client.get(f"/images/{image_id}", headers={"If-None-Match": etag}).status_code == 304
    thumb = client.get(f"/thumbs/{image_id}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(thumb.content)).format == "WEBP"


def test_jobs_are_queued_and_a_worker_runs_them(client: TestClient, corpus: Corpus,
                                                 creator: dict[str, str]) -> None:
    image_id = corpus.generated_ids[2]
    created = client.post("/api/jobs", json={"kind": "variations", "image_id": image_id, "count": 2},
                          headers=creator)
    assert created.status_code == 201, created.text
    (job_id,) = created.json()["job_ids"]
    assert client.get(f"/api/jobs/{job_id}", headers=creator).json()["status"] == "queued"
    worker = run_cli("worker", "--once", cwd=corpus.data_dir.parent, env=corpus.env, timeout=600)
    assert worker.returncode == 0, worker.stderr
    job = client.get(f"/api/jobs/{job_id}", headers=creator).json()
    assert job["status"] == "done" and len(job["image_ids"]) == 2
    original = client.get(f"/api/images/{image_id}").json()
    for new_id in job["image_ids"]:
        new = client.get(f"/api/images/{new_id}").json()
        assert new["prompt"] == original["prompt"] and new["seed"] != original["seed"]


BAD_REQUESTS = [
    ("get", "/api/search", {"limit": 500}, 422, "limit"),
    ("get", "/api/search", {"mode": "fuzzy"}, 422, "mode"),
    ("get", "/api/search", {"sort": "best"}, 422, "sort"),
    ("get", "/api/search", {"min_steps": -1}, 422, "min_steps"),
    ("get", "/api/search", {"since": "yesterday"}, 422, "since"),
    ("get", "/api/search", {"q": "x", "cursor": "garbage!"}, 422, "cursor"),
    ("get", "/api/images/999999", {}, 404, "999999"),
    ("get", "/api/images/abc", {}, 422, "image_id"),
    ("get", "/api/images/999999/similar", {}, 404, "999999"),
    ("get", "/api/jobs/0123456789abcdef0123456789abcdef", {}, 404, "0123456789abcdef"),
    ("get", "/images/999999", {}, 404, "999999"),
    ("get", "/thumbs/999999", {}, 404, "999999"),
]


@pytest.mark.parametrize("method, path, params, status, word", BAD_REQUESTS)
def test_bad_input_matrix(client: TestClient, method: str, path: str, params: dict[str, Any], status: int,
                          word: str) -> None:
    response = client.request(method, path, params=params)
    assert response.status_code == status, response.text
    assert word in response.json()["detail"]


def test_cursor_of_another_query_is_refused(client: TestClient) -> None:
    cursor = search(client, q="miku", mode="keyword", limit=2)["next_cursor"]
    response = client.get("/api/search", params={"q": "other", "mode": "keyword", "cursor": cursor})
    assert response.status_code == 422 and "cursor" in response.json()["detail"]


def test_bad_jobs(client: TestClient, creator: dict[str, str]) -> None:
    assert client.post("/api/jobs", json={"kind": "reproduce", "image_id": 999999}, headers=creator).status_code == 404
    response = client.post("/api/jobs", json={"kind": "explode", "image_id": 1}, headers=creator)
    assert response.status_code == 422 and "kind" in response.json()["detail"]


def test_upload_limits(corpus: Corpus, client: TestClient) -> None:
    not_image = client.post("/api/search/image", files={"file": ("a.txt", b"hello there", "text/plain")})
    assert not_image.status_code == 415 and "not an image" in not_image.json()["detail"]
    empty = client.post("/api/search/image", files={"file": ("a.png", b"", "image/png")})
    assert empty.status_code == 415
    with TestClient(create_app(settings_for(corpus, api={"max_upload_bytes": 1000, "max_upload_pixels": 100})),
                    base_url=BASE) as small:
        big = small.post("/api/search/image", files={"file": ("a.png", png_bytes(size=(600, 600)), "image/png")})
        assert big.status_code == 413 and "1000 bytes" in big.json()["detail"]
        many = small.post("/api/search/image", files={"file": ("a.png", png_bytes(size=(20, 20)), "image/png")})
        assert many.status_code == 413 and "pixels" in many.json()["detail"]


def test_missing_index_is_503_naming_the_command(corpus: Corpus, tmp_path: Path) -> None:
    settings = settings_for(corpus, indexes_dir=tmp_path / "no-indexes")
    with TestClient(create_app(settings), base_url=BASE) as fresh:
        response = fresh.get("/api/search", params={"q": "fox", "mode": "semantic"})
        assert response.status_code == 503 and "promptdex index" in response.json()["detail"]
        health = fresh.get("/api/health").json()
        assert health["status"] == "degraded" and not health["bundles"]["images"]["ok"]


def test_health_and_docs(client: TestClient) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["database"]["ok"] and health["models"]["tiny"] is True
    assert health["bundles"]["images"]["count"] > 0
    assert client.get("/docs").status_code == 200
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_bundle_swap_under_fifty_parallel_requests(client: TestClient, corpus: Corpus) -> None:
    """A bundle rewritten by `promptdex index --rebuild` is picked up without a restart or one failed request."""
    import subprocess
    import sys

    before = client.get("/api/health").json()["bundles"]["images"]["generation"]
    rebuild = subprocess.Popen([sys.executable, "-m", "promptdex", "index", "--rebuild", "--no-progress"],
                               cwd=corpus.data_dir.parent, env=corpus.env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    queries = ["miku", "red fox", "lighthouse", "city rain", "cabin", "ramen", "astronaut", ""]

    def one(i: int) -> int:
        q = queries[i % len(queries)]
        return client.get("/api/search", params={"q": q, "mode": "semantic" if i % 2 else "hybrid"}).status_code

    statuses: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        while rebuild.poll() is None:
            statuses += list(pool.map(one, range(50)))
        statuses += list(pool.map(one, range(50)))
    assert rebuild.returncode == 0, rebuild.stderr.read() if rebuild.stderr else ""
    assert len(statuses) >= 100 and set(statuses) == {200}
    import time

    time.sleep(2.5)  # bundles are checked for a new manifest at most every 2 s
    after = client.get("/api/health").json()["bundles"]["images"]["generation"]
    assert after > before


def test_repeated_queries_come_from_the_vector_cache_on_the_default_runtime(client: TestClient) -> None:
    """The default runtime on a CPU is ONNX Runtime; a query differing only in case and spaces reuses the vectors."""
    models = client.get("/api/health").json()["models"]
    assert models["runtime"] == {"clip": "onnx", "prompt": "onnx"}
    before = models["query_cache"]
    first = client.get("/api/search", params={"q": "Lonely  LIGHTHOUSE at dusk", "mode": "hybrid"})
    second = client.get("/api/search", params={"q": "lonely lighthouse at dusk", "mode": "hybrid"})
    assert first.status_code == second.status_code == 200
    assert [i["id"] for i in first.json()["data"]] == [i["id"] for i in second.json()["data"]]
    after = client.get("/api/health").json()["models"]
    cache = after["query_cache"]
    assert cache["misses"] - before["misses"] == 2  # CLIP text and prompt vectors of the first query
    assert cache["hits"] - before["hits"] == 2  # both reused by the second
    assert 0 < cache["hit_rate"] <= 1 and cache["entries"] >= 2
    assert after["query_batches"]["clip"]["queries"] >= 1
