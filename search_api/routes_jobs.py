"""Job routes: ask a `promptdex worker` to reproduce an image or make variations, and follow the job.

Queuing needs the creator role and fits the caller's quotas; a job is visible to its owner and admins only,
by an opaque id that cannot be guessed from another.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool

from promptdex import jobs
from promptdex.errors import NotFound
from promptdex.jobs import Job
from search_api.deps import Conn, Service, State
from search_api.errors import responses
from search_api.schemas import JobCreate, JobList, JobOut, JobsCreated
from search_api.security import Caller, Creator, CurrentUser

router = APIRouter(tags=["jobs"], responses=responses())

JobId = Annotated[str, Path(min_length=8, max_length=64, pattern=r"^[0-9a-f]+$", description="The job's opaque id.")]


def job_out(job: Job) -> JobOut:
    return JobOut(id=job.public_id, kind=str(job.payload.get("kind", job.kind)), status=job.status,
                  attempts=job.attempts, error=job.error, image_ids=job.image_ids, payload=job.payload,
                  created_at=job.created_at, finished_at=job.finished_at)


def _visible(job: Job | None, caller: Caller) -> bool:
    if job is None:
        return False
    if caller.is_admin or job.owner_id is None:  # ownerless jobs: queued anonymously on a loopback instance
        return True
    return caller.user is not None and job.owner_id == caller.user.id


@router.post("/api/jobs", response_model=JobsCreated, status_code=201, responses=responses(404))
async def create_job(state: State, service: Service, caller: Creator, body: JobCreate) -> JobsCreated:
    """Queue a job (`{"kind": "reproduce"|"variations", "image_id": N, "count": K}`); a worker runs it."""
    await run_in_threadpool(service.image, body.image_id)  # 404 for an unknown image
    payload: dict[str, object] = {"kind": body.kind, "image_id": body.image_id}
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
                                             max_attempts=state.settings.generator.max_attempts)

    created = await run_in_threadpool(enqueue)
    return JobsCreated(job_ids=[j.public_id for j in created])


@router.get("/api/jobs", response_model=JobList)
def list_jobs(conn: Conn, caller: CurrentUser,
              limit: Annotated[int, Query(ge=1, le=200)] = 50) -> JobList:
    """The caller's newest jobs (an anonymous caller has none listed)."""
    if caller.user is None:
        return JobList(data=[], count=0)
    found = jobs.list_jobs(conn, owner_id=caller.user.id, limit=limit)
    return JobList(data=[job_out(j) for j in found], count=len(found))


@router.get("/api/jobs/{job_id}", response_model=JobOut, responses=responses(404))
def get_job(conn: Conn, caller: CurrentUser, job_id: JobId) -> JobOut:
    job = jobs.get_job_by_public_id(conn, public_id=job_id)
    if job is None or not _visible(job, caller):
        raise NotFound(f"no job with id {job_id} that you can see")
    return job_out(job)
