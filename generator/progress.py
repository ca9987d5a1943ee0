"""A worker's live report on its jobs: progress per denoising step, small previews, and cancellation.

At every step the worker writes each job's progress (step i of N, images done of its total) into its row, with a
cheap latent-to-RGB preview every few steps, and learns in the same round trip which jobs were cancelled. When
every job of the batch in hand is cancelled it stops the pipeline at that step (StopBatch): nothing of the batch
is decoded or written. A cancelled job that shares a batch with others is dropped when the batch is stored.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from generator.service import Batch, StopBatch
from promptdex.jobs import Job, report_progress

logger = logging.getLogger(__name__)

PREVIEWS_PER_BATCH = 4  # previews per pipeline call, spread over its steps
MIN_WRITE_SECONDS = 0.05  # fast steps (a GPU, a tiny model) write at most this often, except previews and ends


class JobProgress:
    """The step hook and the cancellation check for one set of claimed generate jobs."""

    def __init__(self, conn: Any, *, worker: str, jobs: list[Job], images: list[int], family: str = "sd1") -> None:
        self.conn = conn
        self.worker = worker
        self.jobs = jobs  # request index -> job
        self.images = images  # request index -> images the job makes
        self.family = family
        self.done = [0] * len(jobs)
        self.cancelled: set[int] = set()  # request indexes
        self._index = {job.id: i for i, job in enumerate(jobs)}  # job id -> request index
        self._batch: Batch | None = None
        self._last_write = 0.0

    def stopped(self) -> set[int]:
        """Request indexes whose job was cancelled (asked again at every batch)."""
        rows = self.conn.execute(
            "SELECT id FROM jobs WHERE id = ANY(%s) AND (cancel_requested OR status <> 'running' OR worker <> %s)",
            ([j.id for j in self.jobs], self.worker)).fetchall()
        self.cancelled |= {self._index[int(r["id"])] for r in rows}
        return set(self.cancelled)

    def on_step(self, batch: Batch, step: int, steps: int, latents: Any) -> None:
        if batch is not self._batch:
            self._finish_batch()
            self._batch = batch
        preview_every = max(1, steps // PREVIEWS_PER_BATCH)
        want_preview = step % preview_every == 0 or step == steps
        now = time.monotonic()
        if not want_preview and step != 1 and now - self._last_write < MIN_WRITE_SECONDS:
            return
        self._last_write = now
        mine: dict[int, list[int]] = {}  # request index -> its positions in the batch
        for position, (ri, _) in enumerate(batch.slots):
            mine.setdefault(ri, []).append(position)
        progress: dict[int, dict[str, Any]] = {}
        previews: dict[int, str] = {}
        for ri, positions in mine.items():
            if ri in self.cancelled:
                continue
            job = self.jobs[ri]
            made = self.done[ri] + len(positions) * step / max(steps, 1)
            progress[job.id] = {"step": step, "steps": steps, "images_done": self.done[ri],
                                "images": self.images[ri], "fraction": round(made / max(self.images[ri], 1), 4)}
            preview = self._preview(latents, positions[0]) if want_preview and latents is not None else None
            if preview:
                previews[job.id] = preview
        if not progress:
            raise StopBatch()
        stop = report_progress(self.conn, worker=self.worker, progress=progress, previews=previews)
        self.cancelled |= {self._index[job_id] for job_id in stop}
        if all(ri in self.cancelled for ri in mine):
            logger.info("%s: jobs %s cancelled at step %d of %d", self.worker, [self.jobs[ri].id for ri in mine],
                        step, steps)
            raise StopBatch()

    def _finish_batch(self) -> None:
        if self._batch is not None:
            for ri, _ in self._batch.slots:
                self.done[ri] += 1
        self._batch = None

    def _preview(self, latents: Any, position: int) -> str | None:
        from generator.previews import preview_data_url

        try:
            return preview_data_url(latents, index=position, family=self.family)
        except (ValueError, RuntimeError) as exc:  # a latent layout the cheap preview does not know
            logger.debug("no preview: %s", exc)
            return None
