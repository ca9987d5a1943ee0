"""`promptdex worker`: take generation jobs from PostgreSQL, batch compatible ones, keep the model loaded.

Jobs are claimed with `promptdex.jobs.claim_jobs` (fair between users, FOR UPDATE SKIP LOCKED), so any number of
workers on any number of machines never take the same job; an idle worker sleeps until a new job's NOTIFY wakes
it (and looks every PROMPTDEX_GENERATOR__POLL_SECONDS for jobs whose worker died). Each step's progress and
cancellation go through `generator.progress`. While it works, a heartbeat thread renews the leases of its
jobs every third of the lease (on a connection of its own, so a render longer than the lease never loses its
job); a worker that dies stops renewing, and once its lease has run out the job is handed to the next worker
(up to the job's max_attempts). Jobs are idempotent: their seeds are fixed when queued (or derived from the
job), so a retried job makes the same bytes, which the corpus stores once, and whichever attempt finishes
first links them to the job. A lost database is waited for (PROMPTDEX_DB__RECONNECT_SECONDS): once it is back, the
worker releases the jobs it had in hand and claims again (if it never comes back, their leases run out and other
workers take them). A full disk stops the worker at once (its jobs go back to the queue). Payload schema: see
`promptdex.generation`.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import psycopg

from generator.environment import torch_threads
from generator.output import input_image_file, repair_incoming
from generator.progress import JobProgress
from generator.requests import check_inputs
from generator.service import ModelCache, generate_images, inputs_path, request_like, with_seeds
from promptdex.catalog import fill_defaults, model_profile
from promptdex.db import Database, open_database
from promptdex.errors import DatabaseError, InvalidInput, NotFound, PromptdexError
from promptdex.generation import RANDOM_SEED_BITS, GenerateRequest, ReproduceJob, VariationsJob, parse_payload
from promptdex.jobs import (
    WAKE_CHANNEL,
    Job,
    claim_jobs,
    complete_job,
    extend_lease,
    fail_job,
    mark_cancelled,
    release_jobs,
)
from promptdex.settings import Settings
from promptdex.store import get_image

logger = logging.getLogger(__name__)

def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def job_seeds(job: Job, count: int) -> list[int]:
    """Seeds for a job that did not name any: random-looking, but the same on every attempt of that job."""
    rng = random.Random(f"promptdex-job:{job.id}:{job.created_at.isoformat()}")
    return [rng.randrange(2**RANDOM_SEED_BITS) for _ in range(count)]


@dataclass
class WorkerReport:
    name: str
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    images: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"worker {self.name}: {self.done} jobs done, {self.failed} failed, {self.cancelled} cancelled, "
                f"{self.images} images "
                f"in {self.seconds:.1f} s")


FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class StorageFull(PromptdexError):
    """The disk under IMAGES_DIR cannot take more files: nothing more can succeed until a person frees space."""


class Heartbeat:
    """Renews the leases of the jobs in hand every third of the lease, from a thread with its own connection."""

    def __init__(self, db: Database, *, worker: str, lease_seconds: float) -> None:
        self.db = db
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.job_ids: list[int] = []
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{worker}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn: Any = None
        while not self._stop.wait(self.lease_seconds / 3):
            ids = list(self.job_ids)
            if not ids:
                continue
            try:
                if conn is None or conn.closed:
                    conn = self.db.connect(autocommit=True)
                extend_lease(conn, job_ids=ids, worker=self.worker, lease_seconds=self.lease_seconds)
                self.beats += 1
            except (psycopg.Error, PromptdexError) as exc:  # the main loop meets the same fault and stops
                logger.warning("heartbeat of %s could not renew its leases: %s", self.worker, exc)
                conn = None
        if conn is not None:
            conn.close()


class Wakeup:
    """LISTENs on the jobs channel from a connection of its own; `wait` returns when a job was queued or `poll`
    seconds passed (or `stop` was set: it looks every second)."""

    def __init__(self, db: Database) -> None:
        self.conn = db.connect(autocommit=True)
        self.conn.execute(f"LISTEN {WAKE_CHANNEL}")

    def wait(self, poll: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + poll
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in self.conn.notifies(timeout=min(1.0, left), stop_after=1):
                return

    def close(self) -> None:
        self.conn.close()


def run_worker(
    settings: Settings,
    *,
    once: bool = False,
    poll: float | None = None,
    max_jobs: int | None = None,
    lease_seconds: float | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    name: str | None = None,
    stop: threading.Event | None = None,
    on_images: Callable[[int], None] | None = None,
) -> WorkerReport:
    """Work until stopped: `once` drains the queue and returns; `max_jobs` returns after that many jobs."""
    report = WorkerReport(name or default_worker_name())
    started = time.monotonic()
    stop = stop or threading.Event()
    poll = poll if poll is not None else settings.generator.poll_seconds
    lease = lease_seconds if lease_seconds is not None else settings.generator.lease_seconds
    size = batch_size or settings.generator.batch_size
    db = open_database(settings)
    cache = ModelCache(settings, device=device, dtype=dtype)
    taken = 0
    in_hand: list[int] = []  # the jobs claimed and not yet finished, released again after a lost database
    try:
        conn: Any = db.connect(autocommit=True)
        while conn is not None:
            try:
                with conn, torch_threads(threads or settings.generator.threads), \
                        Heartbeat(db, worker=report.name, lease_seconds=lease) as heartbeat, ExitStack() as stack:
                    release_jobs(conn, job_ids=in_hand, worker=report.name)
                    in_hand = []
                    repair_incoming(conn, images_path=settings.images_path)
                    wakeup = Wakeup(db)
                    stack.callback(wakeup.close)
                    while not stop.is_set():
                        limit = size if max_jobs is None else min(size, max_jobs - taken)
                        jobs = claim_jobs(conn, worker=report.name, limit=limit, lease_seconds=lease) if limit > 0 \
                            else []
                        if not jobs:
                            if once or (max_jobs is not None and taken >= max_jobs):
                                break
                            wakeup.wait(poll, stop)
                            continue
                        taken += len(jobs)
                        logger.info("%s took jobs %s", report.name, [j.id for j in jobs])
                        in_hand = heartbeat.job_ids = [j.id for j in jobs]
                        try:
                            process_jobs(conn, settings, jobs, worker=report.name, cache=cache, batch_size=size,
                                         lease_seconds=lease, report=report, on_images=on_images)
                            in_hand = []
                        finally:
                            heartbeat.job_ids = []
                        if max_jobs is not None and taken >= max_jobs:
                            break
                break
            except (psycopg.OperationalError, DatabaseError) as exc:  # its jobs: released once it is back
                lost = exc.__cause__ if isinstance(exc, DatabaseError) else exc
                if not isinstance(lost, psycopg.OperationalError):
                    raise  # a database error that is not a lost connection (the schema, a setting)
                conn = db.reconnect(lost, who=f"worker {report.name}", stop=stop)
    finally:
        cache.close()
        db.close()
        report.seconds = time.monotonic() - started
    return report


def process_jobs(conn: Any, settings: Settings, jobs: list[Job], *, worker: str, cache: ModelCache,
                 batch_size: int, lease_seconds: float, report: WorkerReport,
                 on_images: Callable[[int], None] | None = None) -> None:
    """Run claimed jobs: reproduce jobs one by one, generate and variations jobs batched together."""
    pending: list[tuple[Job, GenerateRequest]] = []
    for job in jobs:
        try:
            payload = parse_payload(job.payload, job.kind)
            if isinstance(payload, ReproduceJob):
                _run_reproduce(conn, settings, job, payload, worker=worker, cache=cache, report=report)
                continue
            request = _generate_request(conn, settings, job, payload)
            check_inputs(request, flags=False)
            if request.init_image:
                input_image_file(request.init_image, inputs_path=inputs_path(settings))
            pending.append((job, request))
        except PromptdexError as exc:
            _fail(conn, job, worker, str(exc), retry=False, report=report)
    if not pending:
        return
    job_ids = [job.id for job, _ in pending]

    def renew() -> None:
        extend_lease(conn, job_ids=job_ids, worker=worker, lease_seconds=lease_seconds)

    requests = [r for _, r in pending]
    tracker = JobProgress(conn, worker=worker, jobs=[job for job, _ in pending],
                          images=[len(r.seeds or []) for r in requests],
                          family=model_profile(requests[0].model or "", settings).family.value)
    try:
        outcome = generate_images(conn, settings, requests, cache=cache, batch_size=batch_size,
                                  progress=on_images, after_batch=renew, fail_fast=False,
                                  fatal=lambda exc: isinstance(exc, OSError) and exc.errno in FATAL_ERRNOS,
                                  on_step=tracker.on_step, stopped=tracker.stopped)
    except OSError as exc:
        message = (f"{settings.images_path}: the disk is full or read-only ({os.strerror(exc.errno or 0)}); "
                   "free space there and run the worker again (its jobs went back to the queue)")
        for job_id in job_ids:
            fail_job(conn, job_id=job_id, worker=worker, error=message, retry=True)
        raise StorageFull(message) from exc
    cancelled = [job.id for index, (job, _) in enumerate(pending) if index in outcome.stopped]
    if cancelled:
        mark_cancelled(conn, job_ids=cancelled, worker=worker)
        report.cancelled += len(cancelled)
    for index, (job, _) in enumerate(pending):
        if index in outcome.stopped:
            continue
        if index in outcome.errors:
            _fail(conn, job, worker, outcome.errors[index], retry=index in outcome.retryable, report=report)
        elif complete_job(conn, job_id=job.id, worker=worker, image_ids=outcome.ids[index]):
            report.done += 1
            report.images += len(outcome.ids[index])
        else:
            logger.warning("job %d was taken over by another worker before %s finished it", job.id, worker)


def _generate_request(conn: Any, settings: Settings, job: Job, payload: Any) -> GenerateRequest:
    if isinstance(payload, VariationsJob):
        image = get_image(conn, image_id=payload.image_id)
        if image is None:
            raise NotFound(f"job {job.id}: image {payload.image_id} is not in the corpus")
        seeds = payload.seeds or job_seeds(job, payload.count)
        return fill_defaults(request_like(image, seeds=seeds), settings)
    request = fill_defaults(payload, settings)
    return with_seeds(request, None if request.seeds is not None else job_seeds(job, request.count))


def _run_reproduce(conn: Any, settings: Settings, job: Job, payload: ReproduceJob, *, worker: str,
                   cache: ModelCache, report: WorkerReport) -> None:
    from generator.reproduce import reproduce_image

    try:
        result = reproduce_image(conn, settings, image_id=payload.image_id, cache=cache)
    except (InvalidInput, NotFound) as exc:
        _fail(conn, job, worker, str(exc), retry=False, report=report)
        return
    except (PromptdexError, RuntimeError, ValueError, OSError) as exc:
        _fail(conn, job, worker, f"{type(exc).__name__}: {exc}", retry=not isinstance(exc, PromptdexError),
              report=report)
        return
    if result.identical and complete_job(conn, job_id=job.id, worker=worker, image_ids=[payload.image_id]):
        report.done += 1
    elif not result.identical:
        _fail(conn, job, worker, result.summary(), retry=False, report=report)


def _fail(conn: Any, job: Job, worker: str, error: str, *, retry: bool, report: WorkerReport) -> None:
    logger.error("job %d failed: %s", job.id, error)
    fail_job(conn, job_id=job.id, worker=worker, error=error, retry=retry)
    report.failed += 1
    report.errors.append(f"job {job.id}: {error}")
