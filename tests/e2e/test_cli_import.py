"""`promptdex import` as a user runs it: a summary with file names of errors; the second run imports nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import require_shared_fixtures
from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.e2e


def test_import_fixture_folders_twice(tmp_path: Path, database_url: str) -> None:
    fixtures = require_shared_fixtures()
    env = clean_env(PROMPTDEX_DATABASE_URL=database_url)
    first = run_cli("import", str(fixtures), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    empty = fixtures / "sd-parsers" / "bad_images" / "empty_file.png"
    assert f"error: {empty}: empty file" in first.stdout
    summary = first.stdout.strip().splitlines()[-1]
    assert summary.startswith("imported 67, unchanged 0, duplicates 0, errors 1"), summary
    second = run_cli("import", "--json", str(fixtures), cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    data = json.loads(second.stdout)
    assert (data["imported"], data["unchanged"], data["duplicates"]) == (0, 67, 0)
    assert [e["file"] for e in data["errors"]] == [str(empty)]
    assert not list((tmp_path / "data" / "thumbs").rglob("*.webp"))  # made by `promptdex index` (or on request)


def test_import_of_nothing_usable_fails(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = run_cli("import", str(tmp_path / "bad.png"), str(tmp_path / "nope"), cwd=tmp_path,
                     env=clean_env(PROMPTDEX_DATABASE_URL=database_url))
    assert result.returncode == 1
    assert f"error: {tmp_path / 'bad.png'}:" in result.stdout
    assert f"error: {tmp_path / 'nope'}: no such" in result.stdout
    assert "Traceback" not in result.stderr


def test_prune_marks_vanished_files_and_a_vanished_folder_is_no_error(tmp_path: Path, database_url: str) -> None:
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    for name, colour in (("keep.png", (255, 0, 0)), ("drop.png", (0, 255, 0))):
        Image.new("RGB", (32, 32), colour).save(folder / name)
    env = clean_env(PROMPTDEX_DATABASE_URL=database_url)
    assert run_cli("import", "--no-progress", str(folder), cwd=tmp_path, env=env).returncode == 0
    (folder / "drop.png").unlink()
    pruned = run_cli("import", "--no-progress", "--prune", str(folder), cwd=tmp_path, env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.strip().splitlines()[-1].startswith(
        "imported 0, unchanged 1, duplicates 0, errors 0, metadata problems 0, marked missing 1, vanished 1")
    (folder / "keep.png").unlink()
    folder.rmdir()
    gone = run_cli("import", "--json", "--prune", str(folder), cwd=tmp_path, env=env)
    assert gone.returncode == 0, gone.stdout
    data = json.loads(gone.stdout)
    assert (data["files"], data["vanished"], data["missing"], data["errors"]) == (0, 1, 1, [])
