"""The `promptdex` command: one entry point, one module per subcommand, errors turned into exit codes here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import psycopg
from pydantic import ValidationError

from promptdex import __version__
from promptdex.errors import ConfigError, PromptdexError

logger = logging.getLogger(__name__)

# Subcommand modules, each with `register(subparsers)`. Imported when the parser is built, so they
# keep heavy imports (torch, diffusers, FAISS) inside the functions that run the command.
COMMAND_MODULES = (
    "promptdex.commands.env",
    "promptdex.commands.db",
    "promptdex.commands.demo",
    "promptdex.commands.users",
    "generator.commands",
    "indexer.commands",
    "indexer.datasets.commands",
    "indexer.safety.commands",
    "search_api.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptdex",
        description="Self-hosted search engine for Stable Diffusion images: generate, import, index, search.",
    )
    parser.add_argument("--version", action="version", version=f"promptdex {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full trace of an error")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that component is not part of this install
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from promptdex.settings import get_settings

        try:
            settings = get_settings()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "PROMPTDEX_" + "__".join(str(p).upper() for p in first["loc"])
            raise ConfigError(f"{where}: {first['msg']} (got {first.get('input')!r})") from exc
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except PromptdexError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"promptdex: error: {exc}\n")
        return 1
    except psycopg.OperationalError as exc:  # the server went away under a command
        if args.debug:
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        sys.stderr.write(f"promptdex: error: lost the database connection ({reason}); nothing half-written was "
                         "kept: run the command again once PostgreSQL is back\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into an exit code
        if args.debug:
            raise
        sys.stderr.write(f"promptdex: error: {type(exc).__name__}: {exc} (run with --debug for the trace)\n")
        return 1

