"""The one function that loads a diffusers pipeline: hub id, diffusers folder, single-file checkpoint, or tiny.

`load_pipeline` returns a `LoadedModel`: the text-to-image pipeline on its device, an image-to-image pipeline that
shares its components (made on first use), and the model's identity for the reproducibility record: hub id and
revision (commit), or the file's sha256 and A1111 short hash, or the folder's content digest. An SDXL base can
come with a refiner (`refiner=`): a StableDiffusionXLImg2ImgPipeline that shares the base's `text_encoder_2` and
`vae` (diffusers' "ensemble of expert denoisers"), with an identity of the same shape.

Single-file checkpoints (`.safetensors`, `.ckpt`, as A1111 users keep them) load with diffusers'
`from_single_file`. diffusers needs the diffusers-format configs of the architecture for that; online it fetches
them from the hub. Offline, pass `config=` a local diffusers folder of the same architecture (or a hub id in the
local HF cache); the built-in tiny model's checkpoint loads with `config=` its own folder.
"""

from __future__ import annotations

import gc
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.environment import prepare_determinism, resolve_device, resolve_dtype, torch_dtype
from generator.hashing import sha256_file, sha256_folder, short_hash
from generator.tiny import TINY_ALIAS, TINY_NAME, ensure_tiny_model
from promptdex.errors import ConfigError, InvalidInput

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ACCEPTED = "tiny, a hub id (org/name), a diffusers folder, or a .safetensors/.ckpt checkpoint file"


@dataclass(frozen=True)
class ModelRef:
    """What a model argument names: kind is tiny, hub, folder or single_file; value the id or absolute path."""

    kind: str
    value: str


def classify_model(model: str, *, argument: str = "--model") -> ModelRef:
    """Decide what `model` names without loading anything; a missing path is an InvalidInput."""
    text = model.strip()
    if not text:
        raise InvalidInput(f"{argument}: empty model; accepted: {_ACCEPTED}")
    if text.casefold() == TINY_ALIAS:
        return ModelRef("tiny", TINY_ALIAS)
    path = Path(text).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise InvalidInput(f"{argument}: {path} is a folder without model_index.json (not a diffusers "
                                   f"pipeline); accepted: {_ACCEPTED}")
            return ModelRef("folder", str(path))
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            return ModelRef("single_file", str(path))
        raise InvalidInput(f"{argument}: {path} is not a .safetensors or .ckpt file; accepted: {_ACCEPTED}")
    looks_local = path.suffix.lower() in CHECKPOINT_SUFFIXES or text.startswith((".", "/", "~", "\\"))
    if looks_local or not _HUB_ID.match(text):
        raise InvalidInput(f"{argument}: no such file or folder: {text}; accepted: {_ACCEPTED}")
    return ModelRef("hub", text)


def classify_vae(vae: str, *, argument: str = "--vae") -> ModelRef:
    """A VAE override: a diffusers AutoencoderKL folder (or a pipeline folder with vae/), a file, or a hub id."""
    text = vae.strip()
    path = Path(text).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir() and ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
            return ModelRef("folder", str(path))
        if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
            return ModelRef("single_file", str(path))
        raise InvalidInput(f"{argument}: {path} is neither an AutoencoderKL folder nor a .safetensors/.ckpt file")
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise InvalidInput(f"{argument}: no such file or folder: {text}; accepted: a diffusers AutoencoderKL "
                           "folder, a .safetensors/.ckpt file, or a hub id (org/name)")
    return ModelRef("hub", text)


@dataclass
class LoadedModel:
    """A loaded pipeline, where it runs, and what it is (the record's `model` part)."""

    pipeline: Any
    identity: dict[str, Any]
    device: str
    dtype: str
    base_scheduler_config: dict[str, Any]
    _img2img: Any = field(default=None, repr=False)
    refiner: Any | None = field(default=None, repr=False)  # StableDiffusionXLImg2ImgPipeline, SDXL bases only
    refiner_identity: dict[str, Any] | None = None  # the same shape as `identity`

    def img2img(self) -> Any:
        """The image-to-image pipeline sharing this model's components."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipeline)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    @property
    def text_encoder_layers(self) -> int:
        encoder = getattr(self.pipeline, "text_encoder", None)
        return int(encoder.config.num_hidden_layers) if encoder is not None else 0

    def release(self) -> None:
        """Drop the pipelines (the refiner's too) and free accelerator memory."""
        import torch

        self.pipeline = None
        self._img2img = None
        self.refiner = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_pipeline(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    vae: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    models_path: Path | None = None,
    refiner: str | None = None,
) -> LoadedModel:
    """Load `model` (see `classify_model`) on `device` in `dtype`, with an optional VAE override and refiner.

    `config` (single files only): a diffusers folder or hub id with the architecture's configs. `revision`
    (hub only): a branch, tag or commit. `models_path`: where the tiny model is built and hashes are cached.
    `refiner` (SDXL bases only): an SDXL refiner named like a model (hub id, diffusers folder or checkpoint file),
    loaded on the same device in the same dtype, sharing the base's `text_encoder_2` and `vae`.
    """
    ref = classify_model(model)
    vae_ref = classify_vae(vae) if vae else None
    refiner_ref = classify_model(refiner, argument="refiner") if refiner is not None else None
    if refiner_ref is not None and refiner_ref.kind == "tiny":
        raise InvalidInput(f"refiner: {refiner!r} is the SD 1.x tiny model, not an SDXL refiner; accepted: an SDXL "
                           "refiner as a hub id (org/name), a diffusers folder, or a .safetensors/.ckpt file")
    if config is not None and ref.kind != "single_file":
        raise InvalidInput("--model-config applies only to a single-file checkpoint (.safetensors/.ckpt)")
    if ref.kind == "tiny" and models_path is None:
        raise ConfigError("the tiny model needs a models folder (PROMPTDEX_MODELS_DIR)")
    if refiner_ref is not None and ref.kind == "tiny":
        raise _not_sdxl_base(refiner, TINY_NAME, "StableDiffusionPipeline")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    prepare_determinism(dev)
    quiet_libraries()
    import diffusers

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dt)}
    try:
        identity, config_folder = _identify(ref, models_path=models_path, revision=revision,
                                            local_files_only=local_files_only, config=config)
        if refiner_ref is not None and config_folder is not None:  # refuse before loading any weights
            base_class = _pipeline_class_name(Path(config_folder))
            if base_class is not None and base_class != "StableDiffusionXLPipeline":
                raise _not_sdxl_base(refiner, identity["name"], base_class)
        if vae_ref is not None:
            kwargs["vae"], identity["vae"] = _load_vae(vae_ref, dt, config_folder or config, models_path,
                                                       local_files_only)
        if ref.kind == "single_file":
            pipe = _single_file_pipeline(ref.value, config, local_files_only, kwargs)
        else:
            pipe = diffusers.DiffusionPipeline.from_pretrained(config_folder, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        hint = "; offline, the model must be in the local HF cache (or use --model tiny, PROMPTDEX_MODELS=tiny)" \
            if ref.kind == "hub" else ""
        raise ConfigError(f"cannot load model {model!r}: {_one_line(exc)}{hint}") from exc
    if refiner_ref is not None and not isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        raise _not_sdxl_base(refiner, identity["name"], type(pipe).__name__)
    refined, refiner_identity = (None, None) if refiner_ref is None else _load_refiner(
        refiner_ref, pipe, dt, models_path, local_files_only)
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    _clip_skip_compat(pipe)
    identity["pipeline"] = type(pipe).__name__
    if refined is not None:
        refined.to(dev)
        refined.set_progress_bar_config(disable=True)
        _clip_skip_compat(refined)
    logger.info("loaded %s (%s) on %s as %s%s", identity["name"], identity["source"], dev, dt,
                f" with refiner {refiner_identity['name']}" if refiner_identity else "")
    base = {k: v for k, v in dict(pipe.scheduler.config).items()}
    return LoadedModel(pipe, identity, dev, dt, json.loads(json.dumps(base, default=list)), refiner=refined,
                       refiner_identity=refiner_identity)


def _identify(ref: ModelRef, *, models_path: Path | None, revision: str | None, local_files_only: bool,
              config: str | None) -> tuple[dict[str, Any], str | None]:
    """The record's identity of a model (without `pipeline`), and its diffusers folder (None for single files)."""
    import diffusers

    identity: dict[str, Any] = {"source": ref.kind, "spec": ref.value, "path": None, "revision": None,
                                "sha256": None, "hash": None, "config": None, "vae": None}
    config_folder: str | None = None
    if ref.kind == "tiny":
        folder, single = ensure_tiny_model(models_path)  # type: ignore[arg-type]
        config_folder = str(folder)
        sha = sha256_file(single, cache_dir=models_path)
        identity.update(name=TINY_NAME, sha256=sha, hash=short_hash(sha))
    elif ref.kind == "folder":
        config_folder = ref.value
        sha = sha256_folder(Path(ref.value), cache_dir=models_path)
        identity.update(name=Path(ref.value).name, path=ref.value, sha256=sha, hash=short_hash(sha))
    elif ref.kind == "hub":
        config_folder = str(diffusers.DiffusionPipeline.download(
            ref.value, revision=revision, local_files_only=local_files_only))
        commit = Path(config_folder).name if Path(config_folder).parent.name == "snapshots" else revision
        sha = sha256_folder(Path(config_folder), cache_dir=models_path)
        identity.update(name=ref.value, revision=commit, sha256=sha, hash=short_hash(sha))
    else:
        sha = sha256_file(Path(ref.value), cache_dir=models_path)
        identity.update(name=Path(ref.value).stem, path=ref.value, sha256=sha, hash=short_hash(sha), config=config)
    return identity, config_folder


def _pipeline_class_name(folder: Path) -> str | None:
    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None
    return str(name) if name else None


def _not_sdxl_base(refiner: str | None, name: str, pipeline: str) -> InvalidInput:
    return InvalidInput(f"refiner: {refiner!r} refines SDXL base models only; {name} is a {pipeline}; accepted: "
                        "an SDXL base (StableDiffusionXLPipeline) as the model, or no refiner")


def _load_refiner(ref: ModelRef, base: Any, dtype: str, models_path: Path | None,
                  local_files_only: bool) -> tuple[Any, dict[str, Any]]:
    """The refiner pipeline (on the CPU, sharing the base's text_encoder_2 and vae) and its identity."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    shared = {"text_encoder_2": base.text_encoder_2, "vae": base.vae, "dtype": torch_dtype(dtype)}
    try:
        identity, folder = _identify(ref, models_path=models_path, revision=None, local_files_only=local_files_only,
                                     config=None)
        if folder is not None:
            cls_name = _pipeline_class_name(Path(folder))
            if cls_name is None or not cls_name.startswith("StableDiffusionXL"):
                raise InvalidInput(f"refiner: {ref.value} is a {cls_name or 'folder of an unknown pipeline'}, not "
                                   "an SDXL refiner (StableDiffusionXLImg2ImgPipeline)")
            refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, local_files_only=True, **shared)
        else:
            refiner = StableDiffusionXLImg2ImgPipeline.from_single_file(ref.value, local_files_only=local_files_only,
                                                                        **shared)
    except (OSError, ValueError) as exc:
        hint = "; offline, the refiner must be in the local HF cache" if ref.kind == "hub" else ""
        raise ConfigError(f"cannot load refiner {ref.value!r}: {_one_line(exc)}{hint}") from exc
    identity["pipeline"] = type(refiner).__name__
    return refiner, identity


def _clip_skip_compat(pipe: Any) -> None:
    """Let diffusers' clip_skip code reach `text_encoder.text_model.final_layer_norm` under transformers 5.

    transformers 5 flattened CLIPTextModel (no `.text_model`); diffusers 0.42's SD 1.x/2.x pipelines still
    reach through it when clip_skip is set. A plain (unregistered) attribute pointing at the same layer norm
    keeps diffusers' own code path and changes no weights or state dict.
    """
    from types import SimpleNamespace

    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        norm = getattr(encoder, "final_layer_norm", None)
        if encoder is not None and norm is not None and "text_model" not in vars(encoder) and not hasattr(
                encoder, "text_model"):
            object.__setattr__(encoder, "text_model", SimpleNamespace(final_layer_norm=norm))


def quiet_libraries() -> None:
    """No per-component progress bars from diffusers and transformers (we show our own)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not logging.getLogger().isEnabledFor(logging.INFO):  # their warnings only with -v / --debug
        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()


def _single_file_pipeline(path: str, config: str | None, local_files_only: bool, kwargs: dict[str, Any]) -> Any:
    import diffusers

    from generator.checkpoint import checkpoint_family, checkpoint_keys

    cls_name = None
    if config is not None and (Path(config) / "model_index.json").is_file():
        cls_name = json.loads((Path(config) / "model_index.json").read_text()).get("_class_name")
    if cls_name is None:
        family = checkpoint_family(checkpoint_keys(Path(path)))
        cls_name = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    cls = getattr(diffusers, cls_name)
    try:
        return cls.from_single_file(path, config=config, local_files_only=local_files_only, **kwargs)
    except Exception as exc:
        if config is None:
            raise ConfigError(
                f"cannot load checkpoint {path}: {_one_line(exc)}. diffusers needs this architecture's configs; "
                "offline, pass --model-config with a local diffusers folder of the same architecture (for "
                "example a downloaded stable-diffusion-v1-5) or a hub id in the local HF cache"
            ) from exc
        raise


def _load_vae(ref: ModelRef, dtype: str, config_folder: str | None, models_path: Path | None,
              local_files_only: bool) -> tuple[Any, dict[str, Any]]:
    from diffusers import AutoencoderKL

    identity: dict[str, Any] = {"source": ref.kind, "spec": ref.value, "name": Path(ref.value).stem}
    if ref.kind == "single_file":
        sha = sha256_file(Path(ref.value), cache_dir=models_path)
        identity.update(sha256=sha, hash=short_hash(sha))
        vae = AutoencoderKL.from_single_file(ref.value, config=config_folder, subfolder="vae" if config_folder
                                             else None, dtype=torch_dtype(dtype),
                                             local_files_only=local_files_only)
        return vae, identity
    if ref.kind == "folder":
        folder = Path(ref.value)
        sub = "vae" if (folder / "vae" / "config.json").is_file() else None
        sha = sha256_folder(folder / sub if sub else folder, cache_dir=models_path)
        identity.update(name=folder.name, sha256=sha, hash=short_hash(sha))
        return AutoencoderKL.from_pretrained(folder, subfolder=sub, dtype=torch_dtype(dtype)), identity
    identity["name"] = ref.value
    vae = AutoencoderKL.from_pretrained(ref.value, dtype=torch_dtype(dtype), local_files_only=local_files_only)
    return vae, identity


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def model_args_from_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """The `load_pipeline` arguments that load the model a record's identity describes."""
    vae = identity.get("vae") or None
    return {
        "model": identity["spec"],
        "config": identity.get("config"),
        "revision": identity.get("revision") if identity.get("source") == "hub" else None,
        "vae": vae.get("spec") if isinstance(vae, dict) else None,
    }
