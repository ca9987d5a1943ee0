"""The generator's subcommands through `promptdex.cli.main` (argument parsing to output), in this process."""

from __future__ import annotations

import json
from typing import Any

import pytest
from PIL import Image

from generator.tiny import ensure_tiny_model
from promptdex.cli import main
from promptdex.jobs import get_job
from promptdex.store import get_image

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(settings: Any, database_url: str, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    models = tmp_path_factory.getbasetemp() / "generator-models"
    ensure_tiny_model(models)
    for key, value in {"PROMPTDEX_DATABASE_URL": database_url, "PROMPTDEX_DATA_DIR": str(settings.data_dir),
                       "PROMPTDEX_MODELS": "tiny", "PROMPTDEX_MODELS_DIR": str(models),
                       "PROMPTDEX_GENERATOR__THREADS": "2", "PROMPTDEX_GENERATOR__DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, value)

    def call(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


SMALL = ("--steps", "2", "--size", "64x64")


def seed_of(conn: Any, image_id: int) -> int | None:
    image = get_image(conn, image_id=image_id)
    assert image is not None
    return image.params.seed


def test_generate_prints_ids_and_a_summary(cli: Any, conn: Any) -> None:
    code, out, err = cli("generate", "a tower", "--seed", "3", "--count", "3", "--batch", "2", *SMALL)
    assert code == 0, err
    ids = [int(i) for i in out.split()]
    assert len(ids) == 3 and "generated 3 images (3 new, 0 already in the corpus, 0 blocked)" in err
    assert [seed_of(conn, i) for i in ids] == [3, 4, 5]


def test_random_seeds_are_drawn_and_recorded(cli: Any, conn: Any) -> None:
    code, out, err = cli("generate", "a tower", "--count", "2", "--json", *SMALL)
    assert code == 0, err
    seeds = [seed_of(conn, i) for i in json.loads(out)]
    assert len(seeds) == 2 and all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)


def test_like_makes_variations_and_reproduce_reports(cli: Any, conn: Any, settings: Any) -> None:
    code, out, err = cli("generate", "a tower", "--seeds", "8", "--sampler", "Heun", "--cfg", "4", "--json", *SMALL)
    assert code == 0, err
    [source] = json.loads(out)
    code, out, err = cli("generate", "--like", str(source), "--count", "2", "--json")
    assert code == 0, err
    new = json.loads(out)
    assert len(new) == 2 and source not in new
    for image_id in new:
        image = get_image(conn, image_id=image_id)
        assert image is not None and (image.params.prompt, image.params.sampler, image.params.cfg) == (
            "a tower", "Heun", 4.0)

    code, out, err = cli("reproduce", str(source))
    assert code == 0 and "reproduced bit for bit" in out, err
    image = get_image(conn, image_id=source)
    assert image is not None
    path = settings.images_path / image.path
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    code, out, err = cli("reproduce", str(source), "--json")
    report = json.loads(out)
    assert code == 1 and not report["identical"] and report["pixels"]["differing"] > 0


def test_enqueue_then_missing_files_are_queued_for_reproduce(cli: Any, conn: Any, settings: Any) -> None:
    code, out, err = cli("generate", "a bridge", "--seeds", "1-5", "--batch", "2", "--enqueue", "--json", *SMALL)
    assert code == 0, err
    jobs = [get_job(conn, job_id=i) for i in json.loads(out)]
    assert [len(j.payload["seeds"]) for j in jobs if j] == [2, 2, 1] and "queued 3 jobs for 5 images" in err
    code, out, err = cli("worker", "--once", "--json")
    assert code == 0 and json.loads(out)["done"] == 3, err
    job = get_job(conn, job_id=jobs[0].id if jobs[0] else 0)
    assert job is not None and job.status == "done" and len(job.image_ids) == 2
    image = get_image(conn, image_id=job.image_ids[0])
    assert image is not None
    original = (settings.images_path / image.path).read_bytes()
    (settings.images_path / image.path).unlink()
    code, out, err = cli("reproduce", "--missing", "--json")
    assert code == 0 and json.loads(out)["missing"] == [image.id], err
    code, out, err = cli("worker", "--once", "--json")
    assert code == 0 and json.loads(out)["done"] == 1, err
    assert (settings.images_path / image.path).read_bytes() == original, "the worker re-rendered the missing file"


def test_generate_needs_a_prompt_and_worker_checks_its_options(cli: Any) -> None:
    code, _, err = cli("generate", "--steps", "2")
    assert code == 1 and "no prompt" in err
    code, _, err = cli("worker", "--max-jobs", "0")
    assert code == 1 and "--max-jobs" in err
