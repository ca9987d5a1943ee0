"""Job routes: ask a `promptdex worker` to reproduce an image or make variations, and follow the job."""

from __future__ import annotations

from fastapi import APIRouter

from promptdex import jobs
from promptdex.errors import NotFound
from search_api.deps import Service, State
from search_api.schemas import JobCreate, JobOut, JobsCreated

router = APIRouter(tags=["jobs"])


@router.post("/api/jobs", response_model=JobsCreated, status_code=201)
def create_job(state: State, service: Service, body: JobCreate) -> JobsCreated:
    """Queue a job (payload `{"kind": "reproduce"|"variations", "image_id": N, "count": K}`); a worker runs it."""
    service.image(body.image_id)  # 404 for an unknown image
    payload = {"kind": body.kind, "image_id": body.image_id}
    if body.kind == "variations":
        payload["count"] = body.count
    with state.pool.connection() as conn:
        ids = jobs.enqueue_jobs(conn, payloads=[payload])
    return JobsCreated(job_ids=ids)


@router.get("/api/jobs/{job_id}", response_model=JobOut)
def get_job(state: State, job_id: int) -> JobOut:
    with state.pool.connection() as conn:
        job = jobs.get_job(conn, job_id=job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    return JobOut(id=job.id, kind=str(job.payload.get("kind", job.kind)), status=job.status, attempts=job.attempts,
                  error=job.error, image_ids=job.image_ids, payload=job.payload, created_at=job.created_at,
                  finished_at=job.finished_at)
