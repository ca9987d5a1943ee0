"""Devices, dtypes, torch threads and the environment part of the reproducibility record."""

from __future__ import annotations

import logging
import os
import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from promptdex.errors import ConfigError, InvalidInput
from promptdex.versions import package_versions as versions_of

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "pillow", "promptdex")


def check_device_name(device: str, *, argument: str = "--device") -> str:
    """The device name, checked without touching torch."""
    if not _DEVICE_RE.match(device.strip()):
        raise InvalidInput(f"{argument}: unknown device {device!r}; accepted: {', '.join(DEVICE_CHOICES)}")
    return device.strip()


def check_dtype_name(dtype: str, *, argument: str = "--dtype") -> str:
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(dtype.strip(), dtype.strip())
    if name not in DTYPE_CHOICES:
        raise InvalidInput(f"{argument}: unknown dtype {dtype!r}; accepted: {', '.join(DTYPE_CHOICES)}")
    return name


def resolve_device(device: str) -> str:
    """auto: cuda, then mps, then cpu. An explicit device that is not there is a ConfigError."""
    import torch

    name = check_device_name(device)
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here; accepted: auto, cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps" and not mps_ok:
        raise ConfigError("device 'mps': MPS is not available here; accepted: auto, cpu")
    return name


def resolve_dtype(dtype: str, device: str) -> str:
    """auto: float16 on CUDA, float32 elsewhere. Half precision on CPU is refused (slow and unsupported)."""
    name = check_dtype_name(dtype)
    if name == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if device == "cpu" and name == "float16":
        raise ConfigError("dtype 'float16' on device 'cpu' is not supported; accepted on cpu: float32, bfloat16")
    return name


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def prepare_determinism(device: str) -> None:
    """Settings that make repeated runs give the same bits (CUDA: deterministic cuDNN and cuBLAS)."""
    import torch

    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with `threads` intra-op threads (None: torch's current count); yields the count in force."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise InvalidInput(f"--threads must be at least 1 (got {threads})")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def package_versions() -> dict[str, str | None]:
    return versions_of(VERSIONED_PACKAGES)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    if device == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine()


def environment_record(device: str, dtype: str) -> dict[str, Any]:
    """What about this machine can change the pixels: device, dtype, threads, library versions, math modes."""
    import torch

    record: dict[str, Any] = {
        "device": device.split(":")[0],
        "device_name": device_name(device),
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "cuda": torch.version.cuda if device.startswith("cuda") else None,
        "cudnn": torch.backends.cudnn.version() if device.startswith("cuda") else None,
    }
    if device.startswith("cuda"):
        record["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        record["deterministic"] = torch.are_deterministic_algorithms_enabled()
    return record


def environment_differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """{part: [recorded, now]} for every environment part that differs (versions flattened as versions.NAME)."""
    diffs: dict[str, list[Any]] = {}
    for key in sorted(set(recorded) | set(current)):
        if key == "versions":
            old, new = recorded.get(key) or {}, current.get(key) or {}
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    diffs[f"versions.{name}"] = [old.get(name), new.get(name)]
        elif recorded.get(key) != current.get(key):
            diffs[key] = [recorded.get(key), current.get(key)]
    return diffs
