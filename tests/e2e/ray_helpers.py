"""A real local multi-node Ray cluster for the `--ray` tests: a head that runs nothing and simulated worker nodes."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

OBJECT_STORE = 100 * 1024 * 1024
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def require_ray() -> Any:
    """The `ray` module; skipped without it, but under CI=true a missing ray must fail, not skip."""
    if os.environ.get("CI") == "true":
        import ray

        return ray
    return pytest.importorskip("ray")


@contextmanager
def local_cluster(*, workers: int = 2, worker_cpus: int = 1) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster`: a head with 0 CPUs (so all work lands on the workers) and `workers` nodes of
    `worker_cpus` CPUs each; shut down afterwards."""
    require_ray()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": OBJECT_STORE, "include_dashboard": False, "env_vars": OFFLINE})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=worker_cpus, object_store_memory=OBJECT_STORE, env_vars=OFFLINE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def remove_a_worker(cluster: Any) -> None:
    """Lose one worker node (its processes are killed, the objects it held are gone)."""
    workers = [n for n in cluster.list_all_nodes() if n is not cluster.head_node]
    cluster.remove_node(workers[0])


def dead_address() -> str:
    """HOST:PORT on 127.0.0.1 where nobody listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"
