"""Model profiles: families detected from names and diffusers configs on disk, warnings, and JSON form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from promptdex.profiles import (
    PROFILES,
    TINY_NAME,
    Family,
    Profile,
    detect_family,
    profile_for,
    read_model_configs,
)
from promptdex.samplers import find_sampler, find_schedule

REPO = Path(__file__).resolve().parents[2]

_CLIP_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu", "in_channels": 4,
    "out_channels": 4, "layers_per_block": 2, "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_UNET = _CLIP_UNET | {"cross_attention_dim": 768, "attention_head_dim": 8, "sample_size": 64}
SD2V_UNET = _CLIP_UNET | {"cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "sample_size": 96,
                          "use_linear_projection": True}
SD2BASE_UNET = SD2V_UNET | {"sample_size": 64}
SDXL_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0", "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
}
_SCHED: dict[str, Any] = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
}
SD15_SCHED = _SCHED | {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "skip_prk_steps": True}
SD2V_SCHED = _SCHED | {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}
SDXL_SCHED = _SCHED | {"_class_name": "EulerDiscreteScheduler", "prediction_type": "epsilon",
                       "timestep_spacing": "leading", "interpolation_type": "linear"}
TURBO_SCHED = SDXL_SCHED | {"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}
LCM_SCHED = _SCHED | {"_class_name": "LCMScheduler", "original_inference_steps": 50, "timestep_scaling": 10.0}


def _index(cls: str) -> dict[str, Any]:
    index: dict[str, Any] = {
        "_class_name": cls, "_diffusers_version": "0.21.0", "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    if cls.startswith("StableDiffusionXL"):
        index |= {"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                  "tokenizer_2": ["transformers", "CLIPTokenizer"]}
    return index


def write_folder(folder: Path, cls: str, scheduler: dict[str, Any], unet: dict[str, Any]) -> Path:
    """A diffusers pipeline folder holding only its configs (no weights)."""
    (folder / "scheduler").mkdir(parents=True)
    (folder / "unet").mkdir()
    (folder / "model_index.json").write_text(json.dumps(_index(cls)))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (folder / "unet" / "config.json").write_text(json.dumps(unet))
    return folder


MODELS = {  # folder name -> (pipeline class, scheduler, unet, expected family)
    "my-sd15-finetune": ("StableDiffusionPipeline", SD15_SCHED, SD15_UNET, Family.SD1),
    "some-768-model": ("StableDiffusionPipeline", SD2V_SCHED, SD2V_UNET, Family.SD2_V),
    "some-base-model": ("StableDiffusionPipeline", SD15_SCHED, SD2BASE_UNET, Family.SD2),
    "juggernaut": ("StableDiffusionXLPipeline", SDXL_SCHED, SDXL_UNET, Family.SDXL),
    "sd-turbo": ("StableDiffusionPipeline", TURBO_SCHED, SD2BASE_UNET, Family.SD_TURBO),
    "sdxl-turbo": ("StableDiffusionXLPipeline", TURBO_SCHED, SDXL_UNET, Family.SDXL_TURBO),
    "my-turbo-merge": ("StableDiffusionXLPipeline", TURBO_SCHED, SDXL_UNET, Family.SDXL_TURBO),
    "dreamshaper-distilled": ("StableDiffusionPipeline", LCM_SCHED, SD15_UNET, Family.LCM),
    "SDXL-Lightning-4step": ("StableDiffusionXLPipeline", SDXL_SCHED, SDXL_UNET, Family.LIGHTNING),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_family_detected_from_a_diffusers_folder(tmp_path: Path, name: str) -> None:
    cls, scheduler, unet, family = MODELS[name]
    folder = write_folder(tmp_path / name, cls, scheduler, unet)
    configs = read_model_configs(str(folder))
    assert configs == (_index(cls), scheduler, unet)
    assert detect_family(str(folder), model_index=configs[0], scheduler=configs[1], unet=configs[2]) is family
    assert profile_for(str(folder)).family is family
    assert profile_for(name, configs=configs).family is family


@pytest.mark.parametrize(("name", "family"), [
    ("tiny", Family.TINY), ("TINY", Family.TINY), (f"/data/models/{TINY_NAME}.safetensors", Family.TINY),
    ("segmind/tiny-sd", Family.SD1), ("stabilityai/sd-turbo", Family.SD_TURBO),
    ("stabilityai/sdxl-turbo", Family.SDXL_TURBO), ("/ckpt/sd_xl_turbo_1.0_fp16.safetensors", Family.SDXL_TURBO),
    ("ByteDance/SDXL-Lightning", Family.LIGHTNING), ("SimianLuo/LCM_Dreamshaper_v7", Family.LCM),
    ("latent-consistency/lcm-sdxl", Family.LCM), ("/ckpt/sd_xl_base_1.0.safetensors", Family.SDXL),
    ("stabilityai/stable-diffusion-xl-base-1.0", Family.SDXL), ("stabilityai/stable-diffusion-2-1", Family.SD2_V),
    ("stabilityai/stable-diffusion-2-1-base", Family.SD2), ("/ckpt/v2-1_768-ema-pruned.safetensors", Family.SD2_V),
    ("runwayml/stable-diffusion-v1-5", Family.SD1), ("/ckpt/dreamshaper_8.safetensors", Family.SD1),
])
def test_family_detected_from_the_name_alone(name: str, family: Family) -> None:
    assert detect_family(name) is family


def test_configs_decide_over_weak_name_hints() -> None:
    # "sd2" in the name, but the UNet is SD 1.x-shaped; an SDXL UNet in a folder with no SDXL in its name.
    assert detect_family("sd2-style-anime", unet=SD15_UNET, scheduler=SD15_SCHED) is Family.SD1
    assert detect_family("anime-model", unet=SDXL_UNET) is Family.SDXL
    assert detect_family("anime-model", model_index=_index("StableDiffusionXLImg2ImgPipeline")) is Family.SDXL
    assert detect_family("anime-model", scheduler=LCM_SCHED, unet=SD15_UNET) is Family.LCM
    assert detect_family("anime-model", scheduler=SD15_SCHED, unet=SD2V_UNET | {"sample_size": 64}) is Family.SD2
    assert detect_family("x", scheduler=SD2V_SCHED, unet=SD2BASE_UNET) is Family.SD2_V


def test_lcm_on_sdxl_gets_sdxl_sizes(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "lcm-sdxl", "StableDiffusionXLPipeline", LCM_SCHED, SDXL_UNET)
    profile = profile_for(str(folder))
    assert profile.family is Family.LCM and (profile.width, profile.height) == (1024, 1024)
    assert profile_for("SimianLuo/LCM_Dreamshaper_v7", configs=(None, None, None)) is PROFILES[Family.LCM]


def test_hub_id_found_in_a_fake_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--acme--pretty-xl"
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_folder(repo / "snapshots" / commit, "StableDiffusionXLPipeline", SDXL_SCHED, SDXL_UNET)
    write_folder(repo / "snapshots" / ("f" * 40), "StableDiffusionPipeline", SD15_SCHED, SD15_UNET)  # older, unused
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model_index, scheduler, unet = read_model_configs("acme/pretty-xl")
    assert model_index is not None and model_index["_class_name"] == "StableDiffusionXLPipeline"
    assert scheduler == SDXL_SCHED and unet == SDXL_UNET
    assert profile_for("acme/pretty-xl").family is Family.SDXL
    assert profile_for(str(repo / "snapshots" / commit)).family is Family.SDXL
    assert read_model_configs("acme/not-cached") == (None, None, None)


def test_missing_and_single_file_models_give_no_configs(tmp_path: Path) -> None:
    checkpoint = tmp_path / "dreamshaper_8.safetensors"
    checkpoint.write_bytes(b"\0" * 16)
    assert read_model_configs(str(checkpoint)) == (None, None, None)
    assert read_model_configs(str(tmp_path / "nothing-here")) == (None, None, None)
    assert read_model_configs("") == (None, None, None)
    assert profile_for(str(checkpoint)).family is Family.SD1
    # A checkpoint with a diffusers folder of the same stem beside it reads that folder (the tiny model's layout).
    write_folder(tmp_path / "dreamshaper_8", "StableDiffusionPipeline", SD15_SCHED, SD15_UNET)
    assert read_model_configs(str(checkpoint))[2] == SD15_UNET


def test_tiny_reads_its_folder_under_models_path(tmp_path: Path) -> None:
    assert read_model_configs("tiny", models_path=tmp_path) == (None, None, None)
    assert read_model_configs("tiny") == (None, None, None)
    write_folder(tmp_path / TINY_NAME, "StableDiffusionPipeline", SD15_SCHED, SD15_UNET | {"sample_size": 8})
    configs = read_model_configs("tiny", models_path=tmp_path)
    assert configs[2] is not None and configs[2]["sample_size"] == 8
    profile = profile_for("tiny", models_path=tmp_path)
    assert profile.family is Family.TINY
    assert (profile.width, profile.height, profile.steps, profile.cfg, profile.sampler) == (128, 128, 8, 7.0, "Euler a")


def test_tiny_name_matches_the_generator() -> None:
    source = (REPO / "generator" / "tiny.py").read_text(encoding="utf-8")
    assert f'TINY_NAME = "{TINY_NAME}"' in source


def test_warnings_name_the_field_and_are_empty_inside() -> None:
    turbo = PROFILES[Family.SD_TURBO]
    assert turbo.warnings(steps=1, cfg=0.0, width=512, height=512) == []
    found = turbo.warnings(steps=20, cfg=7.0, width=1024, height=512)
    assert [w.split(":", 1)[0] for w in found] == ["steps", "cfg", "width"]
    assert found[0] == "steps: 20 is outside SD-Turbo's recommended 1-4 (its model card: 1 step, guidance 0.0)"
    assert found[1].startswith("cfg: 7.0 is outside SD-Turbo's recommended 0.0")
    sdxl = PROFILES[Family.SDXL]
    assert sdxl.warnings(steps=30, cfg=6.0, width=832, height=1216) == []
    assert [w.split(":", 1)[0] for w in sdxl.warnings(steps=30, cfg=6.0, width=512, height=512)] == ["width", "height"]
    for profile in PROFILES.values():
        lo, hi = profile.steps_range
        assert profile.warnings(steps=profile.steps, cfg=profile.cfg, width=profile.width, height=profile.height) == []
        assert profile.warnings(steps=lo, cfg=profile.cfg_range[1], width=profile.width, height=profile.height) == []
        assert len(profile.warnings(steps=hi + 1, cfg=profile.cfg, width=profile.width, height=profile.height)) == 1


@pytest.mark.parametrize("family", list(Family))
def test_every_profile_is_consistent(family: Family) -> None:
    profile = PROFILES[family]
    assert isinstance(profile, Profile) and profile.family is family
    assert find_sampler(profile.sampler) is not None and find_sampler(profile.sampler).name == profile.sampler
    assert find_schedule(profile.schedule) == profile.schedule
    assert profile.sizes[0] == (profile.width, profile.height)
    assert any(w > h for w, h in profile.sizes) and any(w < h for w, h in profile.sizes)
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in profile.sizes)
    assert profile.steps_range[0] <= profile.steps <= profile.steps_range[1]
    assert profile.cfg_range[0] <= profile.cfg <= profile.cfg_range[1]
    assert profile.label and profile.notes
    data = profile.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["family"] == str(family) and data["sizes"][0] == [profile.width, profile.height]
    assert set(data) >= {"label", "width", "height", "steps", "cfg", "sampler", "schedule", "steps_range",
                         "cfg_range", "sizes", "scheduler_overrides", "refiner_start", "notes"}


def test_model_card_values() -> None:
    turbo, xl_turbo = PROFILES[Family.SD_TURBO], PROFILES[Family.SDXL_TURBO]
    for p in (turbo, xl_turbo):
        assert (p.steps, p.cfg, p.steps_range, p.cfg_range, p.width) == (1, 0.0, (1, 4), (0.0, 0.0), 512)
        assert p.scheduler_overrides == {"timestep_spacing": "trailing"}
    lcm, lightning = PROFILES[Family.LCM], PROFILES[Family.LIGHTNING]
    assert (lcm.steps, lcm.cfg, lcm.sampler, lcm.steps_range, lcm.cfg_range) == (4, 1.5, "LCM", (2, 8), (1.0, 2.0))
    assert (lightning.steps, lightning.cfg, lightning.sampler) == (4, 0.0, "Euler")
    assert lightning.scheduler_overrides == {"timestep_spacing": "trailing"}
    assert PROFILES[Family.SDXL].refiner_start == 0.8 and PROFILES[Family.SDXL].width == 1024
    assert PROFILES[Family.SD2_V].width == 768 and PROFILES[Family.SD2].width == 512
    assert (PROFILES[Family.SD1].width, PROFILES[Family.SD1].cfg) == (512, 7.0)
    assert set(PROFILES) == set(Family)


def test_profiles_import_no_ml_library() -> None:
    code = ("import sys, promptdex.profiles as p; p.profile_for('stabilityai/sdxl-turbo'); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'open_clip', 'numpy') if m in sys.modules]; "
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
