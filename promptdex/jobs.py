"""Generation job queue in PostgreSQL: enqueue, claim with FOR UPDATE SKIP LOCKED, finish or fail."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel

from promptdex.errors import QuotaExceeded

Conn = psycopg.Connection[Any]
_QUOTA_LOCK = 0x70647851  # pg_advisory_xact_lock key: quota checks and their inserts run one at a time


class Job(BaseModel):
    """One queued unit of work (normally: generate images from a payload of settings)."""

    id: int
    public_id: str
    owner_id: int | None = None
    images_requested: int = 1
    kind: str
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    worker: str | None
    lease_until: datetime | None
    error: str | None
    image_ids: list[int]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def enqueue_jobs(conn: Conn, *, payloads: Sequence[dict[str, Any]], kind: str = "generate",
                 max_attempts: int = 3, owner_id: int | None = None, images: Sequence[int] | None = None) -> list[int]:
    """Queue one job per payload (`images[i]`: how many images job i asks for); returns their ids in order."""
    ids = []
    for i, payload in enumerate(payloads):
        row = conn.execute(
            "INSERT INTO jobs (kind, payload, max_attempts, owner_id, images_requested) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id",
            (kind, json.dumps(payload), max_attempts, owner_id, images[i] if images is not None else 1),
        ).fetchone()
        ids.append(int(row["id"] if isinstance(row, dict) else row[0]))  # type: ignore[index]
    return ids


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
                         owner_id: int | None, quota: Quota, kind: str = "generate",
                         max_attempts: int = 3) -> list[Job]:
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
                           max_attempts=max_attempts)
        rows = conn.execute("SELECT * FROM jobs WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()
    return [Job.model_validate(r) for r in rows]


def claim_jobs(conn: Conn, *, worker: str, limit: int = 1, lease_seconds: float = 300.0,
               kind: str = "generate") -> list[Job]:
    """Take up to `limit` queued jobs, or running ones whose worker's lease ran out (it died).

    Rows are locked with FOR UPDATE SKIP LOCKED, so concurrent workers never take the same job.
    A job that already used all its attempts is marked failed instead of being handed out again.
    """
    with conn.transaction():
        conn.execute(
            "UPDATE jobs SET status = 'failed', finished_at = now(), "
            " error = coalesce(error, 'worker lost (lease expired) ' || attempts || ' times') "
            "WHERE status = 'running' AND lease_until < now() AND attempts >= max_attempts"
        )
        rows = conn.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = %(w)s, "
            " started_at = now(), lease_until = now() + make_interval(secs => %(lease)s) "
            "WHERE id IN (SELECT id FROM jobs WHERE kind = %(kind)s AND (status = 'queued' "
            "   OR (status = 'running' AND lease_until < now())) "
            " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING *",
            {"w": worker, "lease": lease_seconds, "limit": limit, "kind": kind},
        ).fetchall()
    return sorted((Job.model_validate(r) for r in rows), key=lambda j: j.id)


def extend_lease(conn: Conn, *, job_ids: Sequence[int], worker: str, lease_seconds: float = 300.0) -> None:
    conn.execute(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => %s) "
        "WHERE id = ANY(%s) AND worker = %s AND status = 'running'",
        (lease_seconds, list(job_ids), worker),
    )


def complete_job(conn: Conn, *, job_id: int, worker: str, image_ids: Sequence[int]) -> bool:
    """Mark done with its images, once: the first attempt to finish links them, whichever worker ran it.

    A job is idempotent (fixed seeds, content-addressed images), so an attempt that finishes after its lease
    was taken over made the same images; it still completes the job unless another attempt already did.
    False when the job was already done.
    """
    cur = conn.execute(
        "UPDATE jobs SET status = 'done', finished_at = now(), image_ids = %s, error = NULL, lease_until = NULL, "
        " worker = %s WHERE id = %s AND status <> 'done'",
        (list(image_ids), worker, job_id),
    )
    return cur.rowcount == 1


def fail_job(conn: Conn, *, job_id: int, worker: str, error: str, retry: bool = False) -> None:
    """Record the error; with `retry` the job goes back to the queue while attempts remain."""
    conn.execute(
        "UPDATE jobs SET error = %s, lease_until = NULL, worker = NULL, "
        " status = CASE WHEN %s AND attempts < max_attempts THEN 'queued' ELSE 'failed' END, "
        " finished_at = CASE WHEN %s AND attempts < max_attempts THEN NULL ELSE now() END "
        "WHERE id = %s AND worker = %s",
        (error, retry, retry, job_id, worker),
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
