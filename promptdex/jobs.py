"""Generation job queue in PostgreSQL: enqueue, claim with FOR UPDATE SKIP LOCKED, finish or fail."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel

Conn = psycopg.Connection[Any]


class Job(BaseModel):
    """One queued unit of work (normally: generate images from a payload of settings)."""

    id: int
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
                 max_attempts: int = 3) -> list[int]:
    """Queue one job per payload; returns their ids in order."""
    ids = []
    for payload in payloads:
        row = conn.execute(
            "INSERT INTO jobs (kind, payload, max_attempts) VALUES (%s, %s, %s) RETURNING id",
            (kind, json.dumps(payload), max_attempts),
        ).fetchone()
        ids.append(int(row["id"] if isinstance(row, dict) else row[0]))  # type: ignore[index]
    return ids


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
    """Mark done with its images; False when the job was meanwhile taken by another worker."""
    cur = conn.execute(
        "UPDATE jobs SET status = 'done', finished_at = now(), image_ids = %s, error = NULL, lease_until = NULL "
        "WHERE id = %s AND worker = %s AND status = 'running'",
        (list(image_ids), job_id, worker),
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
