"""`promptdex user ...` and `promptdex token ...` as a user types them (subprocess, real PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import clean_env, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return clean_env(PROMPTDEX_DATA_DIR=str(tmp_path / "data"), PROMPTDEX_DATABASE_URL=database_url)


def cli(tmp_path: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "promptdex", *args], cwd=tmp_path, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def test_user_lifecycle(tmp_path: Path, env: dict[str, str]) -> None:
    added = cli(tmp_path, env, "user", "add", "ada", "--role", "creator", "--password-stdin", stdin="s3cret-pass\n")
    assert added.returncode == 0, added.stderr
    assert "s3cret-pass" not in added.stdout + added.stderr
    listed = json.loads(run_cli("user", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert [(u["name"], u["role"]) for u in listed] == [("ada", "creator")]
    assert run_cli("user", "set-role", "ada", "admin", cwd=tmp_path, env=env).returncode == 0
    assert "admin" in run_cli("user", "list", cwd=tmp_path, env=env).stdout
    assert run_cli("user", "remove", "ada", cwd=tmp_path, env=env).returncode == 0
    assert json.loads(run_cli("user", "list", "--json", cwd=tmp_path, env=env).stdout) == []


@pytest.mark.parametrize("args, stdin, word", [
    (["user", "add", "bob", "--role", "owner", "--password-stdin"], "long enough\n", "role"),
    (["user", "add", "bob", "--role", "viewer", "--password-stdin"], "\n", "empty"),
    (["user", "add", "bob", "--role", "viewer"], "", "--password-stdin"),
    (["user", "set-role", "nobody", "viewer"], None, "nobody"),
    (["user", "remove", "nobody"], None, "nobody"),
    (["token", "create", "nobody"], None, "nobody"),
    (["token", "revoke", "999"], None, "999"),
])
def test_bad_commands_say_what_was_wrong(tmp_path: Path, env: dict[str, str], args: list[str], stdin: str | None,
                                         word: str) -> None:
    result = cli(tmp_path, env, *args, stdin=stdin)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("promptdex: error:") and word in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_user_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    first = cli(tmp_path, env, "user", "add", "ada", "--role", "viewer", "--password-stdin", stdin="long enough\n")
    assert first.returncode == 0, first.stderr
    again = cli(tmp_path, env, "user", "add", "ada", "--role", "admin", "--password-stdin", stdin="long enough\n")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_token_create_prints_the_token_alone_on_its_last_line_once(tmp_path: Path, env: dict[str, str]) -> None:
    cli(tmp_path, env, "user", "add", "ada", "--role", "viewer", "--password-stdin", stdin="long enough\n")
    created = run_cli("token", "create", "ada", "--expires", "7", "--label", "ci job", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("pdx_") and " " not in token
    listing = run_cli("token", "list", "--json", cwd=tmp_path, env=env)
    assert token not in listing.stdout
    (entry,) = json.loads(listing.stdout)
    assert entry["user"] == "ada" and entry["label"] == "ci job" and entry["expires_at"] and not entry["revoked_at"]
    assert run_cli("token", "revoke", str(entry["id"]), cwd=tmp_path, env=env).returncode == 0
    (entry,) = json.loads(run_cli("token", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert entry["revoked_at"]
