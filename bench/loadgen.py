"""HTTP load generator: N concurrent keep-alive clients on loopback for a fixed time, each query sent once; or,
with `--rate`, an open loop: requests sent at a fixed rate whatever the answers, latency counted from each
request's scheduled time (so a slow server cannot hide its queue by slowing the client down).

Run as its own process (`python -m bench.loadgen ...`) so its CPU is measured apart from the server's. It speaks
minimal HTTP/1.1 over asyncio streams (no HTTP library), which keeps its own CPU per request small: on a 2-core
machine every cycle the client burns is taken from the server, so we measure it and report it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np


class _Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.bytes = 0


def _target(url: str) -> tuple[str, int, str, str]:
    """(host, port, path, extra query) of the URL to load; loopback only."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"loopback only: {host}")
    return host, port, parts.path or "/api/search", f"&{parts.query}" if parts.query else ""


def _summary(stats: _Stats, wall: float, usage0: resource.struct_rusage, queries: list[str],
             sent: int) -> dict[str, object]:
    """Throughput, latency percentiles, repeats and the client's own CPU of one load."""
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    lat = np.asarray(stats.latencies) * 1000
    n = len(lat)
    distinct = len(set(queries))
    return {
        "duration_s": round(wall, 2), "requests": n, "errors": stats.errors, "throughput_rps": round(n / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if n else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 2) if n else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if n else None,
        "mean_ms": round(float(lat.mean()), 2) if n else None,
        "max_ms": round(float(lat.max()), 2) if n else None,
        "distinct_queries": distinct, "query_repeats": max(0, sent - distinct),
        "client_cpu_s": round(cpu, 3), "client_cpu_ms_per_request": round(cpu * 1000 / n, 3) if n else None,
        "mean_response_bytes": round(stats.bytes / n) if n else None,
    }


async def _client(host: str, port: int, paths: list[str], start: int, step: int, deadline: float,
                  stats: _Stats, timeout: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = start
    try:
        while time.perf_counter() < deadline:
            path = paths[i % len(paths)]
            i += step
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n".encode()
            t0 = time.perf_counter()
            try:
                writer.write(request)
                status_line = await asyncio.wait_for(reader.readline(), timeout)
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                body = await reader.readexactly(length)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                stats.errors[type(exc).__name__] = stats.errors.get(type(exc).__name__, 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            elapsed = time.perf_counter() - t0
            code = status_line.split(b" ", 2)[1] if b" " in status_line else b"?"
            if code != b"200":
                key = f"HTTP {code.decode(errors='replace')}"
                stats.errors[key] = stats.errors.get(key, 0) + 1
                continue
            stats.latencies.append(elapsed)
            stats.bytes += len(body)
    finally:
        writer.close()


async def _run(url: str, queries: list[str], clients: int, duration: float, timeout: float) -> dict[str, object]:
    host, port, base, extra = _target(url)
    paths = [f"{base}?q={quote(q)}{extra}" for q in queries]
    stats = _Stats()
    usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    deadline = t0 + duration
    stride = max(1, len(paths) // clients)
    await asyncio.gather(*(_client(host, port, paths, c * stride, 1, deadline, stats, timeout)
                           for c in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, **_summary(stats, wall, usage0, queries, len(stats.latencies))}


async def _request(pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]], host: str, port: int,
                   path: str, timeout: float) -> tuple[bytes, bytes]:
    """One request on a free pooled connection (a new one when every connection is busy): (status code, body)."""
    try:
        reader, writer = pool.get_nowait()
    except asyncio.QueueEmpty:
        reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n".encode())
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    body = await reader.readexactly(length)
    pool.put_nowait((reader, writer))
    return (status_line.split(b" ", 2)[1] if b" " in status_line else b"?"), body


async def _open_loop(url: str, queries: list[str], rate: float, duration: float, timeout: float) -> dict[str, object]:
    host, port, base, extra = _target(url)
    stats = _Stats()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    total = int(rate * duration)

    async def one(i: int) -> None:
        scheduled = t0 + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        try:
            code, body = await _request(pool, host, port, f"{base}?q={quote(queries[i % len(queries)])}{extra}",
                                        timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            stats.errors[type(exc).__name__] = stats.errors.get(type(exc).__name__, 0) + 1
            return
        if code != b"200":
            key = f"HTTP {code.decode(errors='replace')}"
            stats.errors[key] = stats.errors.get(key, 0) + 1
            return
        stats.latencies.append(time.perf_counter() - scheduled)
        stats.bytes += len(body)

    await asyncio.gather(*(one(i) for i in range(total)))
    wall = time.perf_counter() - t0
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {"offered_rps": rate, **_summary(stats, wall, usage0, queries[:total], total)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8765/api/search?mode=hybrid")
    parser.add_argument("--queries", type=Path, required=True, help="JSON list of query strings")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: requests per second (0: closed loop)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    queries = json.loads(args.queries.read_text())
    if args.rate > 0:
        result = asyncio.run(_open_loop(args.url, queries, args.rate, args.duration, args.timeout))
    else:
        result = asyncio.run(_run(args.url, queries, args.clients, args.duration, args.timeout))
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
