"""`promptdex generate`, `promptdex worker` and `promptdex reproduce`: parse, call the library, print the result."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from promptdex.console import out
from promptdex.errors import InvalidInput
from promptdex.settings import Settings


def register(sub: Any) -> None:
    gen = sub.add_parser("generate", help="make images with diffusers (or queue them for `promptdex worker`)",
                         description="Make images, store them with every parameter, print their ids.")
    gen.add_argument("prompt", nargs="?", help="the prompt (or use --prompts-file / --like)")
    gen.add_argument("--negative", help="negative prompt")
    seeds = gen.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="first seed (-1: random); with --count, seed, seed+1, ...")
    seeds.add_argument("--seeds", help="seeds: 1000-1015 (inclusive) or 1,5,9")
    gen.add_argument("--count", type=int, help="images per prompt (default 1; random seeds unless --seed)")
    gen.add_argument("--steps", type=int, help="sampling steps")
    gen.add_argument("--cfg", type=float, help="classifier-free guidance scale")
    gen.add_argument("--sampler", help="A1111 name (Euler a, DPM++ 2M, ...) or a diffusers scheduler class")
    gen.add_argument("--schedule", help="schedule type: Automatic, Karras, Exponential, Beta, SGM Uniform, ...")
    gen.add_argument("--size", help="WIDTHxHEIGHT, multiples of 8")
    gen.add_argument("--model", help="tiny, a hub id, a diffusers folder, or a .safetensors/.ckpt file")
    gen.add_argument("--model-config", help="diffusers config folder (or hub id) for a single-file checkpoint")
    gen.add_argument("--vae", help="VAE override: folder, file or hub id")
    gen.add_argument("--init-image", help="image-to-image: the starting image")
    gen.add_argument("--strength", type=float, help="image-to-image: how much to change it, in (0, 1]")
    gen.add_argument("--clip-skip", type=int, help="CLIP layers to skip, as A1111 counts (1: none)")
    gen.add_argument("--prompts-file", help="one prompt per line, or JSON lines with per-line settings")
    gen.add_argument("--like", type=int, metavar="ID", help="variations of image ID: its settings, new seeds")
    _add_runtime(gen)
    gen.add_argument("--batch", type=int, help="images per pipeline call")
    gen.add_argument("--enqueue", action="store_true", help="queue jobs for `promptdex worker` instead")
    gen.add_argument("--ray", metavar="ADDRESS", help="run as a Ray Data job on the cluster at ADDRESS "
                     "(HOST:PORT of its head; needs promptdex[cluster])")
    gen.add_argument("--actors", type=int, help="with --ray: pipelines (actors) to run (default: one per GPU, "
                     "else per CPU)")
    gen.add_argument("--json", action="store_true", help="print a JSON list of ids")
    gen.set_defaults(func=run_generate)

    work = sub.add_parser("worker", help="take generation jobs from the database and run them")
    work.add_argument("--once", action="store_true", help="drain the queue, then exit")
    work.add_argument("--poll", type=float, help="seconds between looks at an empty queue")
    work.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    work.add_argument("--lease", type=float, help="seconds a job stays ours without renewal")
    work.add_argument("--batch", type=int, help="images per pipeline call (and jobs per claim)")
    work.add_argument("--name", help="worker name recorded on its jobs (default host:pid:random)")
    _add_runtime(work)
    work.add_argument("--json", action="store_true", help="print the summary as JSON")
    work.set_defaults(func=run_worker_command)

    rep = sub.add_parser("reproduce", help="make a stored image again and compare it bit for bit")
    rep.add_argument("image_id", type=int, nargs="?", help="the image id")
    rep.add_argument("--missing", action="store_true",
                     help="queue reproduce jobs for every generated image whose file is missing (from the images "
                          "folder, or from the store PROMPTDEX_STORAGE_URL names)")
    _add_runtime(rep)
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.set_defaults(func=run_reproduce)


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", help="auto, float32, float16, bfloat16")
    parser.add_argument("--threads", type=int, help="torch CPU threads (recorded with every image)")
    parser.add_argument("--offline", action="store_true", help="load models from local files only")


def _offline(args: argparse.Namespace) -> bool:
    return bool(args.offline) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _check_runtime(args: argparse.Namespace) -> None:
    from generator.environment import check_device_name, check_dtype_name

    if args.device:
        check_device_name(args.device)
    if args.dtype:
        check_dtype_name(args.dtype)
    if args.threads is not None and args.threads < 1:
        raise InvalidInput(f"--threads: {args.threads} is not accepted; accepted: 1 or more")
    batch = getattr(args, "batch", None)
    if batch is not None and batch < 1:
        raise InvalidInput(f"--batch: {batch} is not accepted; accepted: 1 or more")


def _cli_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": args.prompt, "negative_prompt": args.negative, "seed": args.seed, "seeds": args.seeds,
        "count": args.count, "steps": args.steps, "cfg": args.cfg, "sampler": args.sampler,
        "schedule": args.schedule, "size": args.size, "model": args.model, "model_config": args.model_config,
        "vae": args.vae, "init_image": args.init_image, "strength": args.strength, "clip_skip": args.clip_skip,
    }


def _drafts(args: argparse.Namespace, settings: Settings) -> list[Any]:
    from generator.drafts import Draft, draft_request, read_prompts_file
    from promptdex.catalog import fill_defaults

    options = _cli_options(args)
    if args.like is not None:
        if args.prompts_file or args.prompt is not None:
            raise InvalidInput("--like takes no prompt and no --prompts-file (it reuses the image's)")
        drafts = [_like_draft(args, settings, options)]
    elif args.prompts_file:
        if args.prompt is not None:
            raise InvalidInput("give either a PROMPT or --prompts-file, not both")
        lines = read_prompts_file(Path(args.prompts_file).expanduser())
        drafts = [draft_request({**options, **line}, where=where) for where, line in lines]
    elif args.prompt is None:
        raise InvalidInput("no prompt: give PROMPT, --prompts-file FILE or --like ID")
    else:
        drafts = [draft_request(options)]
    return [Draft(fill_defaults(d.request, settings), d.init_path, d.where) for d in drafts]


def _like_draft(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> Any:
    from generator.drafts import Draft, draft_request
    from generator.service import request_like
    from promptdex.db import open_database
    from promptdex.errors import NotFound
    from promptdex.store import get_image

    seeds = draft_request({k: options[k] for k in ("seed", "seeds", "count")}).request.seeds
    db = open_database(settings)
    try:
        with db.connect() as conn:
            image = get_image(conn, image_id=args.like)
    finally:
        db.close()
    if image is None:
        raise NotFound(f"--like: image {args.like} is not in the corpus")
    overrides = {k: options[k] for k in ("negative_prompt", "steps", "cfg", "sampler", "schedule", "model", "vae",
                                         "strength", "clip_skip") if options[k] is not None}
    if options["size"]:
        from promptdex.generation import parse_size

        overrides["width"], overrides["height"] = parse_size(options["size"], argument="--size")
    return Draft(request_like(image, seeds=seeds, overrides=overrides), None, f"--like {args.like}: ")


def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    from generator.output import store_input_image
    from generator.requests import check_inputs
    from generator.service import inputs_path
    from promptdex.storage import check_storage

    _check_runtime(args)
    check_storage(settings)  # PROMPTDEX_STORAGE_URL that cannot be written and read back: one clear error now
    if args.actors is not None and (not args.ray or args.actors < 1):
        raise InvalidInput(f"--actors: {args.actors} is not accepted; accepted: 1 or more, with --ray")
    if args.ray and args.enqueue:
        raise InvalidInput("give either --ray or --enqueue, not both")
    if args.ray:
        from generator.fleet import import_ray

        import_ray()  # a clear error before anything is written when the extra is missing
    drafts = _drafts(args, settings)
    from promptdex.catalog import warnings_for

    for draft in drafts:
        check_inputs(draft.request, where=draft.where)
    for draft in drafts:  # allowed, but outside what the model is made for (its profile)
        for warning in warnings_for(draft.request, settings):
            sys.stderr.write(f"{draft.where}warning: {warning}\n")
    for draft in drafts:  # every input is valid: now keep the init images
        if draft.init_path is not None:
            store_input_image(draft.init_path, inputs_path=inputs_path(settings))
    requests = [d.request for d in drafts]
    if args.enqueue:
        return _enqueue(args, settings, requests)
    if args.ray:
        return _generate_on_ray(args, settings, requests)
    return _generate_now(args, settings, requests)


def _enqueue(args: argparse.Namespace, settings: Settings, requests: list[Any]) -> int:
    from promptdex.catalog import batch_key
    from promptdex.db import open_database
    from promptdex.jobs import enqueue_jobs

    size = args.batch or settings.generator.batch_size
    payloads, keys = [], []
    for request in requests:
        seeds = request.seeds or []
        for start in range(0, len(seeds), size):
            chunk = seeds[start:start + size]
            payloads.append(request.model_copy(update={"seeds": chunk, "count": len(chunk)}).model_dump(
                mode="json", exclude_none=True))
            keys.append(batch_key(request))
    db = open_database(settings)
    try:
        with db.connect() as conn:
            ids = enqueue_jobs(conn, payloads=payloads, images=[int(p.get("count", 1)) for p in payloads],
                               max_attempts=settings.generator.max_attempts, batch_keys=keys)
            conn.commit()
    finally:
        db.close()
    out(json.dumps(ids) if args.json else " ".join(map(str, ids)))
    sys.stderr.write(f"queued {len(ids)} jobs for {sum(len(r.seeds or []) for r in requests)} images\n")
    return 0


def _generate_now(args: argparse.Namespace, settings: Settings, requests: list[Any]) -> int:
    from tqdm import tqdm

    from generator.environment import torch_threads
    from generator.output import repair_incoming
    from generator.service import ModelCache, generate_images
    from promptdex.db import open_database
    from promptdex.storage import remote_storage

    total = sum(len(r.seeds or []) for r in requests)
    started = time.monotonic()
    cache = ModelCache(settings, device=args.device, dtype=args.dtype, local_files_only=_offline(args))
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn, torch_threads(args.threads or settings.generator.threads), \
                tqdm(total=total, unit="img", desc="generate", file=sys.stderr, disable=None) as bar:
            repair_incoming(conn, images_path=settings.images_path, storage=remote_storage(settings, "images"))
            outcome = generate_images(conn, settings, requests, cache=cache,
                                      batch_size=args.batch or settings.generator.batch_size, progress=bar.update)
    finally:
        cache.close()
        db.close()
    ids = [i for row in outcome.ids for i in row]
    out(json.dumps(ids) if args.json else " ".join(map(str, ids)))
    sys.stderr.write(f"generated {total} images ({outcome.created} new, {outcome.existing} already in the corpus, "
                     f"{outcome.blocked} blocked) in {time.monotonic() - started:.1f} s\n")
    return 0


def _generate_on_ray(args: argparse.Namespace, settings: Settings, requests: list[Any]) -> int:
    from tqdm import tqdm

    from generator.fleet import generate_on_ray
    from promptdex.cluster import seal_stdout, stdout_to_stderr

    total = sum(len(r.seeds or []) for r in requests)
    started = time.monotonic()
    with stdout_to_stderr(), tqdm(total=total, unit="img", desc="generate (ray)", file=sys.stderr,
                                  disable=None) as bar:
        result = generate_on_ray(settings, requests, address=args.ray, actors=args.actors, device=args.device,
                                 dtype=args.dtype, threads=args.threads, offline=_offline(args),
                                 block_rows=args.batch or settings.generator.batch_size, progress=bar.update)
    ids = [i for row in result["ids"] for i in row]
    out(json.dumps(ids) if args.json else " ".join(map(str, ids)))
    seal_stdout()
    sys.stderr.write(f"generated {total} images on Ray ({result['created']} new, {result['existing']} already in "
                     f"the corpus, {result['skipped']} skipped as stored, {result['blocked']} blocked) in "
                     f"{time.monotonic() - started:.1f} s\n")
    return 0


def run_worker_command(args: argparse.Namespace, settings: Settings) -> int:
    from generator.worker import run_worker

    _check_runtime(args)
    if args.max_jobs is not None and args.max_jobs < 1:
        raise InvalidInput(f"--max-jobs: {args.max_jobs} is not accepted; accepted: 1 or more")
    for name in ("poll", "lease"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise InvalidInput(f"--{name}: {value} is not accepted; accepted: more than 0 seconds")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish the jobs in hand, then exit
    try:
        report = run_worker(settings, once=args.once, poll=args.poll, max_jobs=args.max_jobs,
                            lease_seconds=args.lease, batch_size=args.batch, device=args.device, dtype=args.dtype,
                            threads=args.threads, name=args.name, stop=stop)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        out(json.dumps({"name": report.name, "done": report.done, "failed": report.failed,
                        "images": report.images, "seconds": round(report.seconds, 3), "errors": report.errors}))
    else:
        out(report.summary())
    return 0


def run_reproduce(args: argparse.Namespace, settings: Settings) -> int:
    from generator.reproduce import generation_record, recorded_device_and_dtype, reproduce_image
    from generator.service import ModelCache
    from promptdex.db import open_database
    from promptdex.errors import NotFound
    from promptdex.store import get_image

    _check_runtime(args)
    if args.missing:
        return _queue_missing(args, settings)
    if args.image_id is None:
        raise InvalidInput("reproduce needs an IMAGE_ID (or --missing)")
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            image = get_image(conn, image_id=args.image_id)
            if image is None:
                raise NotFound(f"image {args.image_id} is not in the corpus")
            device, dtype, _, notes = recorded_device_and_dtype(generation_record(image))
            cache = ModelCache(settings, device=args.device or device, dtype=args.dtype or dtype,
                               local_files_only=_offline(args))
            try:
                report = reproduce_image(conn, settings, image_id=args.image_id, cache=cache, threads=args.threads)
            finally:
                cache.close()
    finally:
        db.close()
    report.notes = notes + report.notes
    out(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    return 0 if report.identical else 1


def _queue_missing(args: argparse.Namespace, settings: Settings) -> int:
    from generator.output import find_missing_files
    from promptdex.db import open_database
    from promptdex.generation import JobKind
    from promptdex.jobs import enqueue_jobs
    from promptdex.storage import remote_storage

    db = open_database(settings)
    try:
        with db.connect() as conn:
            missing = find_missing_files(conn, images_path=settings.images_path,
                                         storage=remote_storage(settings, "images"))
            ids = enqueue_jobs(conn, payloads=[{"image_id": i} for i in missing], kind=JobKind.REPRODUCE)
            conn.commit()
    finally:
        db.close()
    out(json.dumps({"missing": missing, "jobs": ids}) if args.json else
        f"{len(missing)} generated images have no file; queued {len(ids)} reproduce jobs")
    return 0
