"""Job routes: reproduce an image or make variations of it, follow any job (also by server-sent events), cancel.

Queuing needs the creator role and fits the caller's quotas; a job is visible to its owner and admins only,
by an opaque id that cannot be guessed from another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from promptdex import jobs
from promptdex.errors import Conflict, NotFound
from promptdex.generation import JobKind
from promptdex.jobs import Job
from search_api.deps import Conn, Service, State
from search_api.errors import responses
from search_api.generations import check_prompt, job_view
from search_api.schemas import JobCreate, JobList, JobOut, JobsCreated
from search_api.security import Caller, Creator, CurrentUser, visible_image

router = APIRouter(tags=["jobs"], responses=responses())

JobId = Annotated[str, Path(min_length=8, max_length=64, pattern=r"^[0-9a-f]+$", description="The job's opaque id.")]
EVENT_POLL_SECONDS = 0.4  # how often a stream looks at its job's row
EVENT_KEEPALIVE_SECONDS = 15.0
EVENT_STREAM_SECONDS = 600.0  # a stream ends after this; EventSource reconnects by itself


def _visible(job: Job | None, caller: Caller) -> bool:
    if job is None:
        return False
    if caller.is_admin or job.owner_id is None:  # ownerless jobs: queued anonymously on a loopback instance
        return True
    return caller.user is not None and job.owner_id == caller.user.id


@router.post("/api/jobs", response_model=JobsCreated, status_code=201, responses=responses(404))
async def create_job(state: State, service: Service, caller: Creator, body: JobCreate) -> JobsCreated:
    """Queue a job (`{"kind": "reproduce"|"variations", "image_id": N, "count": K}`); a worker runs it."""
    # 404 for an unknown image, or one the caller may not see; its prompt is checked as a new request's is
    image = await run_in_threadpool(visible_image, service, state, caller, body.image_id)
    check_prompt(state.engines.safety_scorer(), state.settings, image.params.prompt, is_admin=caller.is_admin,
                 field="image_id")
    payload: dict[str, object] = {"image_id": body.image_id}
    images = 1
    if body.kind == "variations":
        payload["count"] = images = body.count
    api = state.settings.api
    quota = jobs.Quota(images_per_hour=api.images_per_hour, images_queued=api.images_queued,
                       queue_cap=api.queue_cap, per_user=not caller.is_admin)

    def enqueue() -> list[Job]:
        with state.pool.connection() as conn:
            return jobs.enqueue_within_quota(conn, payloads=[payload], images=[images], quota=quota,
                                             owner_id=caller.user.id if caller.user else None,
                                             kind=JobKind(body.kind), priority=10 if caller.is_admin else 0,
                                             max_attempts=state.settings.generator.max_attempts)

    created = await run_in_threadpool(enqueue)
    return JobsCreated(job_ids=[j.public_id for j in created])


@router.get("/api/jobs", response_model=JobList)
def list_jobs(conn: Conn, caller: CurrentUser, limit: Annotated[int, Query(ge=1, le=200)] = 50,
              mine: Annotated[bool, Query(description="Only the caller's jobs (admins: false lists everyone's).")]
              = True) -> JobList:
    """The caller's newest jobs (an anonymous caller has none listed)."""
    if caller.user is None:
        return JobList(data=[], count=0)
    found = jobs.list_jobs(conn, owner_id=None if caller.is_admin and not mine else caller.user.id, limit=limit)
    return JobList(data=[job_view(conn, j) for j in found], count=len(found))


def _find(conn: Conn, caller: Caller, job_id: str) -> Job:
    job = jobs.get_job_by_public_id(conn, public_id=job_id)
    if job is None or not _visible(job, caller):
        raise NotFound(f"no job with id {job_id} that you can see")
    return job


@router.get("/api/jobs/{job_id}", response_model=JobOut, responses=responses(404))
def get_job(conn: Conn, caller: CurrentUser, job_id: JobId) -> JobOut:
    """Status, queue position, step i of N, ETA, preview, image ids or the error."""
    return job_view(conn, _find(conn, caller, job_id))


@router.delete("/api/jobs/{job_id}", response_model=JobOut, responses=responses(404, 409))
def cancel_job(conn: Conn, caller: Creator, job_id: JobId) -> JobOut:
    """Cancel: a queued job at once; a running one stops at its next step and writes nothing half-made
    (`cancel_requested` is true until its worker has stopped)."""
    job = _find(conn, caller, job_id)
    cancelled = jobs.cancel_job(conn, job_id=job.id)
    if cancelled is None:
        raise Conflict(f"job {job_id} has already ended ({job.status}); nothing to cancel")
    return job_view(conn, cancelled)


_EVENTS: dict[int | str, dict[str, Any]] = {200: {
    "description": "Server-sent events: `event: job` with the job as `data` each time it changes; the stream ends "
    "after the job ends.", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


@router.get("/api/jobs/{job_id}/events", response_class=StreamingResponse, responses={**responses(404), **_EVENTS})
async def job_events(request: Request, state: State, caller: CurrentUser, job_id: JobId) -> StreamingResponse:
    """Live progress of a job, with small previews, as server-sent events."""

    def read() -> tuple[Job | None, JobOut | None]:
        with state.pool.connection() as conn:
            job = jobs.get_job_by_public_id(conn, public_id=job_id)
            return job, (job_view(conn, job) if job is not None else None)

    first, view = await run_in_threadpool(read)
    if first is None or view is None or not _visible(first, caller):
        raise NotFound(f"no job with id {job_id} that you can see")

    async def stream() -> AsyncIterator[str]:
        last, seen = view, None
        started = last_sent = time.monotonic()
        yield "retry: 2000\n\n"
        while True:
            text = last.model_dump_json()
            if text != seen:
                seen, last_sent = text, time.monotonic()
                yield f"event: job\ndata: {text}\n\n"
            if last.status in ("done", "failed", "cancelled") or time.monotonic() - started > EVENT_STREAM_SECONDS:
                return
            if time.monotonic() - last_sent > EVENT_KEEPALIVE_SECONDS:
                last_sent = time.monotonic()
                yield ": keepalive\n\n"
            await asyncio.sleep(EVENT_POLL_SECONDS)
            if await request.is_disconnected():
                return
            job, fresh = await run_in_threadpool(read)
            if job is None or fresh is None:
                return
            last = fresh

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
