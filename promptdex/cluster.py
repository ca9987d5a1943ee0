"""Joining a Ray cluster (the `promptdex[cluster]` extra), shared by `promptdex generate --ray` and `index --ray`.

`ray` is imported only inside these functions, so the core imports no cluster or ML library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from promptdex.errors import ConfigError

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
Model = TypeVar("Model", bound=BaseModel)


def import_ray() -> Any:
    """The `ray` module with Ray Data; ConfigError naming the extra to install when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: install it with `pip install 'promptdex[cluster]'`") from exc
    return ray


def connect(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """ray.init on a cluster that answers within `timeout` seconds; ConfigError naming the address otherwise."""
    ray = import_ray()
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address != "auto":
        if not host or not port.isdigit():
            raise ConfigError(f"--ray: {address!r} is not HOST:PORT (the head node's GCS address, e.g. 10.0.0.5:6379)")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                pass
        except OSError as exc:
            raise ConfigError(f"--ray: no Ray cluster answers at {address} within {timeout:.0f} s ({exc})") from exc
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    return ray


def _absolute(model: Model) -> Model:
    update: dict[str, Any] = {}
    for name, value in model:
        if isinstance(value, Path):
            update[name] = value.expanduser().resolve()
        elif isinstance(value, BaseModel):
            update[name] = _absolute(value)
    return model.model_copy(update=update)


def portable(settings: Model) -> Model:
    """The settings with every folder absolute (those of the groups too), as an actor or task in another working
    directory must see them."""
    return _absolute(settings)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While Ray runs, what anything writes to standard output (Ray's own warnings when a node is lost, from Python
    or C++) goes to standard error, so that a command's `--json` output stays the only thing on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def seal_stdout() -> None:
    """After a command printed its result: later writes to stdout (Ray's shutdown messages) go to stderr."""
    sys.stdout.flush()
    os.dup2(2, 1)
