"""Two `promptdex serve` replicas on one PostgreSQL and one S3 store (moto's standalone server, on 127.0.0.1) behave
as one service: same answers, a bundle published by `promptdex index` reaches both while they serve (no request
fails meanwhile), cursors and sign-ins from one work on the other, and a job queued through one is run by a
separate `promptdex worker` and seen through the other.

Each process plays another machine: its own data dir (images, thumbs, indexes, models, api-secret); they share
only PROMPTDEX_DATABASE_URL, PROMPTDEX_STORAGE_URL and PROMPTDEX_API__SECRET.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.test_web import UNLIMITED_RATES, _cli, _free_port, _wait_ready, add_account, corpus_env
from tests.helpers import moto_s3, stop_process

pytestmark = pytest.mark.e2e

BUCKET = "promptdex-replicas"
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
POLL_SECONDS = 0.5  # how often each replica looks for a newly published bundle
PICKUP_SECONDS = 60  # the bound on a replica serving a newly published generation
PAUSE_SECONDS = 0.05  # between one client thread's searches: steady traffic that leaves CPU to the worker
FIRST = ["a lighthouse on a stormy cliff", "a lighthouse keeper reading by candlelight", "origami crane on a desk",
         "misty pine forest at dawn"]  # 2 images each
LATER = "a zebra crossing a salt flat at noon"  # 2 images, added while the replicas serve


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """The endpoint of a moto S3 server on 127.0.0.1 with one bucket: the storage every "machine" shares."""
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


# ---------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    cookies: list[str]  # the name=value of every Set-Cookie


def _cookies(headers: Any) -> list[str]:
    return [value.split(";")[0] for value in headers.get_all("Set-Cookie") or []]


def request(base: str, method: str, path: str, *, token: str | None = None, params: dict[str, Any] | None = None,
            body: dict[str, Any] | None = None, cookie: str | None = None, raw: bool = False,
            files: dict[str, tuple[str, bytes]] | None = None, timeout: float = 60) -> Reply:
    """One request on a fresh connection: the status, the JSON body (bytes when `raw`) and the cookies set, also
    for errors. Connection errors raise."""
    query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if files:
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
                 for name, (filename, content) in files.items()]
        data, headers["Content-Type"] = b"".join(parts) + f"--{boundary}--\r\n".encode(), \
            f"multipart/form-data; boundary={boundary}"
    if cookie:
        headers["Cookie"] = cookie
    req = urllib.request.Request(f"{base}{path}{'?' + query if query else ''}", method=method, data=data,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            content = response.read()
            return Reply(response.status, content if raw else json.loads(content), _cookies(response.headers))
    except urllib.error.HTTPError as error:
        with error:
            content = error.read()
            try:
                parsed = json.loads(content or b"null")
            except ValueError:
                parsed = content
            return Reply(error.code, parsed, _cookies(error.headers))


@dataclass
class Replica:
    name: str
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, *, token: str, **params: Any) -> Any:
        reply = request(self.base, "GET", path, token=token, params=params)
        assert reply.status == 200, f"{self.name} GET {path} {params}: {reply.status} {reply.body}"
        return reply.body

    def ids(self, token: str, **params: Any) -> list[int]:
        return [item["id"] for item in self.get("/api/search", token=token, **params)["data"]]

    def images(self, token: str) -> dict[str, Any]:
        """What /api/health says about the image bundle this replica serves."""
        return dict(self.get("/api/health", token=token)["bundles"]["images"])


@contextmanager
def process(args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`promptdex ARGS` in a subprocess, output to `log`, ended by its pid (SIGTERM, then SIGKILL) afterwards."""
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "promptdex", *args], cwd=cwd,
                                env={**env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc, timeout=60)


@dataclass
class Traffic:
    """Client threads that search the replicas without pause and count every answer (status, or the error)."""

    replicas: list[Replica]
    token: str
    threads_per_replica: int = 2
    seen: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, replica: Replica, which: int) -> None:
        queries = [{"q": "lighthouse"}, {"q": "a zebra", "mode": "semantic"}, {"q": "pine forest", "mode": "keyword"},
                   {"q": ""}]
        n = which
        while not self._stop.is_set():
            params = {**queries[n % len(queries)], "limit": 5}
            n += 1
            try:
                reply = request(replica.base, "GET", "/api/search", token=self.token, params=params, timeout=30)
                outcome = str(reply.status)
                if reply.status != 200:
                    outcome += f" {reply.body}"
            except OSError as exc:  # refused, reset, timed out: the replica did not answer
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.seen[f"{replica.name} {outcome[:3]}"] += 1
                if not outcome.startswith("200"):
                    self.failures.append(f"{replica.name} {params}: {outcome}")
            self._stop.wait(PAUSE_SECONDS)

    def __enter__(self) -> Traffic:
        for replica in self.replicas:
            for which in range(self.threads_per_replica):
                thread = threading.Thread(target=self._run, args=(replica, which), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _serves(replica: Replica, token: str, generation: int, count: int) -> bool:
    """Health says the replica serves image bundle `generation` (or newer) with `count` vectors."""
    try:
        health = replica.images(token)
    except AssertionError:
        return False
    return int(health.get("generation", 0)) >= generation and health.get("count") == count


def _until(what: str, done: Callable[[], bool], timeout: float = PICKUP_SECONDS) -> float:
    """Wait until `done()`; the seconds it took. Fails the test after `timeout`."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - start


# ---------------------------------------------------------------- the test


def test_two_replicas_on_one_database_and_one_store_act_as_one_service(
        s3: str, pg_server_url: str, tmp_path: Path) -> None:
    shared = {"PROMPTDEX_STORAGE_URL": f"s3://{BUCKET}/replicas", "PROMPTDEX_STORAGE__ENDPOINT_URL": s3,
              "PROMPTDEX_STORAGE__POLL_SECONDS": str(POLL_SECONDS), "PROMPTDEX_API__SECRET": secrets.token_hex(32),
              **UNLIMITED_RATES, **AWS}
    t0 = time.monotonic()

    def mark(label: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - t0:7.1f}] {label}\n")

    with corpus_env(pg_server_url, tmp_path, **shared) as common, ExitStack() as stack:
        database_url = common["PROMPTDEX_DATABASE_URL"]

        def machine(name: str) -> tuple[Path, dict[str, str]]:
            root = tmp_path / name
            root.mkdir()
            return root, {**common, "PROMPTDEX_DATA_DIR": str(root / "data")}

        def start_replica(name: str) -> Replica:
            root, env = machine(name)
            port = _free_port()
            log = root / "serve.log"  # no --workers: a replica runs no jobs
            proc = stack.enter_context(process(["serve", "--port", str(port)], cwd=root, env=env, log=log))
            return Replica(name, f"http://127.0.0.1:{port}", proc, log)

        # replica a and the worker start on an empty database, while the writer makes and publishes the corpus
        a = start_replica("a")
        worker_root, worker_env = machine("worker")
        worker_name = f"replica-test-worker-{uuid.uuid4().hex[:8]}"
        worker = stack.enter_context(process(["worker", "--name", worker_name, "--poll", "1"], cwd=worker_root,
                                             env=worker_env, log=worker_root / "worker.log"))
        writer, writer_env = machine("writer")
        lines = [json.dumps({"prompt": p, "seed": 100 + i, "count": 2, "size": "64x64", "steps": 2})
                 for i, p in enumerate(FIRST)]
        (writer / "prompts.jsonl").write_text("\n".join(lines) + "\n")
        _cli("generate", "--model", "tiny", "--prompts-file", str(writer / "prompts.jsonl"), cwd=writer,
             env=writer_env)
        mark("generated")
        _cli("index", "--no-progress", cwd=writer, env=writer_env)
        mark("indexed")
        maker = add_account(writer, writer_env, "maker", "creator")
        token = maker.token
        _wait_ready(a.base, a.proc, a.log)
        b = start_replica("b")  # after a: it reuses the ONNX exports a made (the suite shares their cache)
        _wait_ready(b.base, b.proc, b.log)
        replicas = [a, b]
        mark("ready")

        # (1) the published corpus: both replicas serve it (a started before it existed) and give the same answers
        count = 2 * len(FIRST)
        _until("both replicas serve the first bundle", lambda: all(_serves(r, token, 1, count) for r in replicas))
        first = [r.images(token) for r in replicas]
        assert first[0]["generation"] == first[1]["generation"], first
        for params in ({"q": "lighthouse"}, {"q": "lighthouse", "mode": "keyword"},
                       {"q": "a forest at dawn", "mode": "semantic"}, {"q": ""}):
            found = a.ids(token, **params, limit=50)
            assert found, f"{params} finds something on replica a"
            assert b.ids(token, **params, limit=50) == found, params
        mark("step1")

        # (2) while clients search both replicas without pause: a job queued through a is run by the worker and
        # seen through b; `promptdex index` publishes a new generation with its image, which both then serve
        with Traffic(replicas, token) as traffic:
            created = request(a.base, "POST", "/api/generations", token=token,
                              body={"prompt": LATER, "seed": 11, "width": 64, "height": 64})
            assert created.status == 201, created.body
            job = _finished(b, token, created.body["id"])
            assert job["status"] == "done", job
            [added] = job["image_ids"]
            mark("job done")
            with psycopg.connect(database_url) as conn:
                row = conn.execute("SELECT worker FROM jobs WHERE public_id = %s", (created.body["id"],)).fetchone()
            assert row is not None and row[0] == worker_name, row  # the worker process, not a replica
            detail = b.get(f"/api/images/{added}", token=token)
            assert (detail["prompt"], detail["seed"]) == (LATER, 11), detail
            picture = request(b.base, "GET", f"/images/{added}", token=token, raw=True)
            assert picture.status == 200 and picture.body[:8] == b"\x89PNG\r\n\x1a\n", picture.status
            for replica in replicas:  # not in the served bundle yet
                status = request(replica.base, "GET", f"/api/images/{added}/similar", token=token).status
                assert status == 404, (replica.name, status)
            _cli("index", "--no-progress", cwd=writer, env=writer_env)
            mark("indexed again")
            wanted = first[0]["generation"] + 1
            took = _until(f"both replicas serve generation {wanted}",
                          lambda: all(_serves(r, token, wanted, count + 1) for r in replicas))
            mark("picked up")
            time.sleep(1)  # and they go on answering on the new generation
        assert traffic.seen, "the client threads made requests"
        assert not traffic.failures, (f"{len(traffic.failures)} failed request(s) of {sum(traffic.seen.values())} "
                                      f"while the bundle changed: {traffic.failures[:5]}")
        assert all(traffic.seen[f"{r.name} 200"] > 5 for r in replicas), traffic.seen
        for replica in replicas:  # the new image: its vector is in both bundles
            assert replica.images(token)["ok"]
            similar = request(replica.base, "GET", f"/api/images/{added}/similar", token=token)
            assert similar.status == 200, (replica.name, similar.body)
            hits = request(replica.base, "POST", "/api/search/image", token=token,
                           files={"file": ("new.png", picture.body)})
            assert hits.status == 200, hits.body
            assert hits.body["data"][0]["id"] == added, (replica.name, hits.body["data"][:3])
        assert a.ids(token, q="zebra", mode="keyword") == b.ids(token, q="zebra", mode="keyword") == [added]

        # (3) a cursor from a is accepted by b and gives the same next page; so is a's sign-in session
        for params in ({"q": "lighthouse"}, {"q": "", "sort": "newest"}, {"q": "lighthouse", "mode": "keyword"}):
            page = a.get("/api/search", token=token, **params, limit=2)
            cursor = page["next_cursor"]
            assert cursor, f"{params}: a first page of 2 has a next page: {page}"
            on_a, on_b = (r.get("/api/search", token=token, **params, limit=2, cursor=cursor) for r in (a, b))
            assert on_b["data"] and on_b["data"] == on_a["data"], params
            assert on_b["next_cursor"] == on_a["next_cursor"], params
            assert not {i["id"] for i in page["data"]} & {i["id"] for i in on_b["data"]}, params
        forged = request(b.base, "GET", "/api/search", token=token, params={"q": "lighthouse", "cursor": "x" * 40})
        assert 400 <= forged.status < 500, forged
        login = request(a.base, "POST", "/api/auth/login", body={"name": maker.name, "password": maker.password})
        assert login.status == 200, login.body
        assert any(c.startswith("promptdex_session=") for c in login.cookies), login.cookies
        me = request(b.base, "GET", "/api/auth/me", cookie="; ".join(login.cookies))
        assert me.status == 200 and me.body["user"] == {"name": "maker", "role": "creator"}, me.body
        assert me.body["via"] == "session"
        assert request(b.base, "GET", "/api/auth/me", token=token).body["via"] == "token"

        assert worker.poll() is None
        for replica in replicas:
            text = replica.log.read_text(errors="replace")
            assert "generation worker" not in text, text[-2000:]
            assert replica.proc.poll() is None, text[-4000:]
        mark(f"done: picked up {took:.1f} s after publishing; {dict(traffic.seen)}")


def _finished(replica: Replica, token: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = replica.get(f"/api/jobs/{job_id}", token=token)
        if job["status"] in ("done", "failed", "cancelled"):
            return dict(job)
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish in {timeout} s (through replica {replica.name})")
