"""`promptdex safety rescore|status|check`: re-score after a classifier or word-list change, counts, try a prompt."""

from __future__ import annotations

import argparse
import json
from typing import Any

from promptdex.console import out
from promptdex.settings import Settings


def register(sub: Any) -> None:
    safety = sub.add_parser("safety", help="NSFW scores: rescore after a classifier or word-list change, status, "
                                           "check a prompt")
    actions = safety.add_subparsers(dest="safety_action", metavar="ACTION", required=True)
    rescore = actions.add_parser("rescore", help="score every image not scored by the configured classifiers "
                                                 "(resumable: a second run carries on where one stopped)")
    rescore.add_argument("--workers", type=int, default=None, help="decoding threads (default: one per CPU core)")
    rescore.add_argument("--json", action="store_true", help="print the summary as JSON")
    rescore.add_argument("--no-progress", action="store_true", help="no progress bar")
    rescore.set_defaults(func=run_rescore)
    status = actions.add_parser("status", help="the configured classifiers and how many images each state holds")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)
    check = actions.add_parser("check", help="score prompt text with the prompt classifiers (what generation "
                                             "would refuse)")
    check.add_argument("text", metavar="TEXT", help="a prompt")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=run_check)


def run_rescore(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.safety import get_scorer
    from indexer.safety.rescore import rescore
    from promptdex.db import open_database

    scorer = get_scorer(settings)
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            summary = rescore(conn, settings, scorer, progress=not args.no_progress, workers=args.workers)
    finally:
        db.close()
    if args.json:
        out(json.dumps(summary.to_json(), indent=1))
    else:
        for image_id, error in summary.errors:
            out(f"error: image {image_id}: {error}")
        out(summary.line())
    return 1 if summary.errors and not summary.scored else 0


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.safety import get_scorer
    from promptdex import store
    from promptdex.db import open_database

    scorer = get_scorer(settings)
    s = settings.safety
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            counts = store.safety_counts(conn, key=scorer.key, strict=s.strict_threshold,
                                         moderate=s.moderate_threshold)
    finally:
        db.close()
    report = {"classifiers": scorer.names, "key": scorer.key, "words_file": str(settings.words_path),
              "thresholds": {"strict": s.strict_threshold, "moderate": s.moderate_threshold,
                             "generation": s.generation_threshold}, "images": counts}
    if args.json:
        out(json.dumps(report, indent=1))
        return 0
    out(f"classifiers: {', '.join(scorer.names) or 'none'} (key {scorer.key})")
    out(f"word list: shipped + {settings.words_path}")
    out(f"images: {counts['current']} scored, {counts['stale']} scored by other classifiers, {counts['unscored']} "
        f"not scored; {counts['flagged']} flagged (>= {s.strict_threshold}), {counts['explicit']} hidden in moderate "
        f"mode (>= {s.moderate_threshold})")
    if counts["stale"] or counts["unscored"]:
        out("run `promptdex safety rescore` to score the rest")
    return 0


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.safety import get_scorer
    from indexer.safety.words import WordListClassifier

    scorer = get_scorer(settings)
    score = scorer.score_prompt(args.text)
    matches = [m for c in scorer.prompt if isinstance(c, WordListClassifier) for m in c.matches(args.text)]
    refused = score >= settings.safety.generation_threshold
    if args.json:
        out(json.dumps({"score": score, "matches": [{"entry": e, "score": v} for e, v in matches],
                        "flagged": score >= settings.safety.strict_threshold, "refused": refused}, indent=1))
    else:
        found = ", ".join(f"{e} ({v:g})" for e, v in matches) or "no listed word"
        out(f"score {score:g}: {found}; {'refused' if refused else 'allowed'} for generation below admin")
    return 0
