"""Safe mode end to end: an injected image classifier and the word list flag chosen images; every search endpoint
filters before its limit, Lexica's `nsfw` is real, detail and files hide what a role may never see, generation
refuses listed prompts below admin, and rescore re-scores after a word-list change without decoding again."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from psycopg.rows import dict_row

from indexer.embedders import load_embedders
from indexer.importer import import_paths
from indexer.indexing import run_index
from indexer.keyword import PostgresKeywordIndex
from indexer.safety import get_scorer
from indexer.safety.rescore import rescore
from promptdex import accounts
from promptdex.db import open_database
from promptdex.settings import get_settings
from search_api.app import create_app
from tests.integration.api_corpus import create_database
from tests.safety_classifier import CYAN, MAGENTA, paint

pytestmark = pytest.mark.integration

BASE = "http://localhost"
CLASSIFIERS = "words,tests.safety_classifier:marker"
WORDS = "zorblat = 0.95\nquibbly = 0.6\n"


@dataclass
class Site:
    root: Path
    settings: Any
    url: str
    ids: dict[str, list[int]]  # clean, suggestive (0.7), explicit (0.97), worded (prompt 0.6)
    log: Path
    tokens: dict[str, str]


def write_png(path: Path, number: int, prompt: str, marker: tuple[int, int, int] | None, *, model: str,
              mtime: float) -> None:
    rng = np.random.default_rng(number)
    pixels = paint(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8), marker, number)
    info = PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {number}, Size: 64x64, "
                                f"Model: {model}")
    Image.fromarray(pixels).save(path, pnginfo=info)
    os.utime(path, (mtime, mtime))


GROUPS = {  # name: (how many, marker, prompt, model); the flagged ones are the newest, so a limit without the
    "clean": (12, None, "a quiet harbour at dawn, photo", "calm-model"),  # filter first would show only them
    "suggestive": (5, CYAN, "a quiet harbour at dawn, photo", "calm-model"),
    "explicit": (5, MAGENTA, "a quiet harbour at dawn, photo", "explicit-model"),
    "worded": (3, None, "a quiet harbour with a quibbly, photo", "calm-model"),
}


def settings_for(root: Path, url: str, **overrides: Any) -> Any:
    api = {"rate_burst": 10_000, "rate_sustained": 100_000}
    return get_settings(data_dir=root / "data", database_url=url, models="tiny", api=api,
                        safety={"classifiers": CLASSIFIERS, "words_file": root / "words.txt", **overrides})


def ids_by_number(conn: Any) -> dict[int, int]:
    rows = conn.execute("SELECT id, seed FROM images").fetchall()
    return {int(r["seed"]): int(r["id"]) for r in rows}


@pytest.fixture(scope="module")
def site(pg_server_url: str) -> Iterator[Site]:
    with tempfile.TemporaryDirectory(prefix="promptdex-safety-") as tmp:
        root = Path(tmp)
        log = root / "classifier.log"
        old = {k: os.environ.get(k) for k in ("PROMPTDEX_TEST_SAFETY_LOG",)}
        os.environ["PROMPTDEX_TEST_SAFETY_LOG"] = str(log)
        (root / "words.txt").write_text(WORDS)
        folder = root / "corpus"
        folder.mkdir()
        number, numbers = 0, {}
        for name, (count, marker, prompt, model) in GROUPS.items():
            numbers[name] = []
            for j in range(count):
                number += 1
                mtime = 1_700_000_000 + (number if name == "clean" else 10_000 + number)
                write_png(folder / f"{name}-{j}.png", number, f"{prompt} {number}", marker, model=model, mtime=mtime)
                numbers[name].append(number)
        url = create_database(pg_server_url)
        settings = settings_for(root, url)
        db = open_database(settings)
        with db.connect(autocommit=True) as conn:
            assert import_paths(conn, settings, [folder], progress=False).imported == 25
            run_index(conn, settings, lambda: load_embedders(settings), PostgresKeywordIndex(
                lambda: db.connect(autocommit=True)), progress=False)
            by_number = ids_by_number(conn)
            tokens = {}
            for role in ("viewer", "admin"):
                accounts.add_user(conn, name=f"s-{role}", role=accounts.Role(role), password=f"{role}-password!")
                tokens[role] = accounts.create_token(conn, name=f"s-{role}", label="t")[1]
        db.close()
        ids = {name: sorted(by_number[n] for n in nums) for name, nums in numbers.items()}
        try:
            yield Site(root, settings, url, ids, log, tokens)
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def client(site: Site) -> Iterator[TestClient]:
    with TestClient(create_app(site.settings), base_url=BASE) as test_client:
        yield test_client


def auth(site: Site, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {site.tokens[role]}"}


def found(client: TestClient, path: str = "/api/search", headers: dict[str, str] | None = None,
          **params: Any) -> list[dict[str, Any]]:
    response = client.get(path, params=params, headers=headers or {})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def all_pages(client: TestClient, **params: Any) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(50):
        body = client.get("/api/search", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        seen += [i["id"] for i in body["data"]]
        cursor = body["next_cursor"]
        if not cursor:
            return seen
    raise AssertionError("paging did not end")


def test_every_image_is_scored_by_each_classifier(site: Site) -> None:
    with psycopg.connect(site.url, row_factory=dict_row) as conn:
        rows = {r["id"]: r for r in conn.execute("SELECT id, nsfw, nsfw_by, nsfw_scores, nsfw_key FROM images")}
    key = get_scorer(site.settings).key
    assert all(r["nsfw_key"] == key and set(r["nsfw_scores"]) == {"words", "marker"} for r in rows.values())
    assert all(rows[i]["nsfw"] == pytest.approx(0.97) for i in site.ids["explicit"])
    assert {rows[i]["nsfw_by"] for i in site.ids["suggestive"]} == {"marker"}
    assert {rows[i]["nsfw_by"] for i in site.ids["worded"]} == {"words"}
    assert all(rows[i]["nsfw"] < 0.5 for i in site.ids["clean"])


@pytest.mark.parametrize("params", [
    {}, {"q": "harbour", "mode": "keyword"}, {"q": "harbour"}, {"q": "quiet harbour dawn", "mode": "semantic"},
    {"q": "harbour", "sort": "newest"}, {"sort": "random", "random_seed": 3}, {"sort": "oldest"},
])
def test_anonymous_searches_show_only_clean_images_and_fill_the_page(client: TestClient, site: Site,
                                                                    params: dict[str, Any]) -> None:
    page = found(client, limit=5, **params)
    assert len(page) == 5, "the filter applies before the limit: a full page of clean images"
    assert {i["id"] for i in page} <= set(site.ids["clean"])
    assert not any(i["nsfw"] for i in page)
    every = all_pages(client, limit=4, **params)
    assert set(every) <= set(site.ids["clean"])
    if params.get("mode") != "semantic" and "q" not in params:
        assert set(every) == set(site.ids["clean"])


def test_moderate_shows_flagged_images_marked_and_still_hides_explicit_ones(client: TestClient, site: Site) -> None:
    items = {i["id"]: i for i in found(client, safe="moderate", limit=200)}
    assert set(items) == set(site.ids["clean"]) | set(site.ids["suggestive"]) | set(site.ids["worded"])
    assert all(items[i]["nsfw"] for i in site.ids["suggestive"] + site.ids["worded"])
    assert not any(items[i]["nsfw"] for i in site.ids["clean"])


def test_off_is_refused_anonymously_and_allowed_for_signed_in_users(client: TestClient, site: Site) -> None:
    refused = client.get("/api/search", params={"safe": "off"})
    assert refused.status_code == 403
    assert "ANONYMOUS_MAX" in refused.json()["detail"] and "strict or moderate" in refused.json()["detail"]
    every = {i["id"] for i in found(client, headers=auth(site, "viewer"), safe="off", limit=200)}
    assert every == {i for ids in site.ids.values() for i in ids}
    viewer_default = {i["id"] for i in found(client, headers=auth(site, "viewer"), limit=200)}
    assert viewer_default == set(site.ids["clean"])  # viewers default to strict
    assert client.get("/api/search", params={"safe": "loose"}).status_code == 422


def test_lexica_nsfw_comes_from_the_scores(client: TestClient, site: Site) -> None:
    strict = client.get("/api/v1/search", params={"q": "harbour"}).json()["images"]
    assert strict and not any(i["nsfw"] for i in strict)
    assert {int(i["id"]) for i in strict} <= set(site.ids["clean"])
    moderate = client.get("/api/v1/search", params={"q": "harbour", "safe": "moderate"}).json()["images"]
    flags = {int(i["id"]): i["nsfw"] for i in moderate}
    assert any(flags.get(i) for i in site.ids["suggestive"])
    assert all(flags[i] for i in site.ids["suggestive"] + site.ids["worded"] if i in flags)
    assert not any(flags[i] for i in site.ids["clean"] if i in flags)
    assert not set(flags) & set(site.ids["explicit"])


def test_similar_and_upload_search_filter_before_k(client: TestClient, site: Site) -> None:
    clean = site.ids["clean"][0]
    near = found(client, f"/api/images/{clean}/similar", k=8)
    assert len(near) == 8 and {i["id"] for i in near} <= set(site.ids["clean"])
    explicit = site.ids["explicit"][0]
    assert client.get(f"/api/images/{explicit}/similar").status_code == 404
    data = client.get(f"/images/{explicit}", headers=auth(site, "admin")).content
    upload = client.post("/api/search/image", files={"file": ("x.png", io.BytesIO(data), "image/png")},
                         data={"k": "6"})
    assert upload.status_code == 200, upload.text
    assert {i["id"] for i in upload.json()["data"]} <= set(site.ids["clean"])
    moderate = client.post("/api/search/image", files={"file": ("x.png", io.BytesIO(data), "image/png")},
                           data={"k": "30", "safe": "moderate"}).json()["data"]
    assert not {i["id"] for i in moderate} & set(site.ids["explicit"])
    assert client.post("/api/search/image", files={"file": ("x.png", io.BytesIO(data), "image/png")},
                       data={"safe": "off"}).status_code == 403


def test_detail_and_files_hide_what_a_role_may_never_see(client: TestClient, site: Site) -> None:
    explicit, suggestive, clean = site.ids["explicit"][0], site.ids["suggestive"][0], site.ids["clean"][0]
    for path in (f"/api/images/{explicit}", f"/images/{explicit}", f"/thumbs/{explicit}"):
        assert client.get(path).status_code == 404, path
        assert client.get(path, headers=auth(site, "viewer")).status_code == 200, path
    hidden = client.get(f"/api/images/{explicit}/workflow")  # as if the image were not there
    assert hidden.status_code == 404 and hidden.json()["detail"] == f"no image with id {explicit}"
    shown = client.get(f"/api/images/{explicit}/workflow", headers=auth(site, "viewer"))
    assert shown.status_code == 404 and "no ComfyUI workflow" in shown.json()["detail"]
    detail = client.get(f"/api/images/{suggestive}").json()  # moderate is allowed: shown, flagged, no scores
    assert detail["nsfw"] is True and detail["safety"] is None
    assert client.get(f"/api/images/{clean}").json()["nsfw"] is False
    admin = client.get(f"/api/images/{explicit}", headers=auth(site, "admin")).json()
    assert admin["safety"]["classifier"] == "marker" and admin["safety"]["score"] == pytest.approx(0.97)
    assert set(admin["safety"]["scores"]) == {"words", "marker"} and admin["safety"]["pending"] is False


def test_facets_and_suggestions_respect_the_level(client: TestClient, site: Site) -> None:
    assert "explicit-model" not in client.get("/api/facets").json()["models"]
    assert "explicit-model" in client.get("/api/facets", params={"safe": "off"}, headers=auth(site, "admin")).json()[
        "models"]
    words = [s["text"] for s in client.get("/api/suggest", params={"q": "quib"}).json()["data"]]
    assert "quibbly" not in words
    admin = client.get("/api/suggest", params={"q": "quib", "safe": "off"}, headers=auth(site, "admin")).json()
    assert "quibbly" in [s["text"] for s in admin["data"]]


def test_me_tells_the_page_its_levels(client: TestClient, site: Site) -> None:
    assert client.get("/api/auth/me").json()["safe"] == {"default": "strict", "levels": ["strict", "moderate"]}
    admin = client.get("/api/auth/me", headers=auth(site, "admin")).json()["safe"]
    assert admin == {"default": "moderate", "levels": ["strict", "moderate", "off"]}


def test_generation_refuses_listed_prompts_below_admin(client: TestClient, site: Site) -> None:
    with psycopg.connect(site.url, autocommit=True, row_factory=dict_row) as conn:
        accounts.add_user(conn, name="s-creator", role=accounts.Role.CREATOR, password="creator-password!")
        token = accounts.create_token(conn, name="s-creator", label="t")[1]
    creator = {"Authorization": f"Bearer {token}"}
    refused = client.post("/api/generations", json={"prompt": "a (ZORBLAT:1.3) by the sea", "model": "tiny"},
                          headers=creator)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["errors"][0]["loc"][-1] == "prompt" and "zorblat" in body["detail"]
    assert site.settings.safety.refusal_message in body["detail"]
    fine = client.post("/api/generations", json={"prompt": "a lighthouse by the sea", "model": "tiny"},
                       headers=creator)
    assert fine.status_code == 201, fine.text
    assert client.post("/api/generations", json={"prompt": "a zorblat", "model": "tiny"},
                       headers=auth(site, "admin")).status_code == 201
    variations = client.post("/api/jobs", json={"kind": "variations", "image_id": site.ids["worded"][0]},
                             headers=creator)
    assert variations.status_code == 422 and "quibbly" in variations.json()["detail"]


def test_an_imported_image_waits_hidden_in_strict_until_index_scores_its_pixels(site: Site) -> None:
    folder = site.root / "later"
    folder.mkdir()
    write_png(folder / "new.png", 200, "a quiet harbour at dusk, photo 200", None, model="calm-model",
              mtime=1_800_000_000)
    settings = settings_for(site.root, site.url)
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn, TestClient(create_app(settings), base_url=BASE) as client:
            import_paths(conn, settings, [folder], progress=False)
            new = ids_by_number(conn)[200]
            assert new not in {i["id"] for i in found(client, limit=200)}
            pending = {i["id"]: i for i in found(client, safe="moderate", limit=200)}
            assert pending[new]["nsfw"] is True  # not scored yet: blurred in moderate mode
            run_index(conn, settings, lambda: load_embedders(settings),
                      PostgresKeywordIndex(lambda: db.connect(autocommit=True)), progress=False)
            assert new in {i["id"] for i in found(client, limit=200)}
    finally:
        db.close()


def test_rescore_after_a_word_list_change_scores_prompts_without_decoding_again(site: Site) -> None:
    (site.root / "words.txt").write_text(WORDS + "dawn = 0.6\n")
    settings = settings_for(site.root, site.url)
    scorer = get_scorer(settings)
    calls_before = len(site.log.read_text().splitlines())
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            total = conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"]
            summary = rescore(conn, settings, scorer, progress=False)
            assert summary.scored == total and not summary.errors
            assert len(site.log.read_text().splitlines()) == calls_before  # the pixels' scores were still current
            assert rescore(conn, settings, scorer, progress=False).scored == 0  # nothing left: a rerun adds nothing
            with TestClient(create_app(settings), base_url=BASE) as client:
                shown = found(client, limit=200)
                assert shown and not any("dawn" in i["prompt"] for i in shown)
                assert not found(client, q="dawn", mode="keyword")
    finally:
        (site.root / "words.txt").write_text(WORDS)
        db.close()
