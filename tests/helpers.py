"""Helpers for tests that run the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll `predicate` every 0.1 s until it is true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


# The suite's one cache of ONNX exports (tests/conftest.py sets it): every test's process exports each model once.
ONNX_DIR_SETTING = "PROMPTDEX_INDEXER__ONNX_DIR"


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any PROMPTDEX_ setting (but the suite's ONNX export cache), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTDEX_") or k == ONNX_DIR_SETTING}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def stop_process(proc: subprocess.Popen[bytes] | None, *, timeout: float = 30) -> None:
    """End a process this test started: SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptdex", *args], cwd=cwd, env=env if env is not None else clean_env(),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


@contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a real S3-protocol server, started and stopped here) with one bucket; yields
    its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
