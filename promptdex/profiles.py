"""Model profiles: recommended defaults and ranges per model family, detected from a model's name and configs.

A profile says what a family of models is made for (SD 1.x at 512 px, SDXL at 1024 px, SD-Turbo in one step
without guidance, ...). The family is detected without loading weights: from the model's name where that is
decisive, then from its diffusers configs (model_index.json, scheduler/scheduler_config.json, unet/config.json)
read from a diffusers folder or the local Hugging Face cache. No ML library is imported here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

# The built-in tiny model's alias and folder name; repeats generator/tiny.py TINY_ALIAS and TINY_NAME (the core
# must not import the generator). Keep the two in step.
TINY_ALIAS = "tiny"
TINY_NAME = "promptdex-tiny-sd-v1"

Configs = tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]
_NONE: Configs = (None, None, None)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_TRAILING = {"timestep_spacing": "trailing"}


class Family(StrEnum):
    """A family of models that share sizes, step counts and guidance."""

    SD1 = "sd1"
    SD2 = "sd2"
    SD2_V = "sd2-v"
    SDXL = "sdxl"
    SD_TURBO = "sd-turbo"
    SDXL_TURBO = "sdxl-turbo"
    LCM = "lcm"
    LIGHTNING = "lightning"
    TINY = "tiny"


@dataclass(frozen=True)
class Profile:
    """Recommended defaults and ranges for one model family."""

    family: Family
    label: str
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    schedule: str
    steps_range: tuple[int, int]
    cfg_range: tuple[float, float]
    sizes: tuple[tuple[int, int], ...]
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)
    refiner_start: float | None = None
    notes: str = ""
    card: str = ""  # the model card's advice, short, quoted in warnings: "its model card: 1 step, guidance 0.0"

    @property
    def name(self) -> str:
        """The family's short name for sentences: the label without its parenthesis ("SD-Turbo")."""
        return self.label.split(" (", 1)[0]

    @property
    def side_range(self) -> tuple[int, int]:
        """The smallest and largest side among the recommended sizes; width and height outside it are warned."""
        sides = [side for size in self.sizes for side in size]
        return min(sides), max(sides)

    def warnings(self, *, steps: int, cfg: float, width: int, height: int) -> list[str]:
        """One plain sentence per value outside the recommended range, naming the field as the API names it."""
        found: list[str] = []
        lo_side, hi_side = self.side_range
        checks: tuple[tuple[str, float, float, float, str], ...] = (
            ("steps", steps, self.steps_range[0], self.steps_range[1], _range(*self.steps_range)),
            ("cfg", cfg, self.cfg_range[0], self.cfg_range[1], _range(*self.cfg_range)),
            ("width", width, lo_side, hi_side, _range(lo_side, hi_side) + " px"),
            ("height", height, lo_side, hi_side, _range(lo_side, hi_side) + " px"),
        )
        for name, value, lo, hi, text in checks:
            if lo - 1e-9 <= value <= hi + 1e-9:
                continue
            why = f" ({self.card})" if self.card and name in ("steps", "cfg") else ""
            if name in ("width", "height"):
                why = f" (default {self.width}x{self.height})"
            found.append(f"{name}: {_num(value)} is outside {self.name}'s recommended {text}{why}")
        return found

    def as_dict(self) -> dict[str, Any]:
        """The profile as JSON-ready data: lists, not tuples; the family as its string."""
        data = asdict(self)
        data["family"] = str(self.family)
        data["steps_range"] = list(self.steps_range)
        data["cfg_range"] = list(self.cfg_range)
        data["sizes"] = [list(size) for size in self.sizes]
        data["scheduler_overrides"] = dict(self.scheduler_overrides)
        data["side_range"] = list(self.side_range)
        return data


def _num(value: float) -> str:
    """A number as people write it: 20, 7.0, 1.5."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return str(float(value))


def _range(lo: float, hi: float) -> str:
    return _num(lo) if lo == hi else f"{_num(lo)}-{_num(hi)}"


def _sizes(*pairs: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    return tuple(pairs)


_SD1_SIZES = _sizes((512, 512), (512, 768), (768, 512), (448, 576), (576, 448))
_SD2V_SIZES = _sizes((768, 768), (768, 1024), (1024, 768), (640, 896), (896, 640))
_SDXL_SIZES = _sizes((1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768))
_TURBO_SIZES = _sizes((512, 512), (448, 576), (576, 448), (512, 640), (640, 512))

PROFILES: dict[Family, Profile] = {
    Family.SD1: Profile(
        Family.SD1, "SD 1.x (512 px, 20-30 steps)", 512, 512, 25, 7.0, "DPM++ 2M", "Karras", (15, 50), (4.0, 12.0),
        _SD1_SIZES, notes="Trained at 512x512; much larger sizes repeat subjects, use hires fix instead.",
        card="its model card: 512x512, about 20-50 steps, guidance 7.5"),
    Family.SD2: Profile(
        Family.SD2, "SD 2.x base (512 px, epsilon)", 512, 512, 25, 7.0, "DPM++ 2M", "Karras", (15, 50), (4.0, 12.0),
        _SD1_SIZES, notes="The 512 px base model of SD 2.x (epsilon prediction).",
        card="its model card: 512x512, about 25 steps"),
    Family.SD2_V: Profile(
        Family.SD2_V, "SD 2.x (768 px, v-prediction)", 768, 768, 25, 7.0, "DPM++ 2M", "Karras", (15, 50),
        (4.0, 12.0), _SD2V_SIZES, notes="The 768 px v-prediction model of SD 2.x; 512 px images come out poorly.",
        card="its model card: 768x768, about 25 steps"),
    Family.SDXL: Profile(
        Family.SDXL, "SDXL (1024 px, ~30 steps)", 1024, 1024, 30, 6.0, "DPM++ 2M", "Karras", (20, 60), (4.0, 9.0),
        _SDXL_SIZES, refiner_start=0.8,
        notes="Trained at about one megapixel in several aspect ratios; a refiner can take the last 20% of steps.",
        card="its model card: 1024x1024, about 30-50 steps, guidance 5-7"),
    Family.SD_TURBO: Profile(
        Family.SD_TURBO, "SD-Turbo (1-4 steps, no guidance)", 512, 512, 1, 0.0, "Euler a", "Automatic", (1, 4),
        (0.0, 0.0), _TURBO_SIZES, scheduler_overrides=dict(_TRAILING),
        notes="Distilled for 1-4 steps at 512x512 with guidance_scale=0.0 (no negative prompt effect).",
        card="its model card: 1 step, guidance 0.0"),
    Family.SDXL_TURBO: Profile(
        Family.SDXL_TURBO, "SDXL-Turbo (1-4 steps, no guidance)", 512, 512, 1, 0.0, "Euler a", "Automatic", (1, 4),
        (0.0, 0.0), _TURBO_SIZES, scheduler_overrides=dict(_TRAILING),
        notes="Distilled for 1-4 steps at 512x512 with guidance_scale=0.0 (no negative prompt effect).",
        card="its model card: 1 step, guidance 0.0, 512x512"),
    Family.LCM: Profile(
        Family.LCM, "LCM (2-8 steps, low guidance)", 512, 512, 4, 1.5, "LCM", "Automatic", (2, 8), (1.0, 2.0),
        _sizes((512, 512), (512, 768), (768, 512), (768, 768), (1024, 1024)),
        notes="Latent consistency models need the LCM scheduler, 2-8 steps and guidance between 1 and 2.",
        card="the LCM docs: 4 steps, guidance 1.0-2.0"),
    Family.LIGHTNING: Profile(
        Family.LIGHTNING, "SDXL-Lightning (2-8 steps, no guidance)", 1024, 1024, 4, 0.0, "Euler", "SGM Uniform",
        (2, 8), (0.0, 1.0), _SDXL_SIZES, scheduler_overrides=dict(_TRAILING),
        notes="Distilled SDXL: use as many steps as the checkpoint was made for (2, 4 or 8), guidance 0, "
              "Euler with trailing timesteps.",
        card="its model card: 4 steps, guidance 0, Euler with trailing timesteps"),
    Family.TINY: Profile(
        Family.TINY, "Tiny test model (random weights)", 128, 128, 8, 7.0, "Euler a", "Automatic", (1, 50),
        (0.0, 20.0), _sizes((128, 128), (128, 192), (192, 128), (64, 64), (256, 256)),
        notes="The built-in tiny SD 1.x-shaped model with random weights: its images are noise, but cheap.",
        card="a test model: any steps work, keep it small"),
}


def _name_key(name: str) -> str:
    """The part of a model argument that names it, lower-case, with _ and spaces as -."""
    text = name.strip()
    if not _HUB_ID.match(text) or Path(text).expanduser().exists():
        path = Path(text)
        stem = path.name
        if path.suffix.lower() in _CHECKPOINT_SUFFIXES:
            stem = path.stem
        elif path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
            stem = path.parent.parent.name.removeprefix("models--")  # a folder inside the HF cache
        text = stem or text
    return re.sub(r"[\s_]+", "-", text.casefold())


def _is_tiny(key: str) -> bool:
    return key == TINY_ALIAS or TINY_NAME in key


def _is_sdxl(key: str, model_index: dict[str, Any] | None, unet: dict[str, Any] | None) -> bool:
    cls = str((model_index or {}).get("_class_name", ""))
    if cls.startswith("StableDiffusionXL"):
        return True
    if unet and (unet.get("cross_attention_dim") == 2048 or unet.get("addition_embed_type") == "text_time"):
        return True
    if model_index or unet:
        return False
    return any(mark in key for mark in ("sdxl", "sd-xl", "stable-diffusion-xl"))


def detect_family(name: str, *, model_index: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None,
                  unet: dict[str, Any] | None = None) -> Family:
    """The family of a model from its name (where decisive) and its diffusers configs (any may be None)."""
    key = _name_key(name)
    if _is_tiny(key):
        return Family.TINY
    if "turbo" in key:
        return Family.SDXL_TURBO if _is_sdxl(key, model_index, unet) else Family.SD_TURBO
    if "lightning" in key:
        return Family.LIGHTNING
    if "lcm" in key or (scheduler or {}).get("_class_name") == "LCMScheduler":
        return Family.LCM
    if _is_sdxl(key, model_index, unet):
        return Family.SDXL
    sd2_name = any(mark in key for mark in ("stable-diffusion-2", "sd2", "sd-2", "v2-0", "v2-1", "sd-v2"))
    cross = (unet or {}).get("cross_attention_dim")
    if cross == 1024 or (cross is None and sd2_name):
        if (scheduler or {}).get("prediction_type") == "v_prediction" or (unet or {}).get("sample_size") == 96:
            return Family.SD2_V
        if scheduler is None and unet is None and not ("base" in key or "512" in key):
            return Family.SD2_V  # by name alone: stable-diffusion-2, -2-1 and *-768 checkpoints are v-prediction
        return Family.SD2
    return Family.SD1


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_folder(folder: Path) -> Configs:
    return (_read_json(folder / "model_index.json"), _read_json(folder / "scheduler" / "scheduler_config.json"),
            _read_json(folder / "unet" / "config.json"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, read from the environment now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_snapshot(repo_id: str, *, revision: str = "main", cache_dir: Path | None = None) -> Path | None:
    """The local snapshot folder of a hub model in the HF cache (never downloads), or None when not cached."""
    repo = (cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    if (snapshots / commit).is_dir():
        return snapshots / commit
    if ref.is_file() or revision != "main":
        return None
    folders = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return folders[0] if folders else None


def read_model_configs(spec: str, *, models_path: Path | None = None) -> Configs:
    """(model_index, scheduler config, unet config) of a model, read from disk without loading weights.

    spec: "tiny" (the built-in tiny model's folder under models_path, if built), a diffusers folder, a
    single-file checkpoint (configs only from a diffusers folder of the same stem beside it), or a hub id found
    in the local Hugging Face cache. Anything not found gives None in its place.
    """
    text = spec.strip()
    if not text:
        return _NONE
    if _is_tiny(text.casefold()):
        if models_path is None:
            return _NONE
        folder = models_path / TINY_NAME
        return _read_folder(folder) if folder.is_dir() else _NONE
    path = Path(text).expanduser()
    if not path.exists() and models_path is not None and not path.is_absolute() and (models_path / path).exists():
        path = models_path / path
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        beside = path.with_suffix("")
        return _read_folder(beside) if (beside / "model_index.json").is_file() else _NONE
    if _HUB_ID.match(text):
        snapshot = hub_snapshot(text)
        if snapshot is not None:
            return _read_folder(snapshot)
    return _NONE


def profile_for(spec: str, *, models_path: Path | None = None, configs: Configs | None = None) -> Profile:
    """The profile of a model: its family detected from the name and configs (read from disk when not given).

    An LCM model built on SDXL gets the LCM profile with SDXL sizes (1024 px default).
    """
    model_index, scheduler, unet = configs if configs is not None else read_model_configs(
        spec, models_path=models_path)
    family = detect_family(spec, model_index=model_index, scheduler=scheduler, unet=unet)
    profile = PROFILES[family]
    if family is Family.LCM and _is_sdxl(_name_key(spec), model_index, unet):
        profile = replace(profile, width=1024, height=1024, sizes=_SDXL_SIZES)
    return profile
