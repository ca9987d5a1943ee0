"""`promptdex import-dataset KIND PATH`: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from promptdex.console import out
from promptdex.settings import Settings


def _column(text: str) -> tuple[str, str]:
    name, sep, column = text.partition("=")
    if not sep or not name or not column:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=COLUMN (e.g. prompt=caption)")
    return name, column


def register(sub: Any) -> None:
    from indexer.datasets.layouts import FIELDS, KINDS

    imp = sub.add_parser(
        "import-dataset", help="import a public dataset (DiffusionDB, webdataset, img2dataset, Hugging Face)",
        description="Import a dataset's images with their parameters, streaming, resumably (a rerun carries on "
                    "where a stopped one ended and adds nothing twice).")
    imp.add_argument("kind", choices=KINDS, metavar="KIND", help=f"the layout: {', '.join(KINDS)}")
    imp.add_argument("path", type=Path, metavar="PATH", help="the dataset's folder (or one shard or parquet file)")
    imp.add_argument("--image-column", help="hf: the column holding the images (default: image)")
    imp.add_argument("--column", type=_column, action="append", default=[], metavar="FIELD=COLUMN",
                     help=f"take a parameter from a column (hf, sidecar JSON); FIELD is one of {', '.join(FIELDS)}")
    imp.add_argument("--key-column", help="hf: the column naming each image (to match --embeddings)")
    imp.add_argument("--split", help="hf: the split of a saved DatasetDict (default: train)")
    imp.add_argument("--embeddings", type=Path, metavar="DIR",
                     help="precomputed CLIP image embeddings (clip-retrieval layout: img_emb/*.npy in the row "
                          "order of metadata/*.parquet) added to the image bundle without re-embedding")
    imp.add_argument("--embeddings-model", metavar="MODEL",
                     help="the model the embeddings were made with, as bundles name it (e.g. "
                          "open_clip:ViT-B-32:laion2b_s34b_b79k); must be the image bundle's")
    imp.add_argument("--embeddings-key", metavar="COLUMN",
                     help="the metadata column naming each vector's image (default: key, image_name, image_path "
                          "or file_name)")
    imp.add_argument("--workers", type=int, default=None, help="threads hashing and writing images (default: one "
                                                               "per CPU core)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.set_defaults(func=run_import_dataset)


def run_import_dataset(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.datasets.core import DatasetError, import_dataset
    from indexer.datasets.embeddings import Embeddings, EmbeddingSink
    from indexer.datasets.layouts import Options, open_dataset
    from indexer.publish import publish_all
    from promptdex.db import open_database
    from promptdex.storage import check_storage

    if args.embeddings is not None and not args.embeddings_model:
        raise DatasetError("--embeddings needs --embeddings-model: the model the vectors were made with")
    options = Options(image_column=args.image_column, columns=dict(args.column), key_column=args.key_column,
                      split=args.split)
    dataset = open_dataset(args.kind, args.path, options)  # a wrong layout fails here, before any work
    embeddings = Embeddings(args.embeddings, key_column=args.embeddings_key) if args.embeddings else None
    check_storage(settings)
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            sink = EmbeddingSink(conn, settings, embeddings, args.embeddings_model) if embeddings else None
            try:
                summary = import_dataset(conn, settings, dataset, sink=sink, workers=args.workers,
                                         progress=not args.no_progress)
            finally:
                if sink is not None:
                    sink.close(conn)
    finally:
        db.close()
    if sink is not None:
        publish_all(settings)  # PROMPTDEX_STORAGE_URL: other machines' APIs pick the new bundle up
    if args.json:
        out(json.dumps(summary.to_json(), ensure_ascii=False, indent=1, default=str))
    else:
        for item, error in summary.errors:
            out(f"error: {item}: {error}")
        out(summary.line())
    return 1 if summary.errors and not (summary.imported or summary.duplicates) else 0
