"""`promptdex demo`: fill a demo corpus from our prompt list, index it, serve it with one generation worker.

The steps run as `promptdex` subcommands in child processes (the core imports no component), all
sharing the one database this process holds open. The configured models are used when their
weights can be loaded; otherwise the built-in tiny offline models, and then the log and the web
page say plainly that the images come from a tiny untrained model.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from promptdex.console import out
from promptdex.db import open_database
from promptdex.errors import PromptdexError
from promptdex.settings import ModelsMode, Settings

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "prompts.txt"
TINY_MARKER = ".demo-tiny"


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="fill a demo corpus, index it and serve it (make demo)")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="prompt list, one per line")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--no-serve", action="store_true", help="fill and index, then exit")
    parser.add_argument("--host", default=None, help="address to serve on (default PROMPTDEX_API__HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default PROMPTDEX_API__PORT)")
    parser.set_defaults(func=run)


def _cli(*args: str, env: dict[str, str], quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a promptdex subcommand; its progress bars and summary show. `quiet` drops its stdout (id lists)."""
    logger.info("running promptdex %s", " ".join(args))
    return subprocess.run([sys.executable, "-m", "promptdex", *args], env=env, text=True, check=False,
                          stdout=subprocess.DEVNULL if quiet else None)


def _must(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise PromptdexError(f"demo: {what} failed (exit {result.returncode}); see the messages above")


def read_prompts(path: Path, limit: int | None) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PromptdexError(f"demo: cannot read the prompt list {path}: {exc.strerror}") from exc
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return prompts[:limit] if limit else prompts


def _generated_count(settings: Settings) -> int:
    db = open_database(settings)
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) AS n FROM images WHERE source = 'generated'").fetchone()
    return int(row["n"]) if row else 0


_PENDING = """
SELECT (SELECT count(*) FROM images i WHERE NOT EXISTS
          (SELECT 1 FROM index_entries e WHERE e.bundle = 'clip-image' AND e.item_id = i.id))
     + (SELECT count(*) FROM prompts p WHERE NOT EXISTS
          (SELECT 1 FROM index_entries e WHERE e.bundle = 'prompt-text' AND e.item_id = p.id))
     + (SELECT count(*) FROM prompts p WHERE NOT EXISTS
          (SELECT 1 FROM index_entries e WHERE e.bundle LIKE 'keyword-%%' AND e.item_id = p.id)) AS n
"""


def _index_is_current(settings: Settings) -> bool:
    """True when every image and prompt is in the bundles and the keyword index (a second demo run)."""
    if not (settings.indexes_path / "clip-image" / "manifest.json").is_file():
        return False
    db = open_database(settings)
    with db.connect() as conn:
        row = conn.execute(_PENDING).fetchone()
    return row is not None and int(row["n"]) == 0


def _choose_models(settings: Settings, env: dict[str, str]) -> bool:
    """True when the demo must use the tiny models (asked for, chosen before, or real weights not loadable)."""
    marker = settings.data_path / TINY_MARKER
    if settings.models == ModelsMode.TINY or marker.exists():
        return True
    out(f"checking that the configured models load ({settings.generator.model}, {settings.indexer.clip_model})")
    check = subprocess.run([sys.executable, "-c", _PROBE], env=env, text=True, capture_output=True, check=False)
    if check.returncode == 0:
        return False
    reason = (check.stderr.strip().splitlines() or ["unknown error"])[-1]
    logger.warning("the configured models cannot be loaded here (%s)", reason)
    return True


_PROBE = """
import os, socket
try:
    socket.getaddrinfo("huggingface.co", 443)
except OSError:
    os.environ["HF_HUB_OFFLINE"] = "1"  # no hub reachable: look in the local cache only, without retries
from promptdex.settings import get_settings
from generator.loading import load_pipeline
from indexer.embedders import load_embedders
s = get_settings()
load_pipeline(s.generator.model, device="cpu", dtype="float32", models_path=s.models_path)
load_embedders(s)
"""


def run(args: argparse.Namespace, settings: Settings) -> int:
    prompts = read_prompts(args.prompts, args.limit)
    env = dict(os.environ)
    db = open_database(settings)  # held for the whole demo: the children join this server
    out(f"promptdex demo: corpus in {settings.data_path} ({db.display})")
    tiny = _choose_models(settings, env)
    if tiny:
        env["PROMPTDEX_MODELS"] = ModelsMode.TINY.value
        settings.data_path.mkdir(parents=True, exist_ok=True)
        (settings.data_path / TINY_MARKER).write_text("the demo corpus was made with the tiny offline models\n")
        logger.warning("DEMO USES TINY UNTRAINED MODELS: no Stable Diffusion or CLIP weights can be loaded here, so "
                       "the images it generates come from a tiny random model built offline. They are noise, not art "
                       "(imported images are shown as they are); search, filters and reproduce work the same.")
    have = _generated_count(settings)
    if have < len(prompts):
        todo = prompts[have:]
        out(f"generating {len(todo)} demo images ({have} already made)")
        listing = settings.data_path / "demo-prompts.todo"
        listing.write_text("\n".join(todo) + "\n", encoding="utf-8")
        extra = ["--model", "tiny"] if tiny else []  # size, steps and guidance: the model's profile
        _must(_cli("generate", "--prompts-file", str(listing), *extra, env=env, quiet=True),
              "generating the demo images")
        listing.unlink(missing_ok=True)
    else:
        out(f"reusing the demo corpus ({have} generated images)")
    extra_dir = os.environ.get("PROMPTDEX_DEMO_IMPORT")
    if extra_dir:
        out(f"importing {extra_dir}")
        _must(_cli("import", extra_dir, env=env), f"importing {extra_dir}")
    if extra_dir or not _index_is_current(settings):
        _must(_cli("index", env=env), "indexing")
    else:
        out("the index is up to date")
    if args.no_serve:
        db.close()
        return 0
    host = args.host or settings.api.host
    port = str(args.port or settings.api.port)
    note = "  (tiny untrained models: the images they generate are noise)" if tiny else ""
    out(f"open http://{host}:{port}{note}")
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the server: same pid, so the embedded database registration carries over.
    # One generation worker beside it, so Create on the page works with no configuration.
    os.execve(sys.executable, [sys.executable, "-m", "promptdex", "serve", "--host", host, "--port", port,
                               "--workers", "1"], env)
    return 0  # pragma: no cover - execve does not return
