"""`promptdex generate --ray` on a real local multi-node Ray cluster (head + two worker nodes), losing a node."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from generator.tiny import ensure_tiny_model
from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.e2e


def _ray() -> Any:
    if os.environ.get("CI") == "true":
        import ray  # under CI=true a missing ray must fail, not skip

        return ray
    return pytest.importorskip("ray")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "generator-models"
    ensure_tiny_model(path)
    return path


@pytest.fixture
def cluster() -> Iterator[Any]:
    _ray()
    from ray.cluster_utils import Cluster

    store = 100 * 1024 * 1024
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": store, "include_dashboard": False, "env_vars": env})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=store, env_vars=env)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def _env(database_url: str, models: Path) -> dict[str, str]:
    return clean_env(PROMPTDEX_DATABASE_URL=database_url, PROMPTDEX_MODELS="tiny", PROMPTDEX_MODELS_DIR=str(models),
                     PROMPTDEX_GENERATOR__THREADS="1")


def _stored(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT p.text, i.seed, i.path, i.sha256 FROM images i JOIN prompts p ON p.id = i.prompt_id")
        return [{"prompt": r[0], "seed": int(r[1]), "path": r[2], "sha": r[3]} for r in cur.fetchall()]


def test_generate_on_ray_survives_losing_a_node(tmp_path: Path, database_url: str, models: Path,
                                                cluster: Any) -> None:
    prompts = [f"a fox number {i}" for i in range(6)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    args = [sys.executable, "-m", "promptdex", "generate", "--ray", cluster.address, "--prompts-file", "prompts.txt",
            "--seeds", "1-2", "--steps", "2", "--size", "64x64", "--batch", "1", "--actors", "2", "--json"]
    env = _env(database_url, models)
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # lose a node once work is being stored
            try:
                if len(_stored(database_url)) >= 2:
                    break
            except psycopg.Error:
                pass
            time.sleep(0.5)
        workers = [n for n in cluster.list_all_nodes() if n is not cluster.head_node]
        cluster.remove_node(workers[0])
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:  # only the process this test started, by its handle
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stderr
    planned = {(p, s) for p in prompts for s in (1, 2)}
    rows = _stored(database_url)
    assert len(rows) == len(planned), "every (prompt, seed) stored exactly once"
    assert {(r["prompt"], r["seed"]) for r in rows} == planned
    assert len({r["sha"] for r in rows}) == len(rows)
    images = tmp_path / "data" / "images"
    assert all((images / r["path"]).is_file() for r in rows)
    ids = json.loads(stdout)  # the whole of stdout, also when a node was lost: Ray's messages go to stderr
    assert len(ids) == len(set(ids)) == len(planned)

    # a rerun renders nothing: every row is already stored
    again = run_cli(*args[3:], cwd=tmp_path, env=env, timeout=150)
    assert again.returncode == 0, again.stderr
    assert f"{len(planned)} skipped as stored" in again.stderr
    assert len(_stored(database_url)) == len(planned)


def test_a_ray_address_that_does_not_answer_is_one_clear_error(tmp_path: Path) -> None:
    _ray()
    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = run_cli("generate", "a fox", "--model", "tiny", "--ray", f"127.0.0.1:{port}", cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < 45
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--ray" in lines[0], result.stderr
