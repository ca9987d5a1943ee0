"""`promptdex inspect` as a user runs it: JSON with the documented fields, errors per file, text output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import require_shared_fixtures
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e

FIELDS = {"file", "source", "prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "scheduler", "width",
          "height", "model", "model_hash", "raw"}


def test_inspect_json_reads_what_upstream_expects(tmp_path: Path) -> None:
    fixtures = require_shared_fixtures()
    spec = json.loads((fixtures / "sd-metadata" / "expected.json").read_text(encoding="utf-8"))
    cases = {c["file"]: c["expected"] for c in spec["expectations"]
             if c["file"] in ("png/comfyui-hires.png", "webp/novelai-full-3char.webp", "jpg/swarmui.jpg")}
    files = [str(fixtures / "sd-metadata" / name) for name in cases] + [str(fixtures / "sd-metadata/png/empty.png")]
    result = run_cli("inspect", "--json", *files, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    assert [item["file"] for item in items] == files
    for item, (name, want) in zip(items, cases.items(), strict=False):
        assert FIELDS <= set(item), name
        assert (item["software"], item["prompt"], item["negative_prompt"]) == (
            want["software"], want["prompt"], want["negativePrompt"]), name
        sampling = want["sampling"]
        assert (item["seed"], item["steps"], item["cfg"], item["sampler"], item["scheduler"]) == (
            sampling["seed"], sampling["steps"], sampling["cfg"], sampling["sampler"], sampling["scheduler"]), name
        assert (item["width"], item["height"]) == (want["width"], want["height"]), name
        assert item["model"] == (want["model"] or {}).get("name"), name
        assert isinstance(item["raw"], dict) and item["raw"], name
    empty = items[-1]
    assert empty["source"] == "none" and all(empty[k] is None for k in FIELDS - {"file", "source", "raw"})


def test_inspect_reports_an_unreadable_file_and_carries_on(tmp_path: Path) -> None:
    fixtures = require_shared_fixtures()
    good = str(fixtures / "sd-parsers" / "parsers" / "AUTOMATIC1111" / "automatic1111_cropped.png")
    bad = str(fixtures / "sd-parsers" / "bad_images" / "empty_file.png")
    result = run_cli("inspect", "--json", bad, good, cwd=tmp_path)
    assert result.returncode == 1
    items = json.loads(result.stdout)
    assert "empty file" in items[0]["error"] and items[1]["prompt"] == "photo of a duck"
    text = run_cli("inspect", good, cwd=tmp_path)
    assert text.returncode == 0 and "photo of a duck" in text.stdout and "seed=235284042" in text.stdout
