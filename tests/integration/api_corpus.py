"""A served corpus for API and browser tests: tiny generated images + the shared fixtures, imported and indexed."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.helpers import clean_env, run_cli

PROMPTS = [
    "a red fox in fresh snow, watercolor",
    "a lighthouse on a stormy cliff, oil painting",
    "a cyberpunk city street in the rain, neon",
    "a cozy cabin in a pine forest, pencil sketch",
    "an astronaut riding a horse on the moon",
    "a bowl of ramen with steam rising, photograph",
]


@dataclass
class Corpus:
    data_dir: Path
    database_url: str
    env: dict[str, str]
    generated_ids: list[int]


def create_database(server_url: str) -> str:
    name = f"api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def build_corpus(root: Path, server_url: str, fixtures: Path) -> Corpus:
    """Generate tiny images for PROMPTS, import the fixture folders, index everything (through the real CLI)."""
    data = root / "data"
    url = create_database(server_url)
    env = clean_env(PROMPTDEX_DATA_DIR=str(data), PROMPTDEX_DATABASE_URL=url, PROMPTDEX_MODELS="tiny")
    prompts_file = root / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    gen = run_cli("generate", "--prompts-file", str(prompts_file), "--size", "64x64", "--steps", "2",
                  "--model", "tiny", "--json", cwd=root, env=env, timeout=900)
    assert gen.returncode == 0, gen.stderr
    generated = [int(i) for i in json.loads(gen.stdout)]
    imp = run_cli("import", str(fixtures), "--no-progress", cwd=root, env=env, timeout=600)
    assert imp.returncode in (0, 1), imp.stderr  # the bad_images folder is reported as errors
    idx = run_cli("index", "--no-progress", cwd=root, env=env, timeout=900)
    assert idx.returncode == 0, idx.stderr
    return Corpus(data, url, env, generated)
