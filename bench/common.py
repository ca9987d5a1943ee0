"""Shared helpers for the benchmark: latency summaries, CPU and memory of processes, machine facts, results file."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil


def summary_ms(seconds: list[float] | np.ndarray) -> dict[str, float | int]:
    """Median, p90, p99, mean and max in milliseconds of a list of durations in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    if ms.size == 0:
        return {"n": 0}
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "max_ms": round(float(ms.max()), 3)}


def tree_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process and its children (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def memory_of(pid: int) -> dict[str, float]:
    """Resident memory of a process in MiB: total, anonymous (heap) and file-backed (mapped files, libraries)."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss_mib": round(fields.get("VmRSS", 0), 1), "anon_mib": round(fields.get("RssAnon", 0), 1),
            "file_mib": round(fields.get("RssFile", 0), 1), "peak_rss_mib": round(fields.get("VmHWM", 0), 1)}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for module in ("numpy", "faiss", "torch", "open_clip", "psycopg", "fastapi", "uvicorn"):
        try:
            versions[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            continue
    return {"cpu": cpu_model, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "os": platform.platform(), "gpu": None, "versions": versions}


class Results:
    """The JSON of all figures, rewritten after every step so an interrupted run keeps what it measured."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**meta, "figures": {}}
        self.save()

    def put(self, key: str, value: Any) -> None:
        """Store a figure, with the machine's load average when it was taken (other users' work shows there)."""
        self.data["figures"][key] = value
        self.data.setdefault("load_average", {})[key] = [round(x, 2) for x in os.getloadavg()]
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def finish(out: Path, result: dict[str, Any], work: Path | None) -> None:
    """Write a one-shot bench's results.json under `out`, remove its scratch folder (if any), log the figures."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    log(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def timed(label: str) -> Iterator[dict[str, float]]:
    """`with timed("x") as t:` then t["seconds"]; logs the duration."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - start
        log(f"{label}: {out['seconds']:.1f} s")
