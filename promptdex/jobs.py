"""Generation job queue in PostgreSQL: enqueue, claim fairly with FOR UPDATE SKIP LOCKED, report, cancel, finish.

Why not a queue library: procrastinate and pgqueuer give retries, heartbeats and LISTEN/NOTIFY, but neither claims
round-robin over users nor several compatible jobs at once (one pipeline call for many users' images); both are
the point of this queue, so it stays a few SQL statements over the `jobs` table (NOTIFY wakes workers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel, ValidationError

from promptdex.catalog import batch_key
from promptdex.errors import QuotaExceeded
from promptdex.generation import GenerateRequest, JobKind, JobStatus

Conn = psycopg.Connection[Any]
_QUOTA_LOCK = 0x70647851  # pg_advisory_xact_lock key: quota checks and their inserts run one at a time
WAKE_CHANNEL = "promptdex_jobs"  # a trigger NOTIFYs it on every insert into jobs
_CANDIDATES = 256  # queued jobs looked at per claim (in fair order)
_OPEN = "('queued', 'running')"
# Each open job's turn within its owner's jobs: the jobs running now come first, so an owner with one job running
# waits for every other owner's first turn (round-robin), however many jobs it queued.
_TURNS = (
    "SELECT id, batch_key, priority, images_requested, "
    " (status = 'queued' OR lease_until < now()) AS claimable, "
    " row_number() OVER (PARTITION BY owner_id ORDER BY (status = 'running' AND lease_until >= now()) DESC, id) "
    "   AS turn "
    "FROM jobs WHERE status IN ('queued', 'running')"
)


class Job(BaseModel):
    """One queued unit of work (normally: generate images from a payload of settings)."""

    id: int
    public_id: str
    owner_id: int | None = None
    images_requested: int = 1
    kind: JobKind
    payload: dict[str, Any]
    status: JobStatus
    priority: int = 0
    batch_key: str | None = None
    cancel_requested: bool = False
    progress: dict[str, Any] | None = None
    preview: str | None = None
    attempts: int
    max_attempts: int
    worker: str | None
    lease_until: datetime | None
    error: str | None
    image_ids: list[int]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None = None


def enqueue_jobs(conn: Conn, *, payloads: Sequence[dict[str, Any]], kind: JobKind = JobKind.GENERATE,
                 max_attempts: int = 3, owner_id: int | None = None, images: Sequence[int] | None = None,
                 priority: int = 0, batch_keys: Sequence[str | None] | None = None) -> list[int]:
    """Queue one job per payload (`images[i]`: how many images job i asks for); returns their ids in order.

    `batch_keys[i]`: jobs with the same key can share a pipeline call (None: the job runs alone); by default a
    generate job's key comes from its settings.
    """
    if batch_keys is None:
        batch_keys = [_batch_key(p) if JobKind(kind) == JobKind.GENERATE else None for p in payloads]
    ids = []
    for i, payload in enumerate(payloads):
        row = conn.execute(
            "INSERT INTO jobs (kind, payload, max_attempts, owner_id, images_requested, priority, batch_key) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (JobKind(kind).value, json.dumps(payload), max_attempts, owner_id,
             images[i] if images is not None else 1, priority, batch_keys[i] if batch_keys is not None else None),
        ).fetchone()
        ids.append(int(row["id"] if isinstance(row, dict) else row[0]))  # type: ignore[index]
    return ids


def _batch_key(payload: dict[str, Any]) -> str | None:
    try:
        return batch_key(GenerateRequest.model_validate(payload))
    except ValidationError:  # the worker fails it with the reason
        return None


@dataclass(frozen=True)
class Quota:
    """Generation limits, counted from the jobs table (so they hold across API replicas). 0 turns one off."""

    images_per_hour: int
    images_queued: int
    queue_cap: int
    per_user: bool = True  # False for admins: only the server's queue cap applies


def _open_images(conn: Conn, owner_clause: str, args: tuple[Any, ...]) -> int:
    row = conn.execute("SELECT coalesce(sum(images_requested), 0) AS n FROM jobs "
                       f"WHERE status IN ('queued', 'running'){owner_clause}", args).fetchone()
    return int(row["n"] if isinstance(row, dict) else row[0])  # type: ignore[index]


def enqueue_within_quota(conn: Conn, *, payloads: Sequence[dict[str, Any]], images: Sequence[int],
                         owner_id: int | None, quota: Quota, kind: JobKind = JobKind.GENERATE,
                         max_attempts: int = 3, priority: int = 0,
                         batch_keys: Sequence[str | None] | None = None) -> list[Job]:
    """Queue the jobs if the owner's quotas and the server's queue cap allow them all; QuotaExceeded otherwise.

    The check and the insert hold one advisory lock, so concurrent requests on several replicas cannot both
    pass a check that only one of them fits.
    """
    asked = sum(images)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_QUOTA_LOCK,))
        if quota.queue_cap:
            open_all = _open_images(conn, "", ())
            if open_all + asked > quota.queue_cap:
                raise QuotaExceeded(
                    f"queue_cap: the server's queue holds {open_all} images, its cap is {quota.queue_cap}; "
                    "try again when it has drained", retry_after=60, limit=quota.queue_cap,
                    remaining=max(0, quota.queue_cap - open_all))
        if quota.per_user and quota.images_queued:
            mine = _open_images(conn, " AND owner_id IS NOT DISTINCT FROM %s", (owner_id,))
            if mine + asked > quota.images_queued:
                raise QuotaExceeded(
                    f"images_queued: you have {mine} images queued or running and the limit is "
                    f"{quota.images_queued} at once (this request asks for {asked}); it frees up as your jobs finish",
                    retry_after=30, limit=quota.images_queued, remaining=max(0, quota.images_queued - mine))
        if quota.per_user and quota.images_per_hour:
            row = conn.execute(
                "SELECT coalesce(sum(images_requested), 0) AS n, "
                " coalesce(extract(epoch FROM min(created_at) + interval '1 hour' - now()), 0) AS reset "
                "FROM jobs WHERE owner_id IS NOT DISTINCT FROM %s AND created_at > now() - interval '1 hour'",
                (owner_id,)).fetchone()
            used, reset = (int(row["n"]), float(row["reset"])) if isinstance(row, dict) else (0, 0.0)
            if used + asked > quota.images_per_hour:
                raise QuotaExceeded(
                    f"images_per_hour: you asked for {used} images in the last hour and the limit is "
                    f"{quota.images_per_hour} (this request asks for {asked}); it resets in {int(reset) + 1} s",
                    retry_after=int(reset) + 1, limit=quota.images_per_hour,
                    remaining=max(0, quota.images_per_hour - used))
        ids = enqueue_jobs(conn, payloads=payloads, kind=kind, owner_id=owner_id, images=images,
                           max_attempts=max_attempts, priority=priority, batch_keys=batch_keys)
        rows = conn.execute("SELECT * FROM jobs WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()
    return [Job.model_validate(r) for r in rows]


def claim_jobs(conn: Conn, *, worker: str, limit: int = 1, lease_seconds: float = 300.0) -> list[Job]:
    """Take the next job in fair order and up to `limit - 1` more that can share its pipeline call.

    Fair order: higher priority first (admins above creators), then round-robin over owners (each owner's
    oldest job, then each owner's second, ...), then age; so one user's thousand jobs do not starve another's
    one. Jobs whose worker's lease ran out (it died) count as queued. Rows are locked with FOR UPDATE SKIP
    LOCKED, so concurrent workers never take the same job. A job that used all its attempts is marked failed,
    and a running job whose cancel was asked before its worker died is marked cancelled, instead of being
    handed out again.
    """
    with conn.transaction():
        conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_until = NULL, updated_at = now() "
            "WHERE status = 'running' AND lease_until < now() AND cancel_requested")
        conn.execute(
            "UPDATE jobs SET status = 'failed', finished_at = now(), updated_at = now(), "
            " error = coalesce(error, 'worker lost (lease expired) ' || attempts || ' times') "
            "WHERE status = 'running' AND lease_until < now() AND attempts >= max_attempts"
        )
        candidates = conn.execute(
            "SELECT id, batch_key FROM (" + _TURNS + ") ready WHERE claimable "
            "ORDER BY priority DESC, turn, id LIMIT %s", (_CANDIDATES,)).fetchall()
        if not candidates:
            return []
        locked = {int(r["id"]) for r in conn.execute(
            "SELECT id FROM jobs WHERE id = ANY(%s) AND (status = 'queued' OR (status = 'running' AND "
            "lease_until < now())) FOR UPDATE SKIP LOCKED", ([int(r["id"]) for r in candidates],)).fetchall()}
        ordered = [r for r in candidates if int(r["id"]) in locked]
        if not ordered:
            return []
        head = ordered[0]
        chosen = [int(head["id"])]
        if head["batch_key"] is not None:
            chosen += [int(r["id"]) for r in ordered[1:] if r["batch_key"] == head["batch_key"]][:max(0, limit - 1)]
        rows = conn.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = %(w)s, updated_at = now(), "
            " started_at = now(), lease_until = now() + make_interval(secs => %(lease)s), progress = NULL "
            "WHERE id = ANY(%(ids)s) RETURNING *",
            {"w": worker, "lease": lease_seconds, "ids": chosen},
        ).fetchall()
    order = {job_id: i for i, job_id in enumerate(chosen)}
    return sorted((Job.model_validate(r) for r in rows), key=lambda j: order[j.id])


def extend_lease(conn: Conn, *, job_ids: Sequence[int], worker: str, lease_seconds: float = 300.0) -> None:
    conn.execute(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => %s) "
        "WHERE id = ANY(%s) AND worker = %s AND status = 'running'",
        (lease_seconds, list(job_ids), worker),
    )


def release_jobs(conn: Conn, *, job_ids: Sequence[int], worker: str) -> None:
    """The running jobs a worker had in hand when it lost the database: their lease ends now, so the next claim
    (its own, once reconnected) takes them again instead of waiting for the lease to run out."""
    if not job_ids:
        return
    conn.execute(
        "UPDATE jobs SET lease_until = now() - interval '1 millisecond', updated_at = now() "
        "WHERE id = ANY(%s) AND worker = %s AND status = 'running'",
        (list(job_ids), worker),
    )


def complete_job(conn: Conn, *, job_id: int, worker: str, image_ids: Sequence[int]) -> bool:
    """Mark done with its images, once: the first attempt to finish links them, whichever worker ran it.

    A job is idempotent (fixed seeds, content-addressed images), so an attempt that finishes after its lease
    was taken over made the same images; it still completes the job unless another attempt already did.
    False when the job was already done.
    """
    cur = conn.execute(
        "UPDATE jobs SET status = 'done', finished_at = now(), image_ids = %s, error = NULL, lease_until = NULL, "
        " worker = %s, updated_at = now() WHERE id = %s AND status NOT IN ('done', 'cancelled')",
        (list(image_ids), worker, job_id),
    )
    return cur.rowcount == 1


def fail_job(conn: Conn, *, job_id: int, worker: str, error: str, retry: bool = False) -> None:
    """Record the error; with `retry` the job goes back to the queue while attempts remain. A job whose cancel
    was asked ends cancelled instead."""
    conn.execute(
        "UPDATE jobs SET error = %(e)s, lease_until = NULL, worker = NULL, updated_at = now(), "
        " status = CASE WHEN cancel_requested THEN 'cancelled' "
        "   WHEN %(r)s AND attempts < max_attempts THEN 'queued' ELSE 'failed' END, "
        " finished_at = CASE WHEN %(r)s AND attempts < max_attempts AND NOT cancel_requested THEN NULL "
        "   ELSE now() END "
        "WHERE id = %(id)s AND worker = %(w)s AND status = 'running'",
        {"e": error, "r": retry, "id": job_id, "w": worker},
    )


def get_job(conn: Conn, *, job_id: int) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else Job.model_validate(row)


def get_job_by_public_id(conn: Conn, *, public_id: str) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE public_id = %s", (public_id,)).fetchone()
    return None if row is None else Job.model_validate(row)


def list_jobs(conn: Conn, *, owner_id: int | None, limit: int = 50) -> list[Job]:
    """The owner's newest jobs (owner None: every job)."""
    rows = conn.execute(
        "SELECT * FROM jobs WHERE %(o)s::bigint IS NULL OR owner_id = %(o)s ORDER BY id DESC LIMIT %(l)s",
        {"o": owner_id, "l": limit}).fetchall()
    return [Job.model_validate(r) for r in rows]


def report_progress(conn: Conn, *, worker: str, progress: dict[int, dict[str, Any]],
                    previews: dict[int, str] | None = None) -> set[int]:
    """Write each running job's progress (and a preview data URL); returns the jobs to stop now: those whose
    cancel was asked, and those no longer this worker's (cancelled while queued again, or taken over)."""
    ids = list(progress)
    rows = conn.execute(
        "UPDATE jobs j SET progress = u.p::jsonb, preview = coalesce(u.v, j.preview), updated_at = now() "
        "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(id, p, v) "
        "WHERE j.id = u.id AND j.worker = %s AND j.status = 'running' RETURNING j.id, j.cancel_requested",
        (ids, [json.dumps(progress[i]) for i in ids], [(previews or {}).get(i) for i in ids], worker),
    ).fetchall()
    live = {int(r["id"]) for r in rows if not r["cancel_requested"]}
    return set(ids) - live


def cancel_job(conn: Conn, *, job_id: int) -> Job | None:
    """Cancel a queued job at once, or ask a running one's worker to stop at its next step. None: it has ended."""
    row = conn.execute(
        "UPDATE jobs SET cancel_requested = true, updated_at = now(), "
        " status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, "
        " finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END "
        "WHERE id = %s AND status IN " + _OPEN + " RETURNING *", (job_id,)).fetchone()
    return None if row is None else Job.model_validate(row)


def mark_cancelled(conn: Conn, *, job_ids: Sequence[int], worker: str) -> None:
    """The worker stopped these jobs at a step (nothing of them was written)."""
    conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_until = NULL, updated_at = now() "
        "WHERE id = ANY(%s) AND worker = %s AND status = 'running'", (list(job_ids), worker))


def queue_position(conn: Conn, *, job_id: int) -> int | None:
    """1 for the job a worker takes next, in the fair order `claim_jobs` uses; None when it is not queued."""
    row = conn.execute(
        "WITH q AS (" + _TURNS + ") "
        "SELECT (SELECT count(*) FROM q WHERE q.claimable AND (q.priority > me.priority OR (q.priority = me.priority "
        "  AND (q.turn < me.turn OR (q.turn = me.turn AND q.id < me.id))))) + 1 AS position "
        "FROM q AS me WHERE me.id = %s AND me.claimable", (job_id,)).fetchone()
    return None if row is None else int(row["position"])


def seconds_per_image(conn: Conn) -> float | None:
    """Recent speed: wall seconds per image over the last 20 finished generation jobs (None: no history)."""
    row = conn.execute(
        "SELECT sum(extract(epoch FROM finished_at - started_at)) / nullif(sum(images_requested), 0) AS s "
        "FROM (SELECT finished_at, started_at, images_requested FROM jobs WHERE status = 'done' "
        "  AND started_at IS NOT NULL AND kind <> 'reproduce' ORDER BY finished_at DESC LIMIT 20) recent"
    ).fetchone()
    return None if row is None or row["s"] is None else float(row["s"])


def open_images_ahead(conn: Conn, *, job_id: int) -> int:
    """Images queued ahead of a queued job plus those still running (for its ETA)."""
    row = conn.execute(
        "WITH q AS (" + _TURNS + "), me AS (SELECT * FROM q WHERE id = %s) "
        "SELECT coalesce((SELECT sum(q.images_requested) FROM q, me WHERE q.claimable AND (q.priority > me.priority "
        "  OR (q.priority = me.priority AND (q.turn < me.turn OR (q.turn = me.turn AND q.id < me.id))))), 0) "
        " + coalesce((SELECT sum(images_requested) FROM jobs WHERE status = 'running'), 0) AS n", (job_id,)
    ).fetchone()
    return int(row["n"]) if row else 0
