"""Generation throughput: `promptdex generate --ray` on a local Ray cluster (a head with no CPUs and N simulated
worker nodes of one CPU each, one pipeline actor per node) against the baseline measured in the same run, N
`promptdex worker --once` processes draining the PostgreSQL queue that `generate --enqueue` filled. Same prompts,
seeds, tiny model, size, steps and one torch thread per pipeline; a fresh embedded PostgreSQL for each. Each wall
time runs from the command's start (models load inside it) to the last image stored; the Ray cluster's own start
is timed apart (a fleet's cluster is already up).

    python -m bench.ray_generate --images 200 --out bench/results/ray-generate
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import finish, load_average, log, machine

SETTINGS = ["--steps", "4", "--size", "64x64", "--batch", "1"]


def _env(data: Path, models: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTDEX_")}
    return {**env, "PROMPTDEX_DATA_DIR": str(data), "PROMPTDEX_MODELS": "tiny", "PROMPTDEX_MODELS_DIR": str(models),
            "PROMPTDEX_GENERATOR__THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "promptdex", *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=3600)
    if result.returncode:
        raise SystemExit(f"promptdex {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _stored(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM images").fetchone()
        return int(row[0]) if row else 0


class Corpus:
    """A fresh embedded PostgreSQL under `data`, held open while the commands (which join it) run."""

    def __init__(self, data: Path) -> None:
        from promptdex.db import open_database
        from promptdex.settings import get_settings

        self.db = open_database(get_settings(_env_file=None, data_dir=data, database_url=None))
        self.url = self.db.url

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.close()


def run_queue(work: Path, prompts: Path, models: Path, workers: int) -> dict[str, Any]:
    data = work / "data-queue"
    env = _env(data, models)
    with Corpus(data) as corpus:
        t0 = time.perf_counter()
        _cli("generate", "--enqueue", "--prompts-file", str(prompts), "--seed", "1", *SETTINGS, env=env, cwd=work)
        queued = time.perf_counter() - t0
        procs = [subprocess.Popen([sys.executable, "-m", "promptdex", "worker", "--once", "--json"], env=env, cwd=work,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
        outputs = [p.communicate(timeout=3600) for p in procs]
        seconds = time.perf_counter() - t0
        failed = [err[-2000:] for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode]
        if failed:
            raise SystemExit("a worker failed:\n" + "\n".join(failed))
        stored = _stored(corpus.url)
    return {"workers": workers, "images": stored, "seconds": round(seconds, 2), "enqueue_seconds": round(queued, 2),
            "images_per_s": round(stored / seconds, 3)}


def run_ray(work: Path, prompts: Path, models: Path, nodes: int) -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    data = work / "data-ray"
    env = _env(data, models)
    store = 100 * 1024 * 1024
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": store, "include_dashboard": False,
        "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1, object_store_memory=store, env_vars={"HF_HUB_OFFLINE": "1"})
        cluster.wait_for_nodes()
        started = time.perf_counter() - t0
        with Corpus(data) as corpus:
            t1 = time.perf_counter()
            _cli("generate", "--ray", cluster.address, "--actors", str(nodes), "--prompts-file", str(prompts),
                 "--seed", "1", *SETTINGS, "--json", env=env, cwd=work)
            seconds = time.perf_counter() - t1
            stored = _stored(corpus.url)
    finally:
        cluster.shutdown()
    return {"nodes": nodes, "actors": nodes, "images": stored, "seconds": round(seconds, 2),
            "cluster_start_seconds": round(started, 2), "images_per_s": round(stored / seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200, help="prompts (one image each)")
    parser.add_argument("--workers", type=int, default=2, help="queue workers, and Ray nodes (one actor each)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ray-generate"))
    args = parser.parse_args(argv)
    from generator.tiny import ensure_tiny_model

    work = (args.out / "work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    models = work / "models"
    ensure_tiny_model(models)
    prompts = work / "prompts.txt"
    prompts.write_text("".join(f"a lighthouse on a cliff, study number {i}\n" for i in range(args.images)))
    load = load_average()
    log(f"queue: generate --enqueue, then {args.workers} workers (baseline)")
    queue = run_queue(work, prompts, models, args.workers)
    log(f"  {queue['images_per_s']} images/s; generate --ray on {args.workers} nodes")
    ray = run_ray(work, prompts, models, args.workers)
    log(f"  {ray['images_per_s']} images/s")
    result = {"command": "python -m bench.ray_generate " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "settings": SETTINGS, "load_average_start": load,
              "load_average_end": load_average(), "queue_baseline": queue, "ray": ray,
              "ratio_images_per_s": round(ray["images_per_s"] / queue["images_per_s"], 2)}
    finish(args.out, result, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
