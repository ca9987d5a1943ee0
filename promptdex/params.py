"""Generation parameters shared by generator, indexer and API, and their AUTOMATIC1111 `parameters` text form."""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)


class ParamsParseError(ValueError):
    """Text that is not A1111 generation parameters; the message says what was missing or wrong."""


class HiresParams(BaseModel):
    """Hires-fix second pass, as A1111's `Hires ...` keys (and `Denoising strength`) record it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    upscale: float | None = None
    upscaler: str | None = None
    steps: int | None = None
    denoising_strength: float | None = None
    resize_width: int | None = None
    resize_height: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    cfg: float | None = None
    prompt: str | None = None
    negative_prompt: str | None = None


class GenerationParams(BaseModel):
    """Everything that made an image, in front-end terms (A1111 names for samplers and schedule types)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    model_hash: str | None = None
    vae: str | None = None
    vae_hash: str | None = None
    clip_skip: int | None = None
    denoising_strength: float | None = None
    variation_seed: int | None = None
    variation_strength: float | None = None
    hires: HiresParams | None = None
    version: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)


# (A1111 key, field, kind) in the order A1111's create_infotext writes them. kind "size" is a WxH pair
# stored as <prefix>width/<prefix>height. "Denoising strength" goes to hires when any Hires key is present.
_MAIN = (
    ("Steps", "steps", "int"), ("Sampler", "sampler", "str"), ("Schedule type", "scheduler", "str"),
    ("CFG scale", "cfg", "float"), ("Seed", "seed", "int"), ("Size", "", "size"),
    ("Model hash", "model_hash", "str"), ("Model", "model", "str"), ("VAE hash", "vae_hash", "str"),
    ("VAE", "vae", "str"), ("Variation seed", "variation_seed", "int"),
    ("Variation seed strength", "variation_strength", "float"),
    ("Denoising strength", "denoising_strength", "float"), ("Clip skip", "clip_skip", "int"),
)
_HIRES = (
    ("Hires sampler", "sampler", "str"), ("Hires prompt", "prompt", "str"),
    ("Hires negative prompt", "negative_prompt", "str"), ("Hires CFG Scale", "cfg", "float"),
    ("Hires schedule type", "scheduler", "str"), ("Hires upscale", "upscale", "float"),
    ("Hires resize", "resize_", "size"), ("Hires steps", "steps", "int"), ("Hires upscaler", "upscaler", "str"),
)
# Other front ends' names for the same settings (SD.Next writes "Hires scale" and "Hires size").
_ALIASES = {"hires scale": "Hires upscale", "hires size": "Hires resize"}
_KEYS: dict[str, tuple[str, str, str]] = {
    **{k.casefold(): ("main", f, kind) for k, f, kind in _MAIN},
    **{k.casefold(): ("hires", f, kind) for k, f, kind in _HIRES},
    "version": ("main", "version", "str"),
}
_KEYS.update({alias: _KEYS[target.casefold()] for alias, target in _ALIASES.items()})
_CORE = {"steps", "sampler", "seed", "cfg scale", "size", "model", "model hash"}

# A1111 sd_schedulers labels, names and aliases (plus Forge's), longest first: an old-style sampler name
# such as "DPM++ 2M Karras" ends with one of them when the text has no "Schedule type".
_SCHEDULE_LABELS = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                    "Align Your Steps", "Align Your Steps GITS", "Align Your Steps 11", "Align Your Steps 32",
                    "Simple", "Normal", "DDIM", "Beta", "Turbo")
_SCHEDULE_SUFFIXES = sorted({*_SCHEDULE_LABELS, *(s.lower().replace(" ", "_") for s in _SCHEDULE_LABELS),
                             "SGMUniform"}, key=len, reverse=True)

_INT_RE = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SIZE_RE = re.compile(r"([0-9]+)x([0-9]+)")
_KEY_RE = re.compile(r"[^\s,:\"][^,:\"\n]*")
_VERSION_RE = re.compile(r"(?:^|[,\n])\s*Version:\s*([^\s,]+)")
_NEGATIVE = "Negative prompt:"


def quote(value: str) -> str:
    """A settings-line value as A1111's `quote()` writes it: JSON-quoted when it holds ',', ':' or a newline.

    Also quoted, so that the text reads back the same: a value with surrounding whitespace or one that opens
    with '"', '{' or '['. A JSON object or array on one line is written as is, as A1111 writes dict values
    (e.g. `Hashes: {"vae": "c6a580b13a"}`).
    """
    if _is_inline_json(value):
        return value
    if (any(c in value for c in ",:\n") or value != value.strip() or value.startswith(('"', "{", "["))):
        return json.dumps(value, ensure_ascii=False)
    return value


def _is_inline_json(value: str) -> bool:
    if not value.startswith(("{", "[")) or "\n" in value or value != value.strip():
        return False
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # A1111 writes a whole cfg as "7", not "7.0"
    return repr(value)


def _writable_problems(p: GenerationParams) -> list[str]:
    problems = []
    if (p.width is None) != (p.height is None):
        problems.append("width and height must be set together (A1111 writes them as 'Size: WxH')")
    if p.hires is not None:
        h = p.hires
        if (h.resize_width is None) != (h.resize_height is None):
            problems.append("hires.resize_width and hires.resize_height must be set together")
        if p.denoising_strength is not None:
            problems.append("with hires set, put the strength in hires.denoising_strength: A1111 text has "
                            "one 'Denoising strength', which belongs to the hires pass")
        if all(getattr(h, f) is None for f in HiresParams.model_fields if f != "denoising_strength"):
            problems.append("hires needs at least one setting besides denoising_strength (e.g. upscale)")
    for key in p.extra:
        if not _KEY_RE.fullmatch(key) or key != key.strip():
            problems.append(f"extra key {key!r} is not a settings-line key (no ',', ':', '\"' or newline; "
                            "no surrounding spaces)")
        elif key.casefold() in _KEYS:
            problems.append(f"extra key {key!r} is a key this model maps to a field; set the field instead")
    return problems


def format_a1111(p: GenerationParams) -> str:
    """The `parameters` text A1111 writes for `p`: prompt, `Negative prompt:` line, settings line.

    Raises ValueError when `p` holds something A1111 text cannot carry (see the message).
    """
    problems = _writable_problems(p)
    if problems:
        raise ValueError("cannot write these parameters as A1111 text: " + "; ".join(problems))
    pairs: list[tuple[str, str]] = []

    def add(key: str, value: str | int | float | None) -> None:
        if value is not None:
            pairs.append((key, quote(value) if isinstance(value, str) else _number(value)))

    h = p.hires
    for key, field, kind in _MAIN:
        if kind == "size":
            if p.width is not None and p.height is not None:
                pairs.append((key, f"{p.width}x{p.height}"))
        elif field == "denoising_strength":
            add(key, h.denoising_strength if h is not None else p.denoising_strength)
        else:
            add(key, getattr(p, field))
    if h is not None:
        for key, field, kind in _HIRES:
            if kind == "size":
                if h.resize_width is not None and h.resize_height is not None:
                    pairs.append((key, f"{h.resize_width}x{h.resize_height}"))
            else:
                add(key, getattr(h, field))
    text = [f"{k}: {v}" for k, v in pairs]
    text += [k if k == v else f"{k}: {quote(v)}" for k, v in p.extra.items()]  # A1111 writes `k` when v == k
    if p.version is not None:
        text.append(f"Version: {quote(p.version)}")
    settings = ", ".join(text)
    negative = f"\n{_NEGATIVE} {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompt}{negative}\n{settings}".strip()


def _scan_json_string(line: str, start: int) -> int:
    """Index just past the JSON string opening at `start`, or -1 when it does not close."""
    i = start + 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
        elif line[i] == '"':
            return i + 1
        else:
            i += 1
    return -1


def _scan_json_container(line: str, start: int) -> int:
    """Index just past the bracketed JSON value opening at `start`, or -1 when it does not close."""
    depth, i = 0, start
    while i < len(line):
        c = line[i]
        if c == '"':
            i = _scan_json_string(line, i)
            if i < 0:
                return -1
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _ends_value(line: str, i: int) -> int:
    """Position after the ',' that ends a value at `i` (skipping spaces), len(line) at the end, else -1."""
    while i < len(line) and line[i] == " ":
        i += 1
    if i >= len(line):
        return len(line)
    return i + 1 if line[i] == "," else -1


def _tokenize(line: str) -> list[tuple[str, str]] | None:
    """`Key: value, ...` pairs of a settings line (values unquoted), or None when it is not one."""
    pairs: list[tuple[str, str]] = []
    pos, n = 0, len(line)
    while pos < n:
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos >= n:
            break
        colon, comma = line.find(":", pos), line.find(",", pos)
        end = n if comma < 0 else comma
        bare = colon < 0 or 0 <= comma < colon  # a flag: A1111 writes `k` when the value equals the key
        key = line[pos:end if bare else colon].strip()
        valid = _KEY_RE.fullmatch(key) is not None
        if not pairs and (bare or not valid):
            return None  # a settings line opens with `Key: value`
        if bare or not valid:
            if valid:
                pairs.append((key, key))
            elif key:
                logger.debug("skipping %r in an A1111 settings line: not a `Key: value` pair", line[pos:end])
            pos = end + 1
            continue
        vs = colon + 1
        while vs < n and line[vs] == " ":
            vs += 1
        value: str | None = None
        if vs < n and line[vs] == '"':
            end = _scan_json_string(line, vs)
            nxt = _ends_value(line, end) if end > 0 else -1
            if nxt >= 0:
                try:
                    value = json.loads(line[vs:end])
                except ValueError:
                    value = line[vs:end]
                pos = nxt
        elif vs < n and line[vs] in "{[":
            end = _scan_json_container(line, vs)
            nxt = _ends_value(line, end) if end > 0 else -1
            if nxt >= 0:
                value, pos = line[vs:end], nxt
        if value is None:
            end = line.find(",", vs)
            end = n if end < 0 else end
            value, pos = line[vs:end].strip(), end + 1
        pairs.append((key, str(value)))
    return pairs


def _settings(text: str) -> tuple[list[str], list[tuple[str, str]]] | None:
    lines = text.strip().split("\n")
    pairs = _tokenize(lines[-1].strip())
    if not pairs or not any(k.casefold() in _CORE for k, _ in pairs):
        return None
    return lines[:-1], pairs


def looks_like_a1111(text: str) -> bool:
    """Whether `text` ends in an A1111 settings line (`Steps: 20, Sampler: ..., Seed: ...`)."""
    return not text.lstrip().startswith(("{", "[")) and _settings(text) is not None


def _convert(key: str, raw: str, kind: str) -> Any:
    if kind == "str":
        return raw
    if kind == "int" and _INT_RE.fullmatch(raw):
        return int(raw.split(".")[0])
    if kind == "float" and _FLOAT_RE.fullmatch(raw) and math.isfinite(float(raw)):
        return float(raw)
    m = _SIZE_RE.fullmatch(raw)
    if kind == "size" and m:
        return int(m.group(1)), int(m.group(2))
    accepted = {"int": "an integer", "float": "a finite number", "size": "WIDTHxHEIGHT, e.g. 512x768"}[kind]
    raise ParamsParseError(f"A1111 setting {key!r} has value {raw!r}; expected {accepted}")


def split_old_sampler(name: str) -> tuple[str, str] | None:
    """("DPM++ 2M", "Karras") for an old-style "DPM++ 2M Karras"; None when no schedule type ends the name."""
    for suffix in _SCHEDULE_SUFFIXES:
        if name.endswith(" " + suffix) and len(name) > len(suffix) + 1:
            return name[: -len(suffix) - 1], suffix
    return None


def _apply_old_sampler(values: dict[str, Any]) -> None:
    if values.get("scheduler") is None and values.get("sampler"):
        split = split_old_sampler(values["sampler"])
        if split:
            values["sampler"], values["scheduler"] = split


def parse_a1111(text: str) -> GenerationParams:
    """Read A1111-style `parameters` text (A1111, Forge, reForge, SD.Next, Civitai, ...).

    Prompts keep their inner whitespace and lose the surrounding one. Settings this model does not map stay in
    `extra`, in order, with quoted values unquoted. Raises ParamsParseError when the text has no settings
    line or a mapped setting has a value of the wrong kind.
    """
    found = _settings(text)
    if found is None:
        last = text.strip().rsplit("\n", 1)[-1][:80]
        raise ParamsParseError(
            "no A1111 settings line: the last line must be 'Key: value' pairs with at least one of Steps, "
            f"Sampler, Seed, CFG scale, Size, Model, Model hash (got {last!r})"
        )
    body, pairs = found
    neg_at = next((i for i, line in enumerate(body) if line.lstrip().startswith(_NEGATIVE)), len(body))
    main: dict[str, Any] = {"prompt": "\n".join(body[:neg_at]).strip()}
    if neg_at < len(body):
        first = body[neg_at].lstrip()[len(_NEGATIVE):]
        main["negative_prompt"] = "\n".join([first, *body[neg_at + 1:]]).strip()
    hires: dict[str, Any] = {}
    extra: dict[str, str] = {}
    denoise: float | None = None
    for key, raw in pairs:
        spec = _KEYS.get(key.casefold())
        if spec is None:
            extra[key] = raw
            continue
        target, field, kind = spec
        value = _convert(key, raw, kind)
        if field == "denoising_strength":
            denoise = value
        elif kind == "size":
            into = main if target == "main" else hires
            prefix = "" if target == "main" else field
            into[f"{prefix}width"], into[f"{prefix}height"] = value
        else:
            (main if target == "main" else hires)[field] = value
    _apply_old_sampler(main)
    if hires:
        _apply_old_sampler(hires)
        hires["denoising_strength"] = denoise
        main["hires"] = HiresParams(**hires)
    else:
        main["denoising_strength"] = denoise
    return GenerationParams(**main, extra=extra)


def detect_software(text: str, raw: dict[str, str] | None = None) -> str:
    """The front end that wrote an image, by sd-metadata's names ("sd-webui", "forge-neo", ...), else "unknown".

    `text` is the A1111 `parameters` text (or other main text); `raw` all text chunks of the file.
    """
    raw = raw or {}
    if raw.get("Software", "").startswith("NovelAI"):
        return "novelai"
    for key, name in (("invokeai_metadata", "invokeai"), ("generation_data", "tensorart"),
                      ("smproj", "stability-matrix"), ("extraMetadata", "civitai"), ("fooocus_scheme", "fooocus")):
        if key in raw:
            return name
    if "sui_image_params" in text or "swarm_version" in text:
        return "swarmui"
    prompt_chunk = raw.get("prompt", raw.get("Prompt", ""))
    if "workflow" in raw or "Workflow" in raw or (prompt_chunk.startswith("{") and "class_type" in prompt_chunk):
        return "comfyui"
    if text.lstrip().startswith("{"):
        return _detect_json(text)
    m = _VERSION_RE.search(text.strip().rsplit("\n", 1)[-1])  # the settings line, not the prompt
    version = m.group(1) if m else ""
    if re.match(r"v\d", version):
        return "sd-webui"
    if version == "classic":
        return "forge-classic"
    if version.startswith("neo"):
        return "forge-neo"
    if re.match(r"f\d", version):
        if re.match(r"f\d+\.\d+(\.\d+)?-v", version):
            return "easy-reforge"
        return "reforge" if re.match(r"f\d+\.\d+(\.\d+)?v\d+-v", version) else "forge"
    if version.startswith("Fooocus"):
        return "fooocus"
    if "App: SD.Next" in text or "App:SD.Next" in text:
        return "sd-next"
    if "Civitai resources:" in text:
        return "civitai"
    if any(marker in text for marker in ("Steps:", "Sampler:", _NEGATIVE)):
        return "sd-webui"  # includes ComfyUI save nodes that write A1111 text, as sd-metadata reports them
    return "unknown"


_JSON_HINTS = (  # sd-metadata's order for JSON metadata: the most specific markers first
    (('"software": "RuinedFooocus"', '"software":"RuinedFooocus"'), "ruined-fooocus"),
    (('"use_stable_diffusion_model"',), "easydiffusion"), (("civitai:", '"extraMetadata"'), "civitai"),
    (('"v4_prompt"', '"noise_schedule"', '"uncond_scale"'), "novelai"),
)


def _detect_json(text: str) -> str:
    for markers, name in _JSON_HINTS:
        if any(m in text for m in markers):
            return name
    if '"Model"' in text and '"resolution"' in text:
        return "hf-space"
    if '"prompt"' in text and '"base_model"' in text:
        return "fooocus"
    return "comfyui" if '"prompt"' in text or '"nodes"' in text else "unknown"
