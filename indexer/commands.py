"""`promptdex inspect`, `promptdex import` and `promptdex index [status]`: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from typing import Any

from promptdex.console import out
from promptdex.errors import InvalidInput
from promptdex.settings import Settings


def register(sub: Any) -> None:
    inspect = sub.add_parser("inspect", help="print the generation metadata read from image files")
    inspect.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG or WebP files")
    inspect.add_argument("--json", action="store_true", help="print a JSON list (one object per file)")
    inspect.set_defaults(func=run_inspect)

    imp = sub.add_parser("import", help="import folders of PNG/JPEG/WebP images with their metadata")
    imp.add_argument("paths", nargs="+", metavar="PATH", help="folders (searched recursively) or image files")
    imp.add_argument("--workers", type=int, default=None, help="decoding threads (default: one per CPU core)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.add_argument("--prune", action="store_true",
                     help="forget recorded files under PATH that are gone; images no file holds any more are "
                          "marked missing (hidden from search, their files answer 410)")
    imp.add_argument("--watch", action="store_true",
                     help="after importing, keep watching the PATH folders: files are imported once written, moves "
                          "and deletions followed (as --prune), and new images indexed in small batches, until "
                          "SIGTERM or Ctrl-C")
    imp.set_defaults(func=run_import)

    index = sub.add_parser("index", help="embed new images and prompts; update FAISS bundles and keyword index")
    index.add_argument("action", nargs="?", choices=["status"],
                       help="status: each bundle checked against its checksum, counts and pending work (exit 1 "
                            "when a bundle is damaged)")
    index.add_argument("--rebuild", action="store_true",
                       help="rebuild the bundles from the database, whatever state their folders are in (each new "
                            "bundle replaces the old one only once complete), and the keyword index")
    index.add_argument("--json", action="store_true", help="print JSON")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="decode and embed the images on the Ray cluster at ADDRESS (its head node's HOST:PORT, or "
                            "auto); needs `pip install 'promptdex[cluster]'`")
    index.add_argument("--actors", type=int, default=None, metavar="N",
                       help="with --ray: embedding actors (default: one per GPU of the cluster, or half its CPUs)")
    index.set_defaults(func=run_index_command)


def _text_report(item: dict[str, Any]) -> list[str]:
    lines = [f"{item['file']}"]
    if item["error"]:
        return [*lines, f"  error: {item['error']}"]
    lines.append(f"  source: {item['source']} ({item['software']})")
    for key in ("prompt", "negative_prompt"):
        if item[key]:
            lines.append(f"  {key}: {item[key]!r}")
    settings = [f"{k}={item[k]}" for k in ("seed", "steps", "cfg", "sampler", "scheduler", "width", "height",
                                            "model", "model_hash", "clip_skip", "denoising_strength")
                if item[k] is not None]
    if settings:
        lines.append("  " + ", ".join(settings))
    if item["hires"]:
        lines.append(f"  hires: {item['hires']}")
    if item["upscale"]:
        lines.append(f"  upscale: {item['upscale']}")
    if item.get("provenance"):
        lines.append(f"  provenance: {_provenance_line(item['provenance'])}")
    lines += [f"  warning: {w}" for w in item["warnings"]]
    lines.append(f"  raw: {', '.join(item['raw']) or '(none)'}")
    return lines


def _provenance_line(credentials: dict[str, Any]) -> str:
    """C2PA content credentials in a line: who made it, whether it says AI-generated, who signed, the validation."""
    made = credentials["label"] or credentials["claim_generator"] or "unknown claim generator"
    if credentials["claim_generator"] and credentials["claim_generator"] not in made:
        made += f" ({credentials['claim_generator']})"
    parts = [made, "AI-generated" if credentials["ai_generated"] else None,
             f"signed by {credentials['issuer']}" if credentials["issuer"] else None,
             f"signature {credentials['validation']}"]
    return ", ".join(p for p in parts if p)


def run_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.metadata.reader import read_metadata

    results = [read_metadata(path).to_json() for path in args.files]
    if args.json:
        out(json.dumps(results, ensure_ascii=False, indent=1))
    else:
        for item in results:
            for line in _text_report(item):
                out(line)
    return 1 if any(item["error"] for item in results) else 0


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.importer import import_paths
    from promptdex.db import open_database

    if args.watch:
        return run_watch(args, settings)
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            summary = import_paths(conn, settings, args.paths, workers=args.workers, progress=not args.no_progress,
                                   prune=args.prune, database=db.display)
    finally:
        db.close()
    if args.json:
        out(json.dumps(summary.to_json(), ensure_ascii=False, indent=1))
    else:
        _print_problems(summary)
        out(summary.line())
    did_something = summary.imported or summary.unchanged or summary.duplicates or summary.vanished
    return 1 if summary.errors and not did_something else 0


def run_watch(args: argparse.Namespace, settings: Settings) -> int:
    """`promptdex import --watch`: one line (or JSON object) per batch, until SIGTERM or SIGINT."""
    import signal
    import threading

    from indexer.watch import FolderWatch, indexer_for
    from promptdex.db import open_database

    if args.workers is not None:
        settings.indexer.import_workers = args.workers
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    db = open_database(settings)
    conn = None
    try:
        conn = db.connect(autocommit=True)
        watch = FolderWatch(conn, settings, args.paths, index=indexer_for(settings), database=db.display, db=db,
                            report=lambda kind, summary: _watch_report(kind, summary, as_json=args.json))
        if not args.json:  # stdout holds only the JSON lines
            out(f"watching {', '.join(watch.roots)} (Ctrl-C or SIGTERM to stop)")
        try:
            watch.run(stop)
        finally:
            conn = watch.conn  # the one it reconnected with, if it lost the first
    finally:
        if conn is not None:
            conn.close()
        db.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _watch_report(kind: str, summary: Any, *, as_json: bool) -> None:
    if as_json:
        out(json.dumps({"batch": kind, **summary.to_json()}, ensure_ascii=False))
        return
    _print_problems(summary)
    if kind != "rescan" or summary.imported or summary.missing or summary.vanished:
        out(f"{kind}: {summary.line()}")


def _print_problems(summary: Any) -> None:
    """An import summary's bad files and metadata problems, one line each, naming the file."""
    for path, error in summary.errors:
        out(f"error: {path}: {error}")
    for path, warning in summary.warnings:
        out(f"warning: {path}: {warning}")


def run_index_command(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.indexing import index_status, run_index
    from indexer.keyword import open_keyword_index
    from indexer.publish import publish_all
    from promptdex.db import open_database
    from promptdex.storage import check_storage

    if args.action != "status":
        check_storage(settings)
    add_rows = _cluster(args)
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            keyword = open_keyword_index(settings, lambda: nullcontext(conn))
            if args.action == "status":
                return _print_status(index_status(conn, settings, keyword), as_json=args.json)
            from indexer.embedders import load_embedders

            # the models load only once the bundles are known to be usable (a damaged one stops the run first)
            from promptdex.cluster import stdout_to_stderr

            with stdout_to_stderr() if add_rows is not None else nullcontext():  # Ray's messages stay off stdout
                report = run_index(conn, settings, lambda: load_embedders(settings), keyword, rebuild=args.rebuild,
                                   progress=not args.no_progress, add_rows=add_rows)
    finally:
        db.close()
    publish_all(settings)  # PROMPTDEX_STORAGE_URL: other machines' APIs pick the new generation up
    if args.json:
        out(json.dumps(report.to_json(), indent=1))
    else:
        for bundle in report.bundles:
            for item_id, error in bundle.skipped:
                out(f"skipped: {bundle.name} item {item_id}: {error}")
        out(report.line())
    if add_rows is not None:
        from promptdex.cluster import seal_stdout

        seal_stdout()
    return 0


def _cluster(args: argparse.Namespace) -> dict[str, Any] | None:
    """With --ray: the cluster joined (one clear error now when it does not answer) and what embeds there."""
    if args.actors is not None and (not args.ray or args.actors < 1):
        raise InvalidInput(f"--actors: {args.actors} is not accepted; accepted: 1 or more, with --ray")
    if not args.ray:
        return None
    if args.action == "status":
        raise InvalidInput("--ray: `promptdex index status` runs no job; give --ray to `promptdex index`")
    if args.rebuild:
        raise InvalidInput("--ray does not rebuild: run `promptdex index --rebuild` without --ray, then "
                           "`promptdex index --ray ADDRESS` for what comes later")
    from indexer.fleet import on_cluster

    return on_cluster(args.ray, actors=args.actors)


def _print_status(status: dict[str, Any], *, as_json: bool) -> int:
    """Print the status; exit 1 when a bundle is damaged (its line says what to run)."""
    damaged = any(b["state"] == "damaged" for b in status["bundles"])
    if as_json:
        out(json.dumps(status, indent=1))
        return 1 if damaged else 0
    for b in status["bundles"]:
        if b["state"] == "damaged":
            built = f"DAMAGED: {b['error']}"
        elif b["built"]:
            built = f"{b['count']} vectors, {b['index_type']}, model {b['model']}, generation {b['generation']}"
        else:
            built = "not built"
        out(f"{b['name']}: {built}; recorded {b['recorded']}, pending {b['pending']}")
    k = status["keyword"]
    out(f"keyword ({k['backend']}): recorded {k['recorded']}, pending {k['pending']}")
    return 1 if damaged else 0
