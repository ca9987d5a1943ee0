"""Corpus store on a real PostgreSQL: add, dedupe, get, filter, count, bulk load, concurrent writers."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from promptdex import index_state, jobs, store
from promptdex.params import GenerationParams, HiresParams
from promptdex.records import ClassifierScore, ImageFilter, NewImage, SafetyScore

pytestmark = [pytest.mark.integration, pytest.mark.external_db]

MODELS = ["sd15", "sdxl", "turbo"]
SAMPLERS = ["Euler a", "DPM++ 2M", "UniPC", "DDIM"]
SIZES = [(512, 512), (768, 512), (1024, 1024)]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def sha(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def make_image(i: int, *, rng: random.Random | None = None, prompt: str | None = None) -> NewImage:
    rng = rng or random.Random(i)
    w, h = rng.choice(SIZES)
    return NewImage(
        sha256=sha(i), path=f"images/{i}.png", width=w, height=h, format="PNG", file_size=1000 + i,
        source=rng.choice(["generated", "a1111", "comfyui"]),
        params=GenerationParams(
            prompt=prompt if prompt is not None else f"prompt number {i % 997}, detailed",
            negative_prompt="blurry", seed=rng.randrange(2**32), steps=rng.randint(1, 60),
            cfg=rng.choice([1.0, 4.5, 7.0, 9.5]), sampler=rng.choice(SAMPLERS), scheduler="Karras",
            width=w, height=h, model=rng.choice(MODELS), model_hash=f"{i % 7:010x}",
        ),
        raw_metadata={"parameters": f"raw text {i}"},
        created_at=T0 + timedelta(minutes=i),
    )


def test_add_get_round_trips_every_field(conn: Any) -> None:
    image = make_image(1).model_copy(update={"init_image_sha256": sha("init")})
    image.params.hires = HiresParams(upscale=2.0, upscaler="Latent", steps=10, denoising_strength=0.5)
    image.params.clip_skip = 2
    image.params.extra = {"Lora hashes": "a: 123"}
    image_id, created = store.add_image(conn, image=image)
    assert created
    got = store.get_image(conn, image_id=image_id)
    assert got is not None
    assert got.params == image.params
    assert got.sha256 == image.sha256 and got.width == image.width and got.source == image.source
    assert got.raw_metadata == {"parameters": "raw text 1"}
    assert got.init_image_sha256 == sha("init")
    assert store.get_image_by_sha256(conn, sha256=image.sha256) == got
    assert store.get_image(conn, image_id=image_id + 1000) is None


def test_seed_beyond_bigint_is_kept(conn: Any) -> None:
    image = make_image(2)
    image.params.seed = 2**64 - 1  # ComfyUI seeds go up to 0xffffffffffffffff
    image_id, _ = store.add_image(conn, image=image)
    assert store.get_image(conn, image_id=image_id).params.seed == 2**64 - 1
    assert store.count_images(conn, filters=ImageFilter(seed=2**64 - 1)) == 1


def test_same_content_twice_gives_one_row(conn: Any) -> None:
    first = store.add_image(conn, image=make_image(3))
    again = store.add_image(conn, image=make_image(3).model_copy(update={"path": "elsewhere/copy.png"}))
    assert again == (first[0], False)
    assert store.count_images(conn) == 1
    added = store.bulk_load(conn, images=[make_image(3), make_image(4), make_image(4)])
    assert added == 1
    assert store.count_images(conn) == 2


def _scored(image: NewImage, score: float) -> NewImage:
    image.safety = SafetyScore(score=score, by="words", key="k1",
                               scores={"words": ClassifierScore(score=score, key="k1", of="prompt")})
    return image


def test_add_images_stores_a_batch_as_add_image_would_one_by_one(conn: Any) -> None:
    before, _ = store.add_image(conn, image=make_image(20))
    big = make_image(21, prompt="a shared prompt")
    big.params.seed = 2**64 - 1
    batch = [_scored(big, 0.75), make_image(22, prompt=""), make_image(20),  # 20: in the corpus already
             _scored(make_image(23, prompt="a shared prompt"), 0.1), make_image(21, prompt="a shared prompt"),
             make_image(24)]
    with conn.transaction():
        added = store.add_images(conn, images=batch)
    assert [created for _, created in added] == [True, True, False, True, False, True]
    assert added[2][0] == before and added[4][0] == added[0][0]  # a duplicate gets the first row's id
    assert len({image_id for image_id, _ in added}) == 5 and store.count_images(conn) == 5
    got = store.get_images(conn, ids=[image_id for image_id, _ in added])
    for (image_id, created), image in zip(added, batch, strict=True):
        if created:
            assert got[image_id].params == image.params and got[image_id].sha256 == image.sha256
            assert got[image_id].raw_metadata == image.raw_metadata and got[image_id].path == image.path
    assert got[added[0][0]].params.seed == 2**64 - 1
    assert got[added[1][0]].prompt_id is None
    assert got[added[0][0]].prompt_id == got[added[3][0]].prompt_id is not None
    [prompt] = conn.execute("SELECT nsfw, nsfw_key FROM prompts WHERE text = 'a shared prompt'").fetchall()
    assert (prompt["nsfw"], prompt["nsfw_key"]) == (0.75, "k1")  # the first occurrence's score, as add_image's
    assert got[added[3][0]].safety is not None and got[added[3][0]].safety.score == pytest.approx(0.1)
    with conn.transaction():  # again in one transaction: nothing new, every id found
        assert store.add_images(conn, images=batch[:2]) == [(added[0][0], False), (added[1][0], False)]
        assert store.add_images(conn, images=[make_image(25)])[0][1] is True
    assert store.add_images(conn, images=[]) == []


def test_add_images_refuses_a_batch_with_a_bad_value_whole(conn: Any) -> None:
    with pytest.raises(psycopg.DataError), conn.transaction():
        store.add_images(conn, images=[make_image(30), make_image(31, prompt="a nul \x00 byte")])
    assert store.count_images(conn) == 0 and store.count_rows(conn)["prompts"] == 0


def test_add_images_finds_a_row_another_session_commits_while_it_waits(db: Any, conn: Any) -> None:
    """The batch's insert waits on another session's uncommitted row of the same content; once that commits, the
    statement's snapshot, taken before, cannot see it: the id is read again after, and the batch is not created."""
    late, fresh = make_image(40, prompt=""), make_image(41, prompt="")
    result: list[Any] = []
    with db.connect(autocommit=True) as other, other.transaction():
        theirs, _ = store.add_image(other, image=late)
        pid_box: list[int] = []

        def batch() -> None:
            with db.connect(autocommit=True) as mine:
                pid_box.append(mine.info.backend_pid)
                with mine.transaction():
                    result.extend(store.add_images(mine, images=[late, fresh]))

        thread = threading.Thread(target=batch)
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the batch's insert waits on the other session's row
            waiting = pid_box and conn.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid_box[0],)).fetchone()
            if waiting and waiting["wait_event_type"] == "Lock":
                break
            time.sleep(0.02)
        else:
            pytest.fail("the batch never waited on the other session's uncommitted row")
    thread.join(30)
    assert not thread.is_alive()
    assert result[0] == (theirs, False) and result[1][1] is True
    assert store.count_images(conn) == 2


def test_images_sharing_a_prompt_share_one_prompt_row(conn: Any) -> None:
    a, _ = store.add_image(conn, image=make_image(10, prompt="a red fox"))
    b, _ = store.add_image(conn, image=make_image(11, prompt="a red fox"))
    c, _ = store.add_image(conn, image=make_image(12, prompt=""))
    got = store.get_images(conn, ids=[a, b, c])
    assert got[a].prompt_id == got[b].prompt_id is not None
    assert got[c].prompt_id is None and got[c].params.prompt == ""
    assert store.count_rows(conn)["prompts"] == 1


def test_ten_thousand_rows_and_every_filter(conn: Any) -> None:
    images = [make_image(i) for i in range(10_000)]
    assert store.bulk_load(conn, images=images) == 10_000
    assert store.count_images(conn) == 10_000

    def expect(pred: Any) -> int:
        return sum(1 for im in images if pred(im))

    cases = [
        (ImageFilter(model="sdxl"), lambda im: im.params.model == "sdxl"),
        (ImageFilter(sampler="DPM++ 2M"), lambda im: im.params.sampler == "DPM++ 2M"),
        (ImageFilter(width=768, height=512), lambda im: (im.width, im.height) == (768, 512)),
        (ImageFilter(min_steps=10, max_steps=20), lambda im: 10 <= im.params.steps <= 20),
        (ImageFilter(min_cfg=4.5, max_cfg=7.0), lambda im: 4.5 <= im.params.cfg <= 7.0),
        (ImageFilter(seed=images[1234].params.seed), lambda im: im.params.seed == images[1234].params.seed),
        (ImageFilter(source="comfyui"), lambda im: im.source == "comfyui"),
        (ImageFilter(since=T0 + timedelta(minutes=100), until=T0 + timedelta(minutes=200)),
         lambda im: T0 + timedelta(minutes=100) <= im.created_at < T0 + timedelta(minutes=200)),
        (ImageFilter(model="sd15", sampler="UniPC", min_steps=30),
         lambda im: im.params.model == "sd15" and im.params.sampler == "UniPC" and im.params.steps >= 30),
    ]
    for filters, pred in cases:
        expected = expect(pred)
        assert expected > 0, filters
        assert store.count_images(conn, filters=filters) == expected, filters
        listed = store.filter_images(conn, filters=filters, limit=20_000)
        assert len(listed) == expected and all(pred(im) for im in listed), filters


def test_keyset_pages_cover_everything_once_in_order(conn: Any) -> None:
    store.bulk_load(conn, images=[make_image(i) for i in range(250)])
    seen: list[int] = []
    after = None
    while True:
        page = store.filter_images(conn, order="newest", limit=40, after=after)
        if not page:
            break
        seen.extend(im.id for im in page)
        after = (page[-1].created_at, page[-1].id)
    assert len(seen) == len(set(seen)) == 250
    created = {im.id: im.created_at for im in store.filter_images(conn, limit=1000)}
    assert [created[i] for i in seen] == sorted(created.values(), reverse=True)


def _writer(url: str, start: int, count: int) -> None:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for i in range(start, start + count):
            store.add_image(conn, image=make_image(i, prompt=f"shared prompt {i % 5}"))


def test_four_writer_processes_at_once_lose_nothing(db: Any, conn: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    # overlapping ranges: every image is written by two processes
    procs = [ctx.Process(target=_writer, args=(db.url, k * 100, 200)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert store.count_images(conn) == 500
    assert store.count_rows(conn)["prompts"] == 5
    shas = {r["sha256"] for r in conn.execute("SELECT sha256 FROM images").fetchall()}
    assert shas == {sha(i) for i in range(500)}


def test_job_queue_claims_each_job_once(conn: Any, db: Any) -> None:
    ids = jobs.enqueue_jobs(conn, payloads=[{"prompt": f"p{i}"} for i in range(6)])  # one batch key: same settings
    with db.connect(autocommit=True) as other:
        a = jobs.claim_jobs(conn, worker="a", limit=4)
        b = jobs.claim_jobs(other, worker="b", limit=4)
    assert sorted(j.id for j in a + b) == ids
    assert jobs.complete_job(conn, job_id=a[0].id, worker="a", image_ids=[1, 2])
    # a job is linked to its images once: whoever finishes first; a later finisher changes nothing
    assert not jobs.complete_job(conn, job_id=a[0].id, worker="b", image_ids=[3])
    jobs.fail_job(conn, job_id=b[0].id, worker="b", error="out of memory")
    done, failed = jobs.get_job(conn, job_id=a[0].id), jobs.get_job(conn, job_id=b[0].id)
    assert done.status == "done" and done.image_ids == [1, 2] and done.worker == "a"
    assert failed.status == "failed" and failed.error == "out of memory"


def test_an_attempt_that_lost_its_lease_still_links_its_images_once(conn: Any) -> None:
    (job_id,) = jobs.enqueue_jobs(conn, payloads=[{"prompt": "x"}], max_attempts=1)
    jobs.claim_jobs(conn, worker="slow", lease_seconds=0.01)
    conn.execute("SELECT pg_sleep(0.05)")
    assert jobs.claim_jobs(conn, worker="other") == []  # attempts used up: marked failed (worker lost)
    assert jobs.get_job(conn, job_id=job_id).status == "failed"
    assert jobs.complete_job(conn, job_id=job_id, worker="slow", image_ids=[7])  # its images were made
    job = jobs.get_job(conn, job_id=job_id)
    assert job.status == "done" and job.image_ids == [7] and job.error is None
    assert not jobs.complete_job(conn, job_id=job_id, worker="other", image_ids=[7])


def test_expired_lease_is_taken_again(conn: Any) -> None:
    (job_id,) = jobs.enqueue_jobs(conn, payloads=[{"prompt": "x"}])
    (claimed,) = jobs.claim_jobs(conn, worker="dies", lease_seconds=0.01)
    assert claimed.id == job_id
    conn.execute("SELECT pg_sleep(0.05)")
    (again,) = jobs.claim_jobs(conn, worker="lives")
    assert again.id == job_id and again.attempts == 2 and again.worker == "lives"


def test_index_state_records_each_item_once(conn: Any) -> None:
    ids = [store.add_image(conn, image=make_image(i))[0] for i in range(5)]
    index_state.upsert_bundle(conn, name="clip", kind="image", model="tiny", dim=8, metric="ip",
                              path="indexes/clip", manifest={})
    assert index_state.unindexed_image_ids(conn, bundle="clip", limit=10) == ids
    assert index_state.record_indexed(conn, bundle="clip", item_ids=ids[:3]) == 3
    assert index_state.record_indexed(conn, bundle="clip", item_ids=ids[:4]) == 1
    assert index_state.unindexed_image_ids(conn, bundle="clip", limit=10) == ids[4:]
    assert index_state.list_bundles(conn)[0]["count"] == 4


def test_claims_go_by_priority_then_round_robin_over_owners_and_take_compatible_jobs(conn: Any) -> None:
    from promptdex import accounts

    heavy = accounts.add_user(conn, name="heavy", role=accounts.Role.CREATOR, password="pw-heavy-123")
    light = accounts.add_user(conn, name="light", role=accounts.Role.CREATOR, password="pw-light-123")
    boss = accounts.add_user(conn, name="boss", role=accounts.Role.ADMIN, password="pw-boss-1234")
    small = {"steps": 2, "width": 64, "height": 64}
    h = jobs.enqueue_jobs(conn, payloads=[{"prompt": f"h{i}", **small} for i in range(3)], owner_id=heavy.id)
    [lt] = jobs.enqueue_jobs(conn, payloads=[{"prompt": "l", "steps": 9}], owner_id=light.id)
    [b] = jobs.enqueue_jobs(conn, payloads=[{"prompt": "b", "steps": 5}], owner_id=boss.id, priority=10)
    assert [jobs.queue_position(conn, job_id=i) for i in (b, h[0], lt, h[1], h[2])] == [1, 2, 3, 4, 5]
    order = [j.id for _ in range(5) for j in jobs.claim_jobs(conn, worker="w", limit=1)]
    assert order == [b, h[0], lt, h[1], h[2]]  # the admin first, then one job per user in turn

    [odd] = jobs.enqueue_jobs(conn, payloads=[{"prompt": "odd", "steps": 7}], owner_id=light.id)
    assert jobs.claim_jobs(conn, worker="w", limit=4)[0].id == odd  # heavy's 3 jobs still run: light goes first
    for job_id in (*order, odd):
        jobs.complete_job(conn, job_id=job_id, worker="w", image_ids=[])
    more = jobs.enqueue_jobs(conn, payloads=[{"prompt": f"m{i}", **small} for i in range(3)], owner_id=heavy.id)
    [odd] = jobs.enqueue_jobs(conn, payloads=[{"prompt": "odd", "steps": 7}], owner_id=light.id)
    taken = jobs.claim_jobs(conn, worker="w", limit=4)
    assert [j.id for j in taken] == more  # the head job and the jobs that can share its pipeline call
    assert jobs.get_job(conn, job_id=odd).status == "queued"


def test_progress_and_cancel_through_the_queue(conn: Any) -> None:
    [a, b] = jobs.enqueue_jobs(conn, payloads=[{"prompt": "a"}, {"prompt": "b"}])
    [queued] = jobs.enqueue_jobs(conn, payloads=[{"prompt": "q", "steps": 3}])
    claimed = jobs.claim_jobs(conn, worker="w", limit=2)
    assert [j.id for j in claimed] == [a, b]
    progress = {i: {"step": 1, "steps": 4, "images_done": 0, "images": 1, "fraction": 0.25} for i in (a, b)}
    preview = {a: "data:image/png;base64,AA=="}
    assert jobs.report_progress(conn, worker="w", progress=progress, previews=preview) == set()
    assert jobs.get_job(conn, job_id=a).progress["step"] == 1 and jobs.get_job(conn, job_id=a).preview
    assert jobs.cancel_job(conn, job_id=b).status == "running"  # running: its worker is asked to stop
    assert jobs.report_progress(conn, worker="w", progress=progress) == {b}
    jobs.mark_cancelled(conn, job_ids=[b], worker="w")
    assert jobs.get_job(conn, job_id=b).status == "cancelled"
    assert jobs.cancel_job(conn, job_id=queued).status == "cancelled"  # queued: at once
    assert jobs.cancel_job(conn, job_id=queued) is None  # it has ended
    assert not jobs.complete_job(conn, job_id=b, worker="w", image_ids=[1])  # a cancelled job stays cancelled
