"""`promptdex env`: versions and devices, for bug reports and the reproducibility record."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
from typing import Any

from promptdex.console import out
from promptdex.settings import Settings
from promptdex.versions import package_versions

PACKAGES = ("promptdex", "torch", "torchvision", "diffusers", "transformers", "open-clip-torch", "faiss-cpu",
            "sentence-transformers", "fastapi", "psycopg", "pgserver", "numpy", "pillow")


def register(sub: Any) -> None:
    parser = sub.add_parser("env", help="print versions of python, torch, diffusers, open_clip, faiss, PostgreSQL")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def postgres_version(settings: Settings) -> str | None:
    """The external server's version when configured, else the embedded binaries' version."""
    if settings.database_url:
        import psycopg

        try:
            with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                return f"{row[0]} (external)" if row else None
        except psycopg.Error as exc:
            return f"unreachable ({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})"
    try:
        from promptdex.pg_embedded import _bin_dir

        text = subprocess.run([str(_bin_dir() / "postgres"), "--version"], capture_output=True, text=True,
                              timeout=10, check=True).stdout
        return f"{text.strip().split()[-1]} (embedded, pgserver)"
    except Exception:  # noqa: BLE001 - a report, never fatal
        return None


def devices() -> dict[str, Any]:
    """Compute devices torch sees (torch is imported only here, and only if installed)."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return {"torch": None}
    info: dict[str, Any] = {
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "cuda_version": torch.version.cuda,
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    return info


def collect(settings: Settings) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(PACKAGES),
        "postgresql": postgres_version(settings),
        "devices": devices(),
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    info = collect(settings)
    if args.json:
        out(json.dumps(info, indent=2))
        return 0
    out(f"python:      {info['python']} ({info['platform']}, {info['cpu_count']} CPUs)")
    for name, version in info["packages"].items():
        out(f"{name + ':':<22} {version or 'not installed'}")
    out(f"{'postgresql:':<22} {info['postgresql'] or 'not available'}")
    dev = info["devices"]
    if dev.get("torch") is None and "cuda" not in dev:
        out("devices:     torch not installed")
    else:
        cuda = ", ".join(dev["cuda_devices"]) if dev["cuda"] else "none"
        out(f"devices:     cpu ({dev['cpu_threads']} torch threads); cuda: {cuda}; mps: {dev['mps']}")
    return 0
