"""What the API's resident memory is made of: a fresh process loads what `promptdex serve` loads, step by step.

Run as its own process with the API's environment (`python -m bench.memfloor --out F`): resident, anonymous and
file-backed memory after importing torch, the other libraries, loading the two query models, and
opening the two bundles as the API does (memory-mapped) and searching each once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.common import memory_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    steps: list[dict[str, Any]] = []

    def mark(what: str) -> None:
        steps.append({"step": what, **memory_of(os.getpid())})

    mark("python interpreter")
    import torch  # noqa: F401

    mark("import torch")
    import faiss  # noqa: F401
    import open_clip  # noqa: F401
    import psycopg  # noqa: F401
    import sentence_transformers  # noqa: F401
    import uvicorn  # noqa: F401

    from search_api.app import create_app  # noqa: F401

    mark("import faiss, open_clip, sentence-transformers, FastAPI, uvicorn, psycopg, promptdex")
    from indexer.embedders import load_embedders
    from promptdex.settings import get_settings

    settings = get_settings()
    embedders = load_embedders(settings, threads=1, queries=True)  # as the API loads them
    runtime = embedders.clip.runtime
    mark("load the query models (CLIP ViT-B-32 text and vision towers, MiniLM)" if runtime == "torch" else
         "load the query models (ONNX Runtime: CLIP ViT-B-32 text tower, MiniLM; torch models dropped)")
    params: dict[str, float] = {}
    if runtime == "torch":
        clip: Any = getattr(embedders.clip, "model")  # noqa: B009 - the open_clip embedder's model
        minilm: Any = getattr(embedders.prompt, "model")  # noqa: B009
        params = {key: sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
                  for key, module in (("clip_vision_mib", clip.visual), ("clip_all_mib", clip), ("minilm_mib", minilm))}
    else:
        paths: dict[str, Any] = {"clip_vision_mib": embedders.clip.paths["vision"],  # type: ignore[union-attr]
                                 "clip_text_mib": embedders.clip.paths["text"],  # type: ignore[union-attr]
                                 "minilm_mib": embedders.prompt.path}  # type: ignore[union-attr]
        params = {key: path.stat().st_size / 2**20 for key, path in paths.items()}
    import numpy as np

    from indexer.indexing import IMAGE_BUNDLE, PROMPT_BUNDLE
    from indexer.service import BundleHandle

    sizes: dict[str, float] = {}
    handles = []
    for name, embedder in ((IMAGE_BUNDLE, embedders.clip), (PROMPT_BUNDLE, embedders.prompt)):
        handle = BundleHandle(settings.indexes_path / name, model=embedder.model_id, mmap=True,
                              nprobe=settings.indexer.nprobe)
        handle.search(np.ones((1, embedder.dim), dtype=np.float32) / np.sqrt(embedder.dim), 50)
        handles.append(handle)
        sizes[name] = sum(p.stat().st_size for p in (settings.indexes_path / name).rglob("*") if p.is_file()) / 2**20
    mark("open both bundles as the API does (memory-mapped) and search each once")
    from indexer.embedders.clip import check_images

    embedders.clip.embed_images(check_images(224)[:1])
    mark("first search by an uploaded image (the ONNX vision tower loads on first use)" if runtime == "onnx" else
         "first search by an uploaded image")
    args.out.write_text(json.dumps({"runtime": runtime, "steps": steps,
                                    "parameters_mib": {k: round(v, 1) for k, v in params.items()},
                                    "bundle_files_mib": {k: round(v, 1) for k, v in sizes.items()}}, indent=1))
    print(json.dumps(steps), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
