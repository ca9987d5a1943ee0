"""`promptdex generate --ray ADDRESS`: generation as a Ray Data job on a cluster (the `promptdex[cluster]` extra).

The driver plans (request, seed) rows, leaves out those already stored, and hands them to Ray Data in blocks;
an actor pool (one pipeline per actor: `num_gpus=1` where the cluster has GPUs, CPU actors otherwise) renders
them and writes files and rows through the same store code as `promptdex generate` (`store_batch` ->
`save_image`, idempotent by content hash). So a block that Ray retries after losing a node writes nothing
twice, and a rerun after a crash renders only what is missing. `ray` is imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from promptdex.cluster import connect, import_ray, portable
from promptdex.generation import GenerateRequest
from promptdex.settings import Settings

logger = logging.getLogger(__name__)
__all__ = ["Renderer", "connect", "generate_on_ray", "import_ray", "plan_rows", "portable"]


def _stored(conn: Any, request: GenerateRequest, seeds: Sequence[int]) -> dict[int, int]:
    """Seed -> first image id of `request`'s seeds already in the corpus as generated images with its prompt and
    settings."""
    rows = conn.execute(
        "SELECT i.seed, min(i.id) AS id FROM images i JOIN prompts p ON p.id = i.prompt_id"
        " WHERE i.source = 'generated' AND p.text = %s AND i.negative_prompt = %s AND i.steps = %s"
        " AND i.width = %s AND i.height = %s AND i.seed = ANY(%s) GROUP BY i.seed",
        (request.prompt, request.negative_prompt or "", request.steps, request.width, request.height,
         [int(s) for s in seeds])).fetchall()
    return {int(r["seed"]): int(r["id"]) for r in rows}


def plan_rows(conn: Any, requests: Sequence[GenerateRequest]) -> tuple[list[dict[str, Any]], int]:
    """One row per (request, seed) not yet stored; and how many were skipped as stored."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    for ri, request in enumerate(requests):
        seeds = list(request.seeds or [])
        done = _stored(conn, request, seeds) if seeds else {}
        skipped += sum(1 for s in seeds if s in done)
        payload = request.model_copy(update={"seeds": None, "count": 1}).model_dump_json(exclude_none=True)
        rows.extend({"request": ri, "seed": int(s), "payload": payload} for s in seeds if s not in done)
    return rows, skipped


class Renderer:
    """A Ray actor: one pipeline (loaded once) and one database connection; renders and stores its batches."""

    def __init__(self, settings: Settings, device: str | None, dtype: str | None, threads: int | None,
                 offline: bool) -> None:
        from generator.service import ModelCache
        from promptdex.db import open_database

        self.settings = settings
        self.threads = threads or settings.generator.threads
        self.cache = ModelCache(settings, device=device, dtype=dtype, local_files_only=offline)
        self.db = open_database(settings, migrate=False)
        self.conn = self.db.connect(autocommit=True)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from generator.environment import torch_threads
        from generator.service import plan_batches, render_planned, store_batch

        ids, created = [], []
        with torch_threads(self.threads):
            for seed, payload in zip(batch["seed"], batch["payload"], strict=True):
                request = GenerateRequest.model_validate_json(str(payload))
                request = request.model_copy(update={"seeds": [int(seed)], "count": 1})
                (planned,) = plan_batches([request], 1)
                rendered = render_planned(self.settings, planned, cache=self.cache)
                (saved,) = store_batch(self.conn, self.settings, rendered)
                ids.append(-1 if saved is None else saved[0])
                created.append(saved is not None and saved[1])
        return {"request": list(batch["request"]), "seed": list(batch["seed"]), "id": ids, "created": created}


def generate_on_ray(settings: Settings, requests: Sequence[GenerateRequest], *, address: str, actors: int | None,
                    device: str | None, dtype: str | None, threads: int | None, offline: bool,
                    block_rows: int = 4, progress: Any = None) -> dict[str, Any]:
    """Run the job; per request the ids in seed order (blocked images left out), and counts."""
    from promptdex.db import open_database

    ray = connect(address)
    settings = portable(settings)
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            rows, skipped = plan_rows(conn, requests)
    finally:
        db.close()
    ids: dict[tuple[int, int], int] = {}
    created = 0
    if rows:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        size = actors or max(1, gpus or int(resources.get("CPU", 1)))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        data = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // block_rows)))
        mapped = data.map_batches(
            Renderer, fn_constructor_args=(settings, device or ("cuda" if gpus else "cpu"), dtype, threads, offline),
            batch_size=block_rows, concurrency=size, num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
            max_restarts=-1, max_task_retries=-1, batch_format="numpy")
        for batch in mapped.iter_batches(batch_size=block_rows, batch_format="numpy"):
            for ri, seed, image_id, made in zip(batch["request"], batch["seed"], batch["id"], batch["created"],
                                                strict=True):
                if int(image_id) >= 0:
                    ids[(int(ri), int(seed))] = int(image_id)
                created += int(bool(made))
                if progress:
                    progress(1)
    if skipped and progress:
        progress(skipped)
    # the stored ones (skipped now or by this run) by their seeds
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            out: list[list[int]] = []
            for ri, request in enumerate(requests):
                seeds = list(request.seeds or [])
                found = _stored(conn, request, seeds)
                out.append([ids.get((ri, s), found.get(s, -1)) for s in seeds if (ri, s) in ids or s in found])
    finally:
        db.close()
    total = sum(len(r.seeds or []) for r in requests)
    stored = sum(len(r) for r in out)
    return {"ids": out, "created": created, "existing": stored - created, "blocked": total - stored,
            "skipped": skipped}
