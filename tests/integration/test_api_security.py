"""The API as an attacker meets it: roles, tokens, sessions and CSRF, quotas and rate limits, hostile input.

A small real corpus (tiny generated images, real PostgreSQL, real FAISS bundles) behind `create_app`.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from promptdex import accounts
from promptdex.accounts import Role
from promptdex.errors import ConfigError
from promptdex.settings import get_settings
from search_api.app import create_app
from search_api.commands import prepare
from tests.helpers import clean_env, run_cli
from tests.integration.api_corpus import create_database

pytestmark = pytest.mark.integration

BASE = "http://localhost"


@dataclass
class Small:
    data_dir: Path
    database_url: str
    image_ids: list[int]
    tokens: dict[str, str]  # user name -> token


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row)


@pytest.fixture(scope="module")
def small(pg_server_url: str) -> Iterator[Small]:
    with tempfile.TemporaryDirectory(prefix="promptdex-sec-") as tmp:
        root = Path(tmp)
        url = create_database(pg_server_url)
        env = clean_env(PROMPTDEX_DATA_DIR=str(root / "data"), PROMPTDEX_DATABASE_URL=url, PROMPTDEX_MODELS="tiny")
        gen = run_cli("generate", "a red fox in the snow", "--seeds", "1-3", "--size", "64x64", "--steps", "2",
                      "--model", "tiny", "--json", cwd=root, env=env, timeout=600)
        assert gen.returncode == 0, gen.stderr
        idx = run_cli("index", "--no-progress", cwd=root, env=env, timeout=600)
        assert idx.returncode == 0, idx.stderr
        tokens = {}
        with connect(url) as conn:
            for name, role in (("root", Role.ADMIN), ("ann", Role.CREATOR), ("ben", Role.CREATOR),
                               ("val", Role.VIEWER)):
                accounts.add_user(conn, name=name, role=role, password=f"{name}-password")
                tokens[name] = accounts.create_token(conn, name=name)[1]
        yield Small(root / "data", url, [int(i) for i in json.loads(gen.stdout)], tokens)


def settings_for(small: Small, **api: Any) -> Any:
    return get_settings(data_dir=small.data_dir, database_url=small.database_url, models="tiny",
                        api={"rate_burst": 1000, "rate_sustained": 100000, **api})


@pytest.fixture(scope="module")
def client(small: Small) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(small)), base_url=BASE) as test_client:
        yield test_client


def bearer(small: Small, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {small.tokens[name]}"}


def variations(small: Small, count: int = 1) -> dict[str, Any]:
    return {"kind": "variations", "image_id": small.image_ids[0], "count": count}


def clear_jobs(small: Small) -> None:
    with connect(small.database_url) as conn:
        conn.execute("DELETE FROM jobs")


# ---------------------------------------------------------------- roles and credentials


def test_anonymous_callers_read_but_cannot_queue_work(client: TestClient, small: Small) -> None:
    assert client.get("/api/search", params={"q": "fox"}).status_code == 200
    assert client.get(f"/images/{small.image_ids[0]}").status_code == 200
    response = client.post("/api/jobs", json=variations(small))
    assert response.status_code == 401 and "creator" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_viewer_is_told_which_role_is_needed(client: TestClient, small: Small) -> None:
    response = client.post("/api/jobs", json=variations(small), headers=bearer(small, "val"))
    assert response.status_code == 403
    assert response.json()["detail"] == "this needs the creator role or higher (you are viewer)"


@pytest.mark.parametrize("header", [
    "Bearer pdx_this-token-was-never-issued", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer pdx_" + "a" * 300, "pdx_x",
])
def test_unknown_or_malformed_tokens_get_one_401(client: TestClient, header: str) -> None:
    response = client.get("/api/search", headers={"Authorization": header})
    assert response.status_code == 401
    assert "token" in response.json()["detail"].lower() or "sign-in failed" in response.json()["detail"]


def test_revoked_and_expired_tokens_get_the_same_401_as_unknown_ones(client: TestClient, small: Small) -> None:
    with connect(small.database_url) as conn:
        revoked_id, revoked = accounts.create_token(conn, name="ann")
        accounts.revoke_token(conn, token_id=revoked_id)
        expired_id, expired = accounts.create_token(conn, name="ann", expires_days=1)
        conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 minute' WHERE id = %s", (expired_id,))
    answers = {client.get("/api/search", headers={"Authorization": f"Bearer {t}"}).text
               for t in (revoked, expired, "pdx_unknown")}
    assert len(answers) == 1 and "unknown, expired or revoked" in answers.pop()


def test_jobs_are_visible_to_their_owner_and_admins_only_by_unguessable_ids(client: TestClient,
                                                                               small: Small) -> None:
    clear_jobs(small)
    ids = []
    for _ in range(2):
        created = client.post("/api/jobs", json=variations(small), headers=bearer(small, "ann"))
        assert created.status_code == 201, created.text
        ids += created.json()["job_ids"]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]
    assert abs(int(ids[0], 16) - int(ids[1], 16)) > 2**64  # not a counter
    for job_id in ids:
        assert client.get(f"/api/jobs/{job_id}", headers=bearer(small, "ann")).status_code == 200
        assert client.get(f"/api/jobs/{job_id}", headers=bearer(small, "root")).status_code == 200
        assert client.get(f"/api/jobs/{job_id}", headers=bearer(small, "ben")).status_code == 404
        assert client.get(f"/api/jobs/{job_id}").status_code == 404
    mine = client.get("/api/jobs", headers=bearer(small, "ann")).json()
    assert {j["id"] for j in mine["data"]} == set(ids) and mine["count"] == 2
    assert client.get("/api/jobs", headers=bearer(small, "ben")).json() == {"data": [], "count": 0}


def test_private_instance_answers_401_to_anonymous_callers_but_serves_the_page(small: Small) -> None:
    with TestClient(create_app(settings_for(small, anonymous="none")), base_url=BASE) as private:
        for path in ("/api/search", f"/api/images/{small.image_ids[0]}", f"/images/{small.image_ids[0]}",
                     f"/thumbs/{small.image_ids[0]}", "/api/facets", "/api/v1/search", "/api/health"):
            response = private.get(path)
            assert response.status_code == 401, path
            assert "PROMPTDEX_API__ANONYMOUS=none" in response.json()["detail"]
        assert private.get("/").status_code == 200 and private.get("/static/app.js").status_code == 200
        assert private.get("/api/search", headers=bearer(small, "val")).status_code == 200
        assert private.get("/api/auth/me").json()["anonymous"] == "none"


# ---------------------------------------------------------------- browser sessions, CSRF, one-time links


def test_sign_in_sets_a_session_cookie_and_state_changes_need_the_csrf_token(small: Small) -> None:
    with TestClient(create_app(settings_for(small)), base_url="https://localhost") as browser:
        wrong = browser.post("/api/auth/login", json={"name": "ann", "password": "not it"})
        unknown = browser.post("/api/auth/login", json={"name": "nobody", "password": "not it"})
        assert wrong.status_code == unknown.status_code == 401 and wrong.json() == unknown.json()
        response = browser.post("/api/auth/login", json={"name": "ann", "password": "ann-password"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user"] == {"name": "ann", "role": "creator"} and body["via"] == "session"
        cookies = response.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("promptdex_session="))
        assert "HttpOnly" in session and "SameSite=lax" in session and "Secure" in session
        csrf_cookie = next(c for c in cookies if c.startswith("promptdex_csrf="))
        assert "HttpOnly" not in csrf_cookie
        assert browser.get("/api/auth/me").json()["user"]["name"] == "ann"
        clear_jobs(small)
        forged = browser.post("/api/jobs", json=variations(small))
        assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["detail"]
        wrong_token = browser.post("/api/jobs", json=variations(small), headers={"X-CSRF-Token": "guess"})
        assert wrong_token.status_code == 403
        csrf = {"X-CSRF-Token": body["csrf_token"]}
        cross_site = browser.post("/api/jobs", json=variations(small), headers={**csrf, "Origin": "https://evil.test"})
        assert cross_site.status_code == 403 and "Origin" in cross_site.json()["detail"]
        assert browser.post("/api/jobs", json=variations(small), headers=csrf).status_code == 201
        assert browser.post("/api/auth/logout").status_code == 403  # sign-out is CSRF-protected too
        assert browser.post("/api/auth/logout", headers=csrf).status_code == 204
        assert browser.get("/api/auth/me").json()["user"] is None


def test_login_form_posts_from_other_sites_are_not_json_and_are_refused(client: TestClient) -> None:
    response = client.post("/api/auth/login", content='{"name": "ann", "password": "ann-password"}',
                           headers={"Content-Type": "text/plain"})
    assert response.status_code == 422
    assert "set-cookie" not in response.headers


def test_one_time_link_signs_in_once(small: Small) -> None:
    settings = settings_for(small)
    link = prepare(settings, "127.0.0.1", 8000)
    assert link is not None and link.startswith("http://127.0.0.1:8000/auth/link?token=")
    path = link.removeprefix("http://127.0.0.1:8000")
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000", follow_redirects=False) as browser:
        first = browser.get(path)
        assert first.status_code == 303 and first.headers["location"] == "/"
        assert browser.get("/api/auth/me").json()["user"] == {"name": "local-admin", "role": "admin"}
        browser.cookies.clear()
        second = browser.get(path)
        assert second.status_code == 401 and "already used" in second.json()["detail"]
        assert browser.get("/api/auth/me").json()["user"] is None


def test_serve_refuses_public_addresses_it_cannot_protect(small: Small, tmp_path: Path,
                                                          pg_server_url: str) -> None:
    with pytest.raises(ConfigError, match="PROMPTDEX_API__ANONYMOUS=create"):
        prepare(settings_for(small, anonymous="create"), "0.0.0.0", 8000)
    with pytest.raises(ConfigError, match="PROMPTDEX_API__ALLOWED_HOSTS naming images.example.org"):
        prepare(settings_for(small, anonymous="create", allowed_hosts="localhost,images.example.org"),
                "127.0.0.1", 8000)
    assert prepare(settings_for(small, anonymous="create"), "127.0.0.1", 8000)  # loopback only: allowed
    empty = get_settings(data_dir=tmp_path / "data", database_url=create_database(pg_server_url))
    with pytest.raises(ConfigError, match="no admin user.*promptdex user add NAME --role admin"):
        prepare(empty, "0.0.0.0", 8000)
    assert prepare(settings_for(small), "0.0.0.0", 8000) is None  # an admin exists: no link off loopback


# ---------------------------------------------------------------- quotas and rate limits


def test_a_creators_flood_meets_429_naming_the_limit(small: Small) -> None:
    clear_jobs(small)
    settings = settings_for(small, images_queued=5, images_per_hour=1000)
    with TestClient(create_app(settings), base_url=BASE) as api:
        statuses = [api.post("/api/jobs", json=variations(small, 2), headers=bearer(small, "ann")).status_code
                    for _ in range(5)]
        assert statuses == [201, 201, 429, 429, 429]
        over = api.post("/api/jobs", json=variations(small, 2), headers=bearer(small, "ann"))
        assert "images_queued" in over.json()["detail"] and int(over.headers["retry-after"]) > 0
        assert over.headers["ratelimit-limit"] == "5"
        assert api.post("/api/jobs", json=variations(small, 1), headers=bearer(small, "ann")).status_code == 201
        # another creator has a quota of their own
        assert api.post("/api/jobs", json=variations(small, 2), headers=bearer(small, "ben")).status_code == 201
    with connect(small.database_url) as conn:
        row = conn.execute("SELECT sum(images_requested) AS n FROM jobs j JOIN users u ON u.id = j.owner_id "
                           "WHERE u.name = 'ann'").fetchone()
    assert row["n"] == 5  # nothing past the quota was queued


def test_images_per_hour_and_the_global_queue_cap(small: Small) -> None:
    clear_jobs(small)
    with TestClient(create_app(settings_for(small, images_per_hour=3, images_queued=100)), base_url=BASE) as api:
        assert api.post("/api/jobs", json=variations(small, 3), headers=bearer(small, "ann")).status_code == 201
        with connect(small.database_url) as conn:
            conn.execute("UPDATE jobs SET status = 'done'")  # finished work still counts for the hour
        over = api.post("/api/jobs", json=variations(small, 1), headers=bearer(small, "ann"))
        assert over.status_code == 429 and "images_per_hour" in over.json()["detail"]
        assert 3000 < int(over.headers["retry-after"]) <= 3601
    clear_jobs(small)
    with TestClient(create_app(settings_for(small, queue_cap=4)), base_url=BASE) as api:
        assert api.post("/api/jobs", json=variations(small, 3), headers=bearer(small, "ann")).status_code == 201
        full = api.post("/api/jobs", json=variations(small, 2), headers=bearer(small, "root"))
        assert full.status_code == 429 and "queue_cap" in full.json()["detail"]  # admins too


def test_read_rate_limit_gives_429_with_retry_after_and_ratelimit_headers(small: Small) -> None:
    settings = get_settings(data_dir=small.data_dir, database_url=small.database_url, models="tiny",
                            api={"rate_burst": 5, "rate_sustained": 1000})
    with TestClient(create_app(settings), base_url=BASE) as api:
        answers = [api.get("/api/suggest", params={"q": "fo"}) for _ in range(8)]
        assert [a.status_code for a in answers[:5]] == [200] * 5 and answers[-1].status_code == 429
        ok = answers[0]
        assert ok.headers["ratelimit-limit"] == "5" and ok.headers["ratelimit-remaining"] == "4"
        over = answers[-1]
        assert over.headers["retry-after"] == "1" and "rate_burst" in over.json()["detail"]
        # a signed-in caller has a budget of their own
        assert api.get("/api/suggest", params={"q": "fo"}, headers=bearer(small, "val")).status_code == 200


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize("param", ["model", "sampler", "source", "q", "cursor"])
def test_nul_bytes_get_422_naming_the_field(client: TestClient, param: str) -> None:
    response = client.get("/api/search", params={param: "a\x00b"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"{param}:") and "NUL" in response.json()["detail"]
    assert response.json()["errors"][0]["loc"] == ["query", param]


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_decompression_bomb_upload_gets_413(client: TestClient) -> None:
    response = client.post("/api/search/image", files={"file": ("bomb.png", _png_declaring(30000, 30000), "image/png")})
    assert response.status_code == 413 and "pixels" in response.json()["detail"]


def test_bodies_are_capped_before_they_are_read(small: Small) -> None:
    settings = settings_for(small, max_json_bytes=1024, max_upload_bytes=10_000)
    with TestClient(create_app(settings), base_url=BASE) as api:
        big_json = api.post("/api/auth/login", content=b"{" + b" " * 5000 + b"}",
                            headers={"Content-Type": "application/json"})
        assert big_json.status_code == 413 and "1024 bytes" in big_json.json()["detail"]
        assert big_json.headers["connection"] == "close"

        def stream() -> Iterator[bytes]:  # no Content-Length: capped while it streams
            for _ in range(100):
                yield b" " * 1000

        chunked = api.post("/api/auth/login", content=stream(), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413
        upload = api.post("/api/search/image", content=b"x" * 200_000,
                          headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert upload.status_code == 413 and "10000 bytes" in upload.json()["detail"]
        lying = api.post("/api/auth/login", content=b"{}", headers={"Content-Type": "application/json",
                                                                    "Content-Length": "many"})
        assert lying.status_code == 400


def _cursor(client: TestClient, **params: Any) -> str:
    body = client.get("/api/search", params={"limit": 1, **params}).json()
    assert body["next_cursor"], body
    return str(body["next_cursor"])


def _reencode(cursor: str, change: dict[str, Any]) -> str:
    body, _, signature = cursor.partition(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(change)
    raw = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{raw}.{signature}"


@pytest.mark.parametrize("tamper", [
    lambda c: _reencode(c, {"o": 1}), lambda c: _reencode(c, {"o": "1"}), lambda c: _reencode(c, {"o": -5}),
    lambda c: _reencode(c, {"m": 10**30}), lambda c: _reencode(c, {"c": "not a date"}),
    lambda c: _reencode(c, {"i": None}), lambda c: c.split(".")[0], lambda c: c + "x", lambda c: "." + c,
    lambda c: c.replace(".", ".AAAA"), lambda c: "e30", lambda c: "!!!." * 3,
])
@pytest.mark.parametrize("q", ["", "fox"])
def test_tampered_cursors_get_422(client: TestClient, tamper: Any, q: str) -> None:
    cursor = tamper(_cursor(client, q=q, mode="keyword"))
    response = client.get("/api/search", params={"q": q, "mode": "keyword", "limit": 1, "cursor": cursor})
    assert response.status_code == 422 and response.json()["detail"].startswith("cursor:")


@pytest.mark.parametrize("body, word", [
    ({"kind": "variations", "image_id": True, "count": 1}, "image_id"),
    ({"kind": "variations", "image_id": 1, "count": "5"}, "count"),
    ({"kind": "variations", "image_id": "1"}, "image_id"),
    ({"kind": "variations", "image_id": 1, "colour": "red"}, "colour"),
    ([1, 2, 3], "body"),
])
def test_request_models_are_strict(client: TestClient, small: Small, body: Any, word: str) -> None:
    response = client.post("/api/jobs", json=body, headers=bearer(small, "ann"))
    assert response.status_code == 422 and word in response.json()["detail"]


def test_a_bug_answers_json_and_closes_the_connection(small: Small) -> None:
    app = create_app(settings_for(small))
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as api:
        app.state.promptdex.engines.keyword_suggest = lambda *a: 1 / 0  # a bug
        response = api.get("/api/suggest", params={"q": "fox"})
    assert response.status_code == 500 and response.headers["connection"] == "close"
    assert response.json() == {"detail": "internal error: the server could not answer this request (it was logged)"}


# ---------------------------------------------------------------- on the wire


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example", "127.0.0.2", ""])
def test_foreign_host_headers_get_400(client: TestClient, host: str) -> None:
    response = client.get("/api/search", headers={"Host": host})
    assert response.status_code == 400 and "PROMPTDEX_API__ALLOWED_HOSTS" in response.json()["detail"]


def test_allowed_hosts_setting(small: Small) -> None:
    with TestClient(create_app(settings_for(small, allowed_hosts="search.example.org,*.example.net")),
                    base_url="http://search.example.org") as api:
        assert api.get("/api/auth/me").status_code == 200
        assert api.get("/api/auth/me", headers={"Host": "img.example.net"}).status_code == 200
        assert api.get("/api/auth/me", headers={"Host": "localhost"}).status_code == 400


def test_security_headers_and_no_cors_by_default(client: TestClient) -> None:
    for path in ("/", "/api/search", "/static/app.js"):
        response = client.get(path, headers={"Origin": "https://elsewhere.example"})
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY" and response.headers["referrer-policy"]
        assert "access-control-allow-origin" not in response.headers


def test_cors_when_origins_are_configured(small: Small) -> None:
    with TestClient(create_app(settings_for(small, cors_origins="https://app.example")), base_url=BASE) as api:
        allowed = api.get("/api/search", headers={"Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = api.get("/api/search", headers={"Origin": "https://other.example"})
        assert "access-control-allow-origin" not in other.headers


def test_static_route_serves_only_the_pages_assets(client: TestClient) -> None:
    assert client.get("/static/app.js").status_code == 200
    for path in ("/static/__init__.py", "/static/../search_api/app.py", "/static/%2e%2e/pyproject.toml",
                 "/static/index.html.bak", "/static/"):
        assert client.get(path).status_code == 404, path


def test_health_shows_paths_to_admins_only(client: TestClient, small: Small) -> None:
    anonymous = client.get("/api/health")
    assert anonymous.status_code == 200
    assert str(small.data_dir) not in anonymous.text and "location" not in anonymous.json()["database"]
    admin = client.get("/api/health", headers=bearer(small, "root")).json()
    assert "location" in admin["database"]


def test_openapi_declares_security_errors_and_media_types(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyCookie"}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            declared = set(op["responses"])
            assert {"400", "401", "403", "413", "422", "429", "503"} <= declared, (method, path)
            assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    for path in ("/images/{image_id}", "/thumbs/{image_id}"):
        content = doc["paths"][path]["get"]["responses"]["200"]["content"]
        assert set(content) <= {"image/png", "image/jpeg", "image/webp", "image/gif"} and "image/webp" in content
    assert {} in doc["paths"]["/api/search"]["get"]["security"]  # anonymous reads are allowed
    assert {} not in doc["paths"]["/api/jobs"]["post"]["security"]


def test_anonymous_create_lets_a_loopback_caller_queue_and_follow_a_job(small: Small) -> None:
    clear_jobs(small)
    with TestClient(create_app(settings_for(small, anonymous="create")), base_url=BASE) as api:
        created = api.post("/api/jobs", json=variations(small))
        assert created.status_code == 201, created.text
        (job_id,) = created.json()["job_ids"]
        assert api.get(f"/api/jobs/{job_id}").json()["status"] == "queued"
        assert {} in api.get("/openapi.json").json()["paths"]["/api/jobs"]["post"]["security"]


def test_files_are_not_counted_against_the_request_rate(small: Small) -> None:
    """A page loads dozens of thumbnails at once: they never meet the read rate limit."""
    settings = get_settings(data_dir=small.data_dir, database_url=small.database_url, models="tiny",
                            api={"rate_burst": 3, "rate_sustained": 1000})
    with TestClient(create_app(settings), base_url=BASE) as api:
        statuses = {api.get(f"/thumbs/{small.image_ids[i % 3]}").status_code for i in range(20)}
        assert statuses == {200}


def test_shared_caches_keep_only_files_anyone_may_read(client: TestClient, small: Small) -> None:
    image_id = small.image_ids[0]
    assert client.get(f"/images/{image_id}").headers["cache-control"].startswith("public")
    signed_in = client.get(f"/images/{image_id}", headers=bearer(small, "val"))
    assert signed_in.headers["cache-control"].startswith("private")
    with TestClient(create_app(settings_for(small, anonymous="none")), base_url=BASE) as private:
        answer = private.get(f"/thumbs/{image_id}", headers=bearer(small, "val"))
        assert answer.status_code == 200 and answer.headers["cache-control"].startswith("private")
