"""The worker takes queued jobs of every payload kind from PostgreSQL, batches them, and records what happened."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from generator.tiny import ensure_tiny_model
from generator.worker import run_worker
from promptdex.generation import JobKind
from promptdex.jobs import enqueue_jobs, get_job
from promptdex.settings import ModelsMode
from promptdex.store import count_images, get_image, get_images

pytestmark = pytest.mark.integration
SMALL = {"steps": 2, "width": 64, "height": 64, "sampler": "Euler"}


@pytest.fixture
def tiny_settings(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    models = tmp_path_factory.getbasetemp() / "generator-models"
    ensure_tiny_model(models)
    return settings.model_copy(update={"models": ModelsMode.TINY, "models_dir": models})


def work(settings: Any) -> Any:
    return run_worker(settings, once=True, batch_size=4, device="cpu", threads=2, name="test-worker")


def test_generate_jobs_are_batched_and_done_with_their_images(conn: Any, tiny_settings: Any) -> None:
    ids = enqueue_jobs(conn, payloads=[
        {"prompt": "a red barn", "seeds": [1, 2], **SMALL},
        {"prompt": "a blue barn", "seeds": [3], **SMALL},
        {"prompt": "a barn, no seeds given", "count": 2, **SMALL},
    ])
    report = work(tiny_settings)
    assert (report.done, report.failed, report.images) == (3, 0, 5)
    jobs = [get_job(conn, job_id=i) for i in ids]
    assert all(j is not None and j.status == "done" and j.attempts == 1 and j.worker == "test-worker" for j in jobs)
    images = get_images(conn, ids=[i for j in jobs if j for i in j.image_ids])
    assert sorted(im.params.seed or 0 for im in images.values())[:3] == [1, 2, 3]
    first = images[jobs[0].image_ids[0]] if jobs[0] else None
    assert first is not None and first.generation is not None
    batch = first.generation["batch"]["items"]
    assert {i["prompt"] for i in batch} == {"a red barn", "a blue barn", "a barn, no seeds given"}  # jobs batched


def test_seeds_a_job_did_not_name_are_fixed_per_job(conn: Any, tiny_settings: Any) -> None:
    from generator.worker import job_seeds
    from promptdex.jobs import claim_jobs

    [job_id] = enqueue_jobs(conn, payloads=[{"prompt": "x", "count": 3, **SMALL}])
    [job] = claim_jobs(conn, worker="w", limit=1)
    assert job.id == job_id and job_seeds(job, 3) == job_seeds(job, 3) and len(set(job_seeds(job, 3))) == 3


def test_reproduce_and_variations_payloads(conn: Any, tiny_settings: Any) -> None:
    [gen] = enqueue_jobs(conn, payloads=[{"prompt": "an owl", "seeds": [21], **SMALL}])
    work(tiny_settings)
    job = get_job(conn, job_id=gen)
    assert job is not None and job.status == "done"
    image_id = job.image_ids[0]
    [reproduce] = enqueue_jobs(conn, payloads=[{"image_id": image_id}], kind=JobKind.REPRODUCE)
    [variations] = enqueue_jobs(conn, payloads=[{"image_id": image_id, "count": 2}], kind=JobKind.VARIATIONS)
    report = work(tiny_settings)
    assert (report.done, report.failed) == (2, 0), report.errors
    done = get_job(conn, job_id=reproduce)
    assert done is not None and done.status == "done" and done.image_ids == [image_id]
    varied = get_job(conn, job_id=variations)
    assert varied is not None and varied.status == "done" and len(varied.image_ids) == 2
    source = get_image(conn, image_id=image_id)
    for new_id in varied.image_ids:
        image = get_image(conn, image_id=new_id)
        assert image is not None and source is not None
        assert image.params.prompt == "an owl" and image.params.steps == 2 and image.params.seed != 21


def test_failed_jobs_record_their_error(conn: Any, tiny_settings: Any) -> None:
    ids = enqueue_jobs(conn, payloads=[
        {"prompt": "x", "seeds": [1], **{**SMALL, "sampler": "Euler b"}},
        {"prompt": "x", "seeds": [1], **{**SMALL, "width": 65}},
    ])
    ids += enqueue_jobs(conn, payloads=[{"image_id": 999}], kind=JobKind.REPRODUCE)
    ids += enqueue_jobs(conn, payloads=[{"kind": "upscale", "prompt": "x"}, {"prompt": "x", "seeds": [1], "stepz": 3}])
    with pytest.raises(psycopg.errors.CheckViolation):  # the kind column holds only kinds a worker runs
        conn.execute("INSERT INTO jobs (kind, payload) VALUES ('upscale', '{}')")
    report = work(tiny_settings)
    assert (report.done, report.failed) == (0, 5)
    errors = []
    for job_id in ids:
        job = get_job(conn, job_id=job_id)
        assert job is not None and job.status == "failed" and job.attempts == 1 and job.finished_at is not None
        errors.append(job.error or "")
    assert errors[0].startswith("sampler: unknown sampler 'Euler b'")  # named as the API names it, not --sampler
    assert errors[1].startswith("width: 65 is not accepted")
    assert "image 999 is not in the corpus" in errors[2]
    assert "field 'kind'" in errors[3]
    assert "'stepz'" in errors[4]
    assert count_images(conn) == 0


def test_max_jobs_stops_after_that_many(conn: Any, tiny_settings: Any) -> None:
    ids = enqueue_jobs(conn, payloads=[{"prompt": f"p{i}", "seeds": [i], **SMALL} for i in range(3)])
    report = run_worker(tiny_settings, max_jobs=2, batch_size=4, device="cpu", threads=2, poll=0.1)
    assert report.done == 2
    statuses = [getattr(get_job(conn, job_id=i), "status", None) for i in ids]
    assert statuses == ["done", "done", "queued"]
