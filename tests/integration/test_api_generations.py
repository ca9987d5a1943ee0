"""Generation as a service: POST /api/generations, models and profiles, jobs with progress, events and cancel.

A real PostgreSQL, the real app, and a real `promptdex worker` loop (in a thread) running the tiny model.
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from promptdex import accounts
from promptdex.settings import get_settings
from search_api.app import create_app
from tests.integration.api_corpus import create_database

pytestmark = pytest.mark.integration
BASE = "http://localhost"
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def env(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from generator.tiny import ensure_tiny_model

    models = tmp_path_factory.getbasetemp() / "generator-models"
    ensure_tiny_model(models)
    with tempfile.TemporaryDirectory(prefix="promptdex-gen-") as tmp:
        url = create_database(pg_server_url)
        settings = get_settings(data_dir=Path(tmp) / "data", database_url=url, models="tiny", models_dir=models,
                                api={"rate_burst": 10_000, "rate_sustained": 100_000, "images_queued": 12,
                                     "images_per_hour": 1000})
        with TestClient(create_app(settings), base_url=BASE) as client:
            yield {"settings": settings, "client": client, "url": url}


def user(env: dict[str, Any], role: accounts.Role) -> dict[str, str]:
    """Bearer headers of a new user with `role` (each test its own, so quotas and queues do not mix)."""
    with psycopg.connect(env["url"], autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        name = f"{role.value}-{uuid.uuid4().hex[:6]}"
        accounts.add_user(conn, name=name, role=role, password="a-long-password")
        _, token = accounts.create_token(conn, name=name)
    return {"Authorization": f"Bearer {token}"}


def jobs_of(env: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    response = env["client"].get("/api/jobs", params={"mine": 1}, headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def create(env: dict[str, Any], headers: dict[str, str], **body: Any) -> Any:
    return env["client"].post("/api/generations", json={"prompt": "a lighthouse", **body}, headers=headers)


def test_models_list_the_tiny_model_with_its_profile(env: dict[str, Any]) -> None:
    body = env["client"].get("/api/models").json()
    [tiny] = body["data"]
    assert tiny["name"] == "tiny" and tiny["default"] and tiny["family"] == "tiny"
    assert (tiny["profile"]["width"], tiny["profile"]["steps"]) == (128, 8)
    assert "Euler a" in body["samplers"] and "Karras" in body["schedules"] and body["limits"]["max_size"] == 4096


def test_a_creator_queues_with_profile_defaults_and_recorded_seeds(env: dict[str, Any]) -> None:
    maker = user(env, accounts.Role.CREATOR)
    response = create(env, maker)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "queued" and body["model"] == "tiny" and body["count"] == 1
    assert len(body["seeds"]) == 1 and body["warnings"] == [] and body["queue_position"] >= 1
    request = body["request"]
    assert (request["width"], request["height"], request["steps"], request["cfg"], request["sampler"]) == (
        128, 128, 8, 7.0, "Euler a")  # the tiny profile's defaults, filled in before queuing
    job = env["client"].get(f"/api/jobs/{body['id']}", headers=maker).json()
    assert job["status"] == "queued" and job["kind"] == "generate" and job["payload"]["seeds"] == body["seeds"]
    again = create(env, maker, seed=42, count=3, steps=60)
    assert again.status_code == 201 and again.json()["seeds"] == [42, 43, 44]
    assert any(w.startswith("steps: 60 is outside") for w in again.json()["warnings"])  # allowed, with a warning


@pytest.mark.parametrize("change, field", [
    ({"width": 100}, "width"), ({"height": 8}, "height"), ({"steps": 0}, "steps"), ({"cfg": -1}, "cfg"),
    ({"strength": 0.5}, "strength"), ({"sampler": "Euler b"}, "sampler"), ({"schedule": "Wobbly"}, "schedule"),
    ({"model": "stabilityai/sdxl-turbo"}, "model"), ({"prompt": "x" * 4001}, "prompt"),
    ({"negative_prompt": "castle " * 80}, "negative_prompt"), ({"steps": "20"}, "steps"), ({"stepz": 3}, "stepz"),
    ({"seed": 1, "seeds": [2]}, "seed"), ({"count": 0}, "count"), ({"clip_skip": 40}, "clip_skip"),
    ({"prompt": "a\x00b"}, "prompt"),
])
def test_each_bad_field_is_named_and_nothing_is_queued(env: dict[str, Any], change: dict[str, Any],
                                                         field: str) -> None:
    maker = user(env, accounts.Role.CREATOR)
    response = create(env, maker, **change)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert ["body", field] in [e["loc"] for e in errors], errors
    assert field in response.json()["detail"]
    assert jobs_of(env, maker) == []


def test_roles_and_quotas(env: dict[str, Any]) -> None:
    assert create(env, {}).status_code == 401  # anonymous: read only by default
    viewer = create(env, user(env, accounts.Role.VIEWER))
    assert viewer.status_code == 403 and "creator" in viewer.json()["detail"]
    maker = user(env, accounts.Role.CREATOR)
    assert create(env, maker, count=12, **SMALL).status_code == 201
    over = create(env, maker, **SMALL)
    assert over.status_code == 429 and "images_queued" in over.json()["detail"] and over.headers["Retry-After"]
    assert len(jobs_of(env, maker)) == 1


def _png(size: tuple[int, int] = (80, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_image_to_image_by_multipart(env: dict[str, Any]) -> None:
    maker = user(env, accounts.Role.CREATOR)
    client = env["client"]
    data = {"prompt": "a red square", "strength": "0.5", "steps": "4"}
    response = client.post("/api/generations", data=data, files={"init_image": ("init.png", _png(), "image/png")},
                           headers=maker)
    assert response.status_code == 201, response.text
    request = response.json()["request"]
    assert len(request["init_image"]) == 64 and request["strength"] == 0.5
    assert request["width"] % 8 == 0 and request["width"] > request["height"]  # the init image's shape
    kept = list((env["settings"].images_path / ".inputs").glob(f"{request['init_image']}.*"))
    assert len(kept) == 1 and kept[0].read_bytes() == _png()
    junk = client.post("/api/generations", data=data, files={"init_image": ("x.png", b"not an image", "image/png")},
                       headers=maker)
    assert junk.status_code == 415 and "init_image" in junk.json()["detail"]
    no_strength = client.post("/api/generations", data={"prompt": "x"}, headers=maker,
                              files={"init_image": ("i.png", _png((64, 64)), "image/png")})
    assert no_strength.status_code == 422 and ["body", "strength"] in [e["loc"] for e in no_strength.json()["errors"]]
    bad_number = client.post("/api/generations", data={"prompt": "x", "steps": "many"}, headers=maker,
                             files={"init_image": ("i.png", _png((64, 64)), "image/png")})
    assert bad_number.status_code == 422 and "steps" in bad_number.json()["detail"]
    text = client.post("/api/generations", content=b"prompt=x", headers={**maker, "Content-Type": "text/plain"})
    assert text.status_code == 415


def test_cancel_a_queued_job_and_fair_queue_positions(env: dict[str, Any]) -> None:
    client = env["client"]
    heavy, light = user(env, accounts.Role.CREATOR), user(env, accounts.Role.CREATOR)
    mine = [create(env, heavy, **SMALL).json()["id"] for _ in range(3)]
    theirs = create(env, light, **SMALL).json()["id"]
    positions = {i: client.get(f"/api/jobs/{i}", headers=heavy).json()["queue_position"] for i in mine}
    other = client.get(f"/api/jobs/{theirs}", headers=light).json()["queue_position"]
    assert other < positions[mine[1]]  # round-robin: the light user's first job goes before heavy's second
    assert client.get(f"/api/jobs/{theirs}", headers=heavy).status_code == 404  # not the caller's job
    assert client.delete(f"/api/jobs/{theirs}", headers=heavy).status_code == 404
    cancelled = client.delete(f"/api/jobs/{mine[0]}", headers=heavy)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.delete(f"/api/jobs/{mine[0]}", headers=heavy)
    assert again.status_code == 409 and "already ended" in again.json()["detail"]
    for job_id in mine[1:] + [theirs]:  # leave the shared queue empty for the worker tests
        owner = light if job_id == theirs else heavy
        assert client.delete(f"/api/jobs/{job_id}", headers=owner).status_code == 200
    for headers in (heavy, light):
        assert all(j["status"] == "cancelled" for j in jobs_of(env, headers))


def _drain(env: dict[str, Any]) -> None:
    with psycopg.connect(env["url"], autocommit=True) as conn:
        conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'queued'")


@pytest.fixture
def worker(env: dict[str, Any]) -> Iterator[threading.Event]:
    from generator.worker import run_worker

    _drain(env)
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(env["settings"],), daemon=True,
                              kwargs={"stop": stop, "device": "cpu", "threads": 2, "name": "api-test-worker",
                                      "poll": 1.0})
    thread.start()
    yield stop
    stop.set()
    thread.join(60)
    assert not thread.is_alive()


def _events(client: TestClient, job_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    seen = []
    with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
    return seen


def test_a_running_job_streams_progress_and_previews_then_its_images(env: dict[str, Any],
                                                                     worker: threading.Event) -> None:
    maker = user(env, accounts.Role.CREATOR)
    created = create(env, maker, prompt="a harbour at dawn", seed=7, count=2, width=64, height=64, steps=150).json()
    events = _events(env["client"], created["id"], maker)
    assert events[-1]["status"] == "done" and len(events[-1]["image_ids"]) == 2
    running = [e for e in events if e["status"] == "running" and e["progress"]]
    assert running, [e["status"] for e in events]
    steps = [e["progress"]["step"] for e in running]
    assert steps == sorted(steps) and all(e["progress"]["steps"] == 150 for e in running)
    assert any((e["preview"] or "").startswith("data:image/") for e in running)
    for image_id in events[-1]["image_ids"]:  # searchable at once: the image record is there
        detail = env["client"].get(f"/api/images/{image_id}")
        assert detail.status_code == 200 and detail.json()["prompt"] == "a harbour at dawn"
        thumb = env["client"].get(f"/thumbs/{image_id}")  # made on first request, before `promptdex index` runs
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"


def test_cancelling_a_running_job_stops_it_at_a_step_and_writes_nothing(env: dict[str, Any],
                                                                        worker: threading.Event) -> None:
    maker = user(env, accounts.Role.CREATOR)
    client = env["client"]
    job_id = create(env, maker, prompt="a slow job", width=64, height=64, steps=400).json()["id"]
    deadline = time.monotonic() + 60
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}", headers=maker).json()
        if job["progress"] and job["progress"]["step"] >= 2:
            break
        time.sleep(0.05)
    assert job["status"] == "running" and job["eta_seconds"] is None or job["eta_seconds"] >= 0
    response = client.delete(f"/api/jobs/{job_id}", headers=maker)
    assert response.status_code == 200 and response.json()["cancel_requested"]
    while time.monotonic() < deadline and job["status"] == "running":
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job_id}", headers=maker).json()
    assert job["status"] == "cancelled" and job["image_ids"] == []
    with psycopg.connect(env["url"]) as conn:
        row = conn.execute("SELECT progress FROM jobs WHERE public_id = %s", (job_id,)).fetchone()
        made = conn.execute("SELECT count(*) FROM images WHERE params->>'prompt' = 'a slow job'").fetchone()
    assert row is not None and row[0]["step"] < 400 and made == (0,)


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds almost nothing (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


def test_an_init_image_over_the_pixel_limit_is_413_and_nothing_is_kept(env: dict[str, Any]) -> None:
    maker = user(env, accounts.Role.CREATOR)
    inputs = env["settings"].images_path / ".inputs"
    before = sorted(inputs.glob("*")) if inputs.is_dir() else []
    response = env["client"].post("/api/generations", data={"prompt": "x", "strength": "0.5"}, headers=maker,
                                  files={"init_image": ("bomb.png", _huge_png_header(20_000, 20_000), "image/png")})
    assert response.status_code == 413 and "init_image" in response.json()["detail"], response.text
    assert (sorted(inputs.glob("*")) if inputs.is_dir() else []) == before and jobs_of(env, maker) == []
