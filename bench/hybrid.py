"""Hybrid search over HTTP: `promptdex serve` in its own process, the load generator in another, CPU of each
(and of PostgreSQL) measured over the run, the API's resident memory afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.common import log, memory_of, summary_ms, tree_cpu


def server_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the API process: the benchmark's data dir, ViT-B-32 with random weights (no download).

    Every load-generator client comes from one address: the read rate limits are set far above what the
    benchmark sends, so it measures search, not the limiter.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTDEX_")}
    env.update(PROMPTDEX_DATA_DIR=str(data_dir), PROMPTDEX_INDEXER__CLIP_MODEL="ViT-B-32",
               PROMPTDEX_INDEXER__CLIP_PRETRAINED="", PROMPTDEX_INDEXER__DEVICE="cpu", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PROMPTDEX_API__RATE_BURST="1000000",
               PROMPTDEX_API__RATE_SUSTAINED="100000000", **(extra or {}))
    return env


class Server:
    """`python -m promptdex serve` on a loopback port, started and stopped by the benchmark."""

    def __init__(self, data_dir: Path, port: int, log_path: Path, *, runtime: str = "auto") -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.runtime = runtime
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "promptdex", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env(data_dir, {"PROMPTDEX_INDEXER__RUNTIME": runtime}), stdout=self._log,
            stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)

    def wait_ready(self, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited ({self.proc.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=30) as response:
                    health = json.loads(response.read())
                if health.get("status") == "ok":
                    return health
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the API was not ready after {timeout} s; see {self.log_path}")

    def get(self, path: str) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            body = json.loads(response.read())
        return time.perf_counter() - t0, body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _system_cpu() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def load_test(server: Server, postgres_pid: int | None, queries_file: Path, out_dir: Path, *, clients: int,
              duration: float, mode: str = "hybrid", rate: float = 0.0, name: str = "") -> dict[str, Any]:
    """Run the load generator as a separate process (closed loop of `clients`, or open loop at `rate` requests/s);
    CPU of server, PostgreSQL, client and the rest of the machine over the same window; the API's query cache and
    batch counters over the window."""
    result_file = out_dir / f"loadgen-{mode}-{server.runtime}-{name or 'load'}.json"
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", f"{server.url}/api/search?mode={mode}",
           "--queries", str(queries_file), "--clients", str(clients), "--duration", str(duration),
           "--rate", str(rate), "--out", str(result_file)]
    what = f"open loop at {rate:g} req/s" if rate > 0 else f"{clients} clients"
    log(f"{mode} load test ({server.runtime}, {name or 'load'}): {what} for {duration:.0f} s")
    models0 = server.get("/api/health")[1]["models"]
    server_cpu0, pg_cpu0, sys_cpu0 = tree_cpu(server.proc.pid), tree_cpu(postgres_pid), _system_cpu()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=Path(__file__).parent.parent)
    wall = time.perf_counter() - t0
    server_cpu, pg_cpu = tree_cpu(server.proc.pid) - server_cpu0, tree_cpu(postgres_pid) - pg_cpu0
    sys_cpu = _system_cpu() - sys_cpu0
    result = json.loads(result_file.read_text())
    models1 = server.get("/api/health")[1]["models"]
    result["cache"] = _delta(models0.get("query_cache", {}), models1.get("query_cache", {}), ("hits", "misses"))
    asked = result["cache"].get("hits", 0) + result["cache"].get("misses", 0)
    result["cache"]["hit_rate"] = round(result["cache"].get("hits", 0) / asked, 4) if asked else None
    result["batches"] = {
        name: _delta(models0.get("query_batches", {}).get(name, {}), b, ("batches", "queries"))
        for name, b in models1.get("query_batches", {}).items()}
    for b in result["batches"].values():
        b["per_call"] = round(b["queries"] / b["batches"], 2) if b.get("batches") else None
    n = max(1, result["requests"])
    client_cpu = result["client_cpu_s"]
    other = max(0.0, sys_cpu - server_cpu - pg_cpu - client_cpu)
    result["cpu"] = {
        "window_s": round(wall, 1), "cores": os.cpu_count(),
        "api_s": round(server_cpu, 1), "postgres_s": round(pg_cpu, 1), "client_s": round(client_cpu, 1),
        "other_processes_s": round(other, 1), "machine_total_s": round(sys_cpu, 1),
        "api_ms_per_request": round(server_cpu * 1000 / n, 2),
        "postgres_ms_per_request": round(pg_cpu * 1000 / n, 2),
        "client_ms_per_request": round(client_cpu * 1000 / n, 2),
        "machine_busy_pct": round(100 * sys_cpu / (wall * (os.cpu_count() or 1)), 1),
    }
    log(f"{mode} load: {result['throughput_rps']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"cpu/req api {result['cpu']['api_ms_per_request']} pg {result['cpu']['postgres_ms_per_request']} "
        f"client {result['cpu']['client_ms_per_request']} ms, other processes {other:.1f} s")
    return result


def _delta(before: dict[str, Any], after: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: int(after.get(k, 0) or 0) - int(before.get(k, 0) or 0) for k in keys}


def sequential(server: Server, queries: list[str], mode: str = "hybrid") -> dict[str, Any]:
    """One client, one request at a time: latency without queueing."""
    from urllib.parse import quote

    lat = []
    for q in queries:
        elapsed, _ = server.get(f"/api/search?mode={mode}&q={quote(q)}")
        lat.append(elapsed)
    return summary_ms(lat)


def api_memory(server: Server) -> dict[str, Any]:
    return memory_of(server.proc.pid)
