"""`promptdex inspect` on files signed with C2PA content credentials: the `provenance` field and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.c2pa_signing import CHATGPT, FIREFLY, plain_image, signed_file
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e


def test_inspect_json_shows_provenance(tmp_path: Path) -> None:
    chatgpt = signed_file(tmp_path / "chatgpt.png", CHATGPT)
    firefly = signed_file(tmp_path / "firefly.jpg", FIREFLY, "JPEG")
    plain = tmp_path / "plain.png"
    plain.write_bytes(plain_image("PNG"))
    result = run_cli("inspect", "--json", str(chatgpt), str(firefly), str(plain), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    by_file = {Path(item["file"]).name: item for item in json.loads(result.stdout)}
    for name, generator in (("chatgpt.png", CHATGPT), ("firefly.jpg", FIREFLY)):
        credentials = by_file[name]["provenance"]
        assert credentials["label"] == generator.label, name
        assert credentials["claim_generator"] == generator.claim_generator, name
        assert credentials["ai_generated"] is True and credentials["issuer"] == generator.issuer, name
        assert credentials["validation"] == "valid" and by_file[name]["warnings"] == [], name
    assert "provenance" in by_file["plain.png"] and by_file["plain.png"]["provenance"] is None


def test_inspect_text_names_the_claim_generator(tmp_path: Path) -> None:
    chatgpt = signed_file(tmp_path / "chatgpt.png", CHATGPT)
    plain = tmp_path / "plain.png"
    plain.write_bytes(plain_image("PNG"))
    result = run_cli("inspect", str(chatgpt), str(plain), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("provenance:")]
    assert line.startswith(f"provenance: {CHATGPT.label}"), line
    assert f"AI-generated, signed by {CHATGPT.issuer}, signature valid" in line, line
