"""The built-in tiny model: a small random SD 1.x-shaped pipeline built offline from configs, cached on disk.

`PROMPTDEX_MODELS=tiny` or `--model tiny` selects it. It is a real `StableDiffusionPipeline` (UNet2DConditionModel,
AutoencoderKL with the usual 8x downscale, CLIPTextModel, the real CLIP BPE tokenizer written from the
vocabulary that ships inside open_clip, the SD 1.5 scheduler config), with weights drawn from a fixed seed, so
every machine builds the same model. It is saved with `save_pretrained` under `MODELS_DIR/<TINY_NAME>` and also
exported as an A1111-style single-file checkpoint `MODELS_DIR/<TINY_NAME>.safetensors`, which loads with
`from_single_file(..., config=<the folder>)`. Its images are noise, but they cost little and reproduce exactly.

`ensure_tiny_sdxl` and `ensure_tiny_sdxl_refiner` build the same kind of thing shaped like SDXL base 1.0 and its
refiner (the diffusers test suite's tiny SDXL configs, with an 8x VAE so that 64x64 images are 8x8 latents): the
base has two text encoders (CLIPTextModel and CLIPTextModelWithProjection), the refiner only the second (the same
weights as the base's, as in SDXL) and `requires_aesthetics_score=True`. They are diffusers folders only.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TINY_ALIAS = "tiny"
TINY_NAME = "promptdex-tiny-sd-v1"  # change the suffix whenever the configs below change
_WEIGHT_SEED = 20240601

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32, "attention_head_dim": 4,
    "norm_num_groups": 16,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
    "block_out_channels": (8, 16, 16, 16), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "sample_size": 64, "scaling_factor": 0.18215,
}
TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
    "num_hidden_layers": 4, "max_position_embeddings": 77, "projection_dim": 32, "hidden_act": "quick_gelu",
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
}
SCHEDULER_CONFIG: dict[str, Any] = {  # stable-diffusion-v1-5's scheduler/scheduler_config.json
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
    "trained_betas": None,
}


def tiny_paths(models_path: Path) -> tuple[Path, Path]:
    """(diffusers folder, single-file checkpoint) of the tiny model under the models dir."""
    return models_path / TINY_NAME, models_path / f"{TINY_NAME}.safetensors"


def write_clip_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of the CLIP BPE tokenizer, from open_clip's bpe_simple_vocab_16e6.txt.gz."""
    import open_clip

    source = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # as open_clip's SimpleTokenizer
    byte_chars = _bytes_to_unicode()
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte-to-character table, in vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="promptdex-tok-") as tmp:
        write_clip_tokenizer_files(Path(tmp))
        return CLIPTokenizer(vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"),
                             model_max_length=77)


def build_tiny_pipeline() -> Any:
    """A new tiny StableDiffusionPipeline in memory (float32, CPU); the same weights on every machine."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_WEIGHT_SEED)
        unet: Any = UNet2DConditionModel(**UNET_CONFIG)
        torch.manual_seed(_WEIGHT_SEED + 1)
        vae: Any = AutoencoderKL(**VAE_CONFIG)
        torch.manual_seed(_WEIGHT_SEED + 2)
        text_encoder: Any = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_tiny_model(models_path: Path) -> tuple[Path, Path]:
    """Build the tiny model into the models dir unless it is there; returns (folder, checkpoint file).

    Built in a temporary folder and renamed into place, so a crash or a concurrent build never leaves half a
    model: the first rename wins and the other builder's copy is discarded.
    """
    from generator.checkpoint import export_single_file

    folder, single = tiny_paths(models_path)
    if (folder / "model_index.json").is_file() and single.is_file():
        return folder, single
    models_path.mkdir(parents=True, exist_ok=True)
    logger.info("building the tiny model in %s", folder)
    pipe = build_tiny_pipeline()
    _save_into_place(pipe, folder)
    if not single.is_file():
        tmp = single.with_name(f".{single.name}.{os.getpid()}")
        export_single_file(pipe, tmp)
        tmp.replace(single)
    return folder, single


def _save_into_place(pipe: Any, folder: Path) -> None:
    """`save_pretrained` into a staging folder beside `folder`, then rename it into place (first rename wins)."""
    if (folder / "model_index.json").is_file():
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---- tiny SDXL base and refiner -----------------------------------------------------------------------------

TINY_SDXL_NAME = "promptdex-tiny-sdxl-v1"  # change the suffixes whenever the configs below change
TINY_SDXL_REFINER_NAME = "promptdex-tiny-sdxl-refiner-v1"
_TIME_EMBED_DIM = 8  # addition_time_embed_dim; SDXL's add_time_ids: 6 numbers (base), 5 with aesthetics (refiner)
SDXL_UNET_CONFIG: dict[str, Any] = {  # diffusers' tests/pipelines/stable_diffusion_xl get_dummy_components
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": (32, 64), "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4),
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": _TIME_EMBED_DIM,
    "transformer_layers_per_block": (1, 2), "norm_num_groups": 16,
    "cross_attention_dim": 64,  # both text encoders' hidden states side by side (32 + 32)
    "projection_class_embeddings_input_dim": 6 * _TIME_EMBED_DIM + 32,  # time ids + text_encoder_2's pooled 32
}
SDXL_REFINER_UNET_CONFIG: dict[str, Any] = {
    **SDXL_UNET_CONFIG, "cross_attention_dim": 32, "projection_class_embeddings_input_dim": 5 * _TIME_EMBED_DIM + 32,
}
SDXL_VAE_CONFIG: dict[str, Any] = {**VAE_CONFIG, "scaling_factor": 0.13025}
SDXL_TEXT_CONFIG: dict[str, Any] = {**TEXT_CONFIG, "hidden_act": "gelu"}  # OpenCLIP's activation
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {  # stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "clip_sample": False, "interpolation_type": "linear", "prediction_type": "epsilon", "sample_max_value": 1.0,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}
_SDXL_SEED = _WEIGHT_SEED + 100


def _sdxl_parts(unet_config: dict[str, Any], unet_seed: int) -> tuple[Any, Any, Any, Any]:
    """(unet, vae, text_encoder, text_encoder_2) with fixed weights; text_encoder_2 is the same in base and refiner."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(unet_seed)
        unet: Any = UNet2DConditionModel(**unet_config)
        torch.manual_seed(_SDXL_SEED + 1)
        vae: Any = AutoencoderKL(**SDXL_VAE_CONFIG)
        torch.manual_seed(_SDXL_SEED + 2)
        text_encoder: Any = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_CONFIG))
        torch.manual_seed(_SDXL_SEED + 3)
        text_encoder_2: Any = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_CONFIG))
    return unet.eval(), vae.eval(), text_encoder.eval(), text_encoder_2.eval()


def build_tiny_sdxl_pipeline() -> Any:
    """A new tiny StableDiffusionXLPipeline in memory (float32, CPU); the same weights on every machine."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet, vae, text_encoder, text_encoder_2 = _sdxl_parts(SDXL_UNET_CONFIG, _SDXL_SEED)
    tokenizer = _clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
    )


def build_tiny_sdxl_refiner_pipeline() -> Any:
    """A new tiny SDXL refiner (StableDiffusionXLImg2ImgPipeline without the first text encoder)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    unet, vae, _, text_encoder_2 = _sdxl_parts(SDXL_REFINER_UNET_CONFIG, _SDXL_SEED + 10)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=_clip_tokenizer(),
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )


def ensure_tiny_sdxl(models_path: Path) -> Path:
    """Build the tiny SDXL base into the models dir unless it is there; returns its diffusers folder."""
    return _ensure_folder(models_path / TINY_SDXL_NAME, build_tiny_sdxl_pipeline)


def ensure_tiny_sdxl_refiner(models_path: Path) -> Path:
    """Build the tiny SDXL refiner into the models dir unless it is there; returns its diffusers folder."""
    return _ensure_folder(models_path / TINY_SDXL_REFINER_NAME, build_tiny_sdxl_refiner_pipeline)


def _ensure_folder(folder: Path, build: Any) -> Path:
    if not (folder / "model_index.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        logger.info("building %s in %s", folder.name, folder.parent)
        _save_into_place(build(), folder)
    return folder
