"""Turn command-line options and `--prompts-file` lines into generation requests (seeds drawn, sizes parsed).

A prompts file holds one prompt per line (blank lines and lines starting with `#` are skipped), or JSON objects,
one per line, with the prompt and any per-line settings, e.g.
`{"prompt": "a red fox", "negative": "blurry", "seeds": "1-4", "steps": 30, "size": "512x768"}`.
Keys: see `LINE_KEYS`; a line's settings win over the command line's. `init_image` paths are relative to the
file's folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from generator.output import check_init_image
from promptdex.errors import InvalidInput
from promptdex.generation import (
    MAX_SIZE,
    MIN_SIZE,
    GenerateRequest,
    parse_seeds,
    parse_size,
    random_seeds,
    seeds_problem,
)

logger = logging.getLogger(__name__)

LINE_KEYS = ("prompt", "negative_prompt", "negative", "seed", "seeds", "count", "steps", "cfg", "sampler",
             "schedule", "size", "width", "height", "clip_skip", "model", "model_config", "vae", "init_image",
             "strength")


@dataclass
class Draft:
    """A request with its seeds, and the init image file to keep (written only after every draft is checked)."""

    request: GenerateRequest
    init_path: Path | None
    where: str


def read_prompts_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, options) per prompt line; `where` is "FILE:LINE: " for messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--prompts-file: cannot read {path}: {exc}") from exc
    lines: list[tuple[str, dict[str, Any]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{path.name}:{number}: "
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            lines.append((where, {"prompt": line}))
            continue
        try:
            options = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"{where}not valid JSON ({exc.args[0]}); a line is a prompt or a JSON object") from exc
        if not isinstance(options, dict) or not isinstance(options.get("prompt"), str):
            raise InvalidInput(f'{where}a JSON line needs a "prompt" string')
        unknown = sorted(set(options) - set(LINE_KEYS))
        if unknown:
            raise InvalidInput(f"{where}unknown key(s) {', '.join(unknown)}; accepted: {', '.join(LINE_KEYS)}")
        if isinstance(options.get("init_image"), str):
            options["init_image"] = str((path.parent / options["init_image"]).expanduser())
        lines.append((where, options))
    if not lines:
        raise InvalidInput(f"--prompts-file: {path} holds no prompt")
    return lines


def _seeds(options: dict[str, Any], where: str) -> list[int]:
    count = options.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise InvalidInput(f"{where}--count: {count!r} is not accepted; accepted: a whole number of at least 1")
    seeds_opt = options.get("seeds")
    if seeds_opt is not None:
        seeds = [int(s) for s in seeds_opt] if isinstance(seeds_opt, list) else parse_seeds(str(seeds_opt),
                                                                                            argument="--seeds")
        problem = seeds_problem(seeds)
        if problem:
            raise InvalidInput(f"{where}--seeds: {problem}")
        if count is not None and count != len(seeds):
            raise InvalidInput(f"{where}--count {count} does not match the {len(seeds)} seeds of --seeds")
        return seeds
    seed = options.get("seed")
    n = count or 1
    if seed is None or seed == -1:
        return random_seeds(n)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidInput(f"{where}--seed: {seed!r} is not a whole number")
    seeds = list(range(seed, seed + n))
    problem = seeds_problem(seeds)
    if problem:
        raise InvalidInput(f"{where}--seed: {problem}")
    return seeds


def draft_request(options: dict[str, Any], *, where: str = "") -> Draft:
    """A request from options named as on the command line (None: unset, default later)."""
    opts = {k: v for k, v in options.items() if v is not None}
    try:
        seeds = _seeds(opts, where)
        fields: dict[str, Any] = {
            "prompt": opts.get("prompt", ""), "negative_prompt": opts.get("negative_prompt", opts.get("negative", "")),
            "seeds": seeds, "count": len(seeds),
        }
        for key in ("steps", "cfg", "sampler", "schedule", "clip_skip", "model", "vae", "strength", "width",
                    "height"):
            if key in opts:
                fields[key] = opts[key]
        for key in ("model", "vae"):  # a local path is kept absolute, so a worker elsewhere finds it
            if isinstance(fields.get(key), str) and Path(fields[key]).expanduser().exists():
                fields[key] = str(Path(fields[key]).expanduser().resolve())
        if "model_config" in opts:
            fields["model_config_path"] = str(Path(opts["model_config"]).expanduser().resolve())
        if "size" in opts:
            fields["width"], fields["height"] = parse_size(str(opts["size"]), argument="--size")
        init_path = None
        if "init_image" in opts:
            init_path = Path(str(opts["init_image"])).expanduser()
            sha, width, height = check_init_image(init_path)
            fields["init_image"] = sha
            if "width" not in fields:
                fields["width"], fields["height"] = _init_size(width, height)
        request = GenerateRequest(**fields)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}{exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "options"
        raise InvalidInput(f"{where}{name}: {first['msg']} (got {first.get('input')!r})") from exc
    return Draft(request, init_path, where)


def _init_size(width: int, height: int) -> tuple[int, int]:
    """The output size for an init image when --size is not given: its own, rounded down to multiples of 8."""
    w, h = width - width % 8, height - height % 8
    if not (MIN_SIZE <= w <= MAX_SIZE and MIN_SIZE <= h <= MAX_SIZE):
        raise InvalidInput(f"--init-image is {width}x{height}; pass --size WxH (multiples of 8 from {MIN_SIZE} to "
                           f"{MAX_SIZE}) to resize it")
    return w, h
