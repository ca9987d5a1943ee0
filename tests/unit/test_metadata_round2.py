"""Metadata, round two: ComfyUI subgraphs and group nodes, custom node packs, latent sizes, ConditioningZeroOut,
the sampler that made the saved image, and NovelAI's legacy model name. Every file is a PNG built here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer.metadata.comfyui_graph import graph_from_workflow
from indexer.metadata.reader import read_metadata

Graph = dict[str, dict[str, Any]]


def inspect(tmp_path: Path, **chunks: Any) -> dict[str, Any]:
    """The `promptdex inspect --json` object of a PNG carrying `chunks` as text (JSON for dicts)."""
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    path = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return read_metadata(path).to_json()


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def txt2img() -> Graph:
    """ComfyUI's default API graph: checkpoint, two text encoders, an empty latent, KSampler, decode, save."""
    return {
        "3": node("KSampler", seed=42, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=1.0,
                  model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0]),
        "4": node("CheckpointLoaderSimple", ckpt_name="base.safetensors"),
        "5": node("EmptyLatentImage", width=512, height=768, batch_size=1),
        "6": node("CLIPTextEncode", text="a red fox in the snow", clip=["4", 1]),
        "7": node("CLIPTextEncode", text="blurry", clip=["4", 1]),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", filename_prefix="ComfyUI", images=["8", 0]),
    }


# 4. ConditioningZeroOut: the negative of SD3/Flux graphs is the positive conditioning zeroed, an empty prompt.

def test_zeroed_negative_is_an_empty_prompt_not_the_positive(tmp_path: Path) -> None:
    graph = txt2img()
    graph["7"] = node("ConditioningZeroOut", conditioning=["6", 0])
    got = inspect(tmp_path, prompt=graph)
    assert got["prompt"] == "a red fox in the snow"
    assert got["negative_prompt"] == ""
    assert got["samplers"][0]["negative_prompts"] == []


def test_zeroed_negative_behind_a_guidance_node_is_empty(tmp_path: Path) -> None:
    """Flux: FluxGuidance on the positive, the negative zeroed from the encoder's output."""
    graph = txt2img()
    graph["10"] = node("FluxGuidance", guidance=3.5, conditioning=["6", 0])
    graph["7"] = node("ConditioningZeroOut", conditioning=["6", 0])
    graph["3"]["inputs"]["positive"] = ["10", 0]
    got = inspect(tmp_path, prompt=graph)
    assert (got["prompt"], got["negative_prompt"]) == ("a red fox in the snow", "")


# 5. Several samplers: the one whose output reaches the saved image.

def test_sampler_not_connected_to_the_output_is_ignored(tmp_path: Path) -> None:
    graph = txt2img()
    graph["1"] = node("KSampler", seed=999, steps=50, cfg=3.0, sampler_name="dpmpp_2m", scheduler="karras",
                      denoise=1.0, model=["4", 0], positive=["2", 0], negative=["7", 0], latent_image=["5", 0])
    graph["2"] = node("CLIPTextEncode", text="an unrelated castle", clip=["4", 1])
    got = inspect(tmp_path, prompt=graph)
    assert (got["seed"], got["steps"], got["sampler"]) == (42, 20, "euler")
    assert got["prompt"] == "a red fox in the snow"


def test_sampler_feeding_only_a_preview_does_not_win_over_the_saved_one(tmp_path: Path) -> None:
    """PreviewImage files go to ComfyUI's temp folder; the file a library holds came from SaveImage."""
    graph = txt2img()
    graph["1"] = node("KSampler", seed=999, steps=50, cfg=3.0, sampler_name="dpmpp_2m", scheduler="karras",
                      denoise=1.0, model=["4", 0], positive=["2", 0], negative=["7", 0], latent_image=["5", 0])
    graph["2"] = node("CLIPTextEncode", text="an unrelated castle", clip=["4", 1])
    graph["11"] = node("LatentUpscaleBy", upscale_method="nearest-exact", scale_by=2.0, samples=["1", 0])
    graph["12"] = node("KSampler", seed=1000, steps=10, cfg=3.0, sampler_name="dpmpp_2m", scheduler="karras",
                       denoise=0.5, model=["4", 0], positive=["2", 0], negative=["7", 0], latent_image=["11", 0])
    graph["13"] = node("VAEDecode", samples=["12", 0], vae=["4", 2])
    graph["14"] = node("PreviewImage", images=["13", 0])
    got = inspect(tmp_path, prompt=graph)
    assert (got["seed"], got["prompt"], got["hires"]) == (42, "a red fox in the snow", None)


def test_hires_fix_reports_the_first_pass(tmp_path: Path) -> None:
    graph = txt2img()
    graph["8"]["inputs"]["samples"] = ["12", 0]
    graph["11"] = node("LatentUpscaleBy", upscale_method="nearest-exact", scale_by=1.5, samples=["3", 0])
    graph["12"] = node("KSampler", seed=7, steps=12, cfg=7.0, sampler_name="euler", scheduler="normal",
                       denoise=0.45, model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["11", 0])
    got = inspect(tmp_path, prompt=graph)
    assert (got["seed"], got["steps"], got["width"], got["height"]) == (42, 20, 512, 768)
    assert got["hires"] == {"upscale": 1.5, "steps": 12, "denoising_strength": 0.45}


def test_base_and_refiner_report_the_base_pass(tmp_path: Path) -> None:
    graph = txt2img()
    graph["3"] = node("KSamplerAdvanced", add_noise="enable", noise_seed=11, steps=25, cfg=7.0,
                      sampler_name="euler", scheduler="normal", start_at_step=0, end_at_step=20,
                      return_with_leftover_noise="enable", model=["4", 0], positive=["6", 0], negative=["7", 0],
                      latent_image=["5", 0])
    graph["20"] = node("CheckpointLoaderSimple", ckpt_name="refiner.safetensors")
    graph["21"] = node("CLIPTextEncode", text="refiner prompt", clip=["20", 1])
    graph["22"] = node("KSamplerAdvanced", add_noise="disable", noise_seed=12, steps=25, cfg=7.0,
                       sampler_name="euler", scheduler="normal", start_at_step=20, end_at_step=10000,
                       return_with_leftover_noise="disable", model=["20", 0], positive=["21", 0],
                       negative=["21", 0], latent_image=["3", 0])
    graph["8"]["inputs"]["samples"] = ["22", 0]
    got = inspect(tmp_path, prompt=graph)
    assert (got["seed"], got["prompt"], got["model"]) == (11, "a red fox in the snow", "base.safetensors")
    assert [s["sampler_id"] for s in got["samplers"]] == ["3", "22"]


# 3. The latent size, read from whatever feeds the first sampler's latent_image.

CR_ASPECT = {"width": 1024, "height": 1024, "aspect_ratio": "3:4 portrait 896x1152", "swap_dimensions": "Off",
             "upscale_factor": 1.0, "batch_size": 1}
LATENT_SOURCES: list[tuple[str, Graph, tuple[int, int]]] = [
    ("sd3", {"30": node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)}, (1024, 1024)),
    ("video", {"30": node("EmptyHunyuanLatentVideo", width=848, height=480, length=73, batch_size=1)}, (848, 480)),
    ("upscale", {"30": node("LatentUpscale", upscale_method="nearest-exact", width=1024, height=1536, crop="disabled",
                            samples=["5", 0])}, (1024, 1536)),
    ("upscale-by", {"30": node("LatentUpscaleBy", upscale_method="nearest-exact", scale_by=1.5, samples=["5", 0])},
     (768, 1152)),
    ("repeat", {"30": node("RepeatLatentBatch", amount=4, samples=["5", 0])}, (512, 768)),
    ("cr-latent", {"30": node("CR SDXL Aspect Ratio", **CR_ASPECT)}, (896, 1152)),
    ("cr-swapped", {"30": node("CR SDXL Aspect Ratio", **{**CR_ASPECT, "swap_dimensions": "On"})}, (1152, 896)),
    ("cr-custom", {"30": node("CR SDXL Aspect Ratio", **{**CR_ASPECT, "aspect_ratio": "custom", "width": 1000,
                                                          "height": 600})}, (1000, 600)),
    ("cr-links", {"31": node("CR SDXL Aspect Ratio", **CR_ASPECT),
                  "30": node("EmptyLatentImage", width=["31", 0], height=["31", 1], batch_size=1)}, (896, 1152)),
]


@pytest.mark.parametrize(("extra", "size"), [pytest.param(g, s, id=i) for i, g, s in LATENT_SOURCES])
def test_latent_size_from_the_node_feeding_the_sampler(tmp_path: Path, extra: Graph, size: tuple[int, int]) -> None:
    graph = {**txt2img(), **extra}
    slot = 4 if graph["30"]["class_type"] == "CR SDXL Aspect Ratio" else 0  # CR's outputs: width, height, ..., latent
    graph["3"]["inputs"]["latent_image"] = ["30", slot]
    got = inspect(tmp_path, prompt=graph)
    assert (got["width"], got["height"]) == size


def test_img2img_from_a_loaded_image_has_no_size(tmp_path: Path) -> None:
    graph = txt2img()
    graph["5"] = node("VAEEncode", pixels=["30", 0], vae=["4", 2])
    graph["30"] = node("LoadImage", image="photo.png", upload="image")
    graph["3"]["inputs"]["denoise"] = 0.6
    got = inspect(tmp_path, prompt=graph)
    assert (got["width"], got["height"], got["denoising_strength"]) == (None, None, 0.6)


# 2. Custom node packs in API graphs: prompts through string links, seeds, loaders and samplers.

def with_text(source: Graph, slot: int = 0) -> Graph:
    """txt2img with the positive encoder's text linked to node "30" of `source`."""
    graph = {**txt2img(), **source}
    graph["6"]["inputs"]["text"] = ["30", slot]
    return graph


STRING_SOURCES: list[tuple[str, Graph, int, str]] = [
    ("cr-prompt-text", {"30": node("CR Prompt Text", prompt="a fox, watercolor")}, 0, "a fox, watercolor"),
    ("power-prompt-text", {"30": node("Power Prompt (rgthree)", prompt="a fox, ink", opt_clip=["4", 1])}, 3,
     "a fox, ink"),
    ("power-prompt-simple", {"30": node("Power Prompt - Simple (rgthree)", prompt="a fox, pastel")}, 1,
     "a fox, pastel"),
    ("impact-processor", {"30": node("ImpactWildcardProcessor", wildcard_text="a __animal__", mode="populate",
                                     populated_text="a fox", seed=5)}, 0, "a fox"),
    ("was-multiline", {"30": node("Text Multiline", text="a fox\nin the snow")}, 0, "a fox\nin the snow"),
    ("was-string-b", {"30": node("Text String", text="first", text_b="second", text_c="", text_d="")}, 1, "second"),
    ("was-concatenate", {
        "31": node("Text Multiline", text="  a fox "),
        "32": node("Text String", text="unused", text_b="in the snow", text_c="", text_d=""),
        "30": node("Text Concatenate", delimiter=", ", clean_whitespace="true", text_a=["31", 0], text_b=["32", 1]),
    }, 0, "a fox, in the snow"),
    ("string-concatenate", {
        "31": node("PrimitiveStringMultiline", value="a fox"),
        "30": node("StringConcatenate", string_a=["31", 0], string_b="in the snow", delimiter=" "),
    }, 0, "a fox in the snow"),
]


@pytest.mark.parametrize(("source", "slot", "text"), [pytest.param(g, s, t, id=i) for i, g, s, t in STRING_SOURCES])
def test_prompt_through_a_string_link(tmp_path: Path, source: Graph, slot: int, text: str) -> None:
    got = inspect(tmp_path, prompt=with_text(source, slot))
    assert got["prompt"] == text
    assert got["negative_prompt"] == "blurry"


@pytest.mark.parametrize("class_type", ["Power Prompt (rgthree)", "ImpactWildcardEncode"])
def test_prompt_node_that_encodes_itself(tmp_path: Path, class_type: str) -> None:
    graph = txt2img()
    slot = 0 if class_type.startswith("Power") else 2  # ImpactWildcardEncode: model, clip, conditioning, text
    graph["30"] = node(class_type, prompt="a fox, ink", wildcard_text="a __animal__, ink",
                       populated_text="a fox, ink", opt_clip=["4", 1], clip=["4", 1])
    graph["3"]["inputs"]["positive"] = ["30", slot]
    assert inspect(tmp_path, prompt=graph)["prompt"] == "a fox, ink"


def test_rgthree_seed_node(tmp_path: Path) -> None:
    graph = txt2img()
    graph["30"] = node("Seed (rgthree)", seed=123456789)
    graph["3"]["inputs"]["seed"] = ["30", 0]
    assert inspect(tmp_path, prompt=graph)["seed"] == 123456789


def efficiency() -> Graph:
    """Efficiency Nodes: Efficient Loader (prompts, checkpoint, latent size) into KSampler (Efficient)."""
    return {
        "1": node("Efficient Loader", ckpt_name="dreamshaper.safetensors", vae_name="Baked VAE", clip_skip=-2,
                  lora_name="None", lora_model_strength=1.0, lora_clip_strength=1.0, positive="a fox, efficient",
                  negative="lowres", token_normalization="none", weight_interpretation="comfy",
                  empty_latent_width=896, empty_latent_height=1152, batch_size=1),
        "2": node("KSampler (Efficient)", seed=77, steps=30, cfg=6.5, sampler_name="dpmpp_2m", scheduler="karras",
                  denoise=1.0, preview_method="auto", vae_decode="true", model=["1", 0], positive=["1", 1],
                  negative=["1", 2], latent_image=["1", 3], optional_vae=["1", 4]),
        "3": node("SaveImage", filename_prefix="ComfyUI", images=["2", 5]),
    }


def test_efficient_loader_and_sampler(tmp_path: Path) -> None:
    got = inspect(tmp_path, prompt=efficiency())
    assert (got["prompt"], got["negative_prompt"]) == ("a fox, efficient", "lowres")
    assert (got["seed"], got["steps"], got["cfg"], got["sampler"], got["scheduler"]) == (77, 30, 6.5, "dpmpp_2m",
                                                                                          "karras")
    assert (got["width"], got["height"], got["model"], got["clip_skip"]) == (896, 1152, "dreamshaper.safetensors", 2)


def test_efficient_loader_with_linked_prompt_and_advanced_sampler(tmp_path: Path) -> None:
    graph = efficiency()
    graph["1"]["inputs"]["positive"] = ["4", 0]
    graph["4"] = node("Text Multiline", text="a fox, linked")
    graph["2"] = node("KSampler Adv. (Efficient)", add_noise="enable", noise_seed=88, steps=30, cfg=6.5,
                      sampler_name="euler", scheduler="normal", start_at_step=0, end_at_step=10000,
                      return_with_leftover_noise="disable", preview_method="auto", vae_decode="true",
                      model=["1", 0], positive=["1", 1], negative=["1", 2], latent_image=["1", 3])
    got = inspect(tmp_path, prompt=graph)
    assert (got["prompt"], got["seed"], got["width"]) == ("a fox, linked", 88, 896)


# 1. UI workflows (no API `prompt` chunk): subgraphs and legacy group nodes.

def ui_node(node_id: int, type_: str, widgets: list[Any] | None = None, inputs: dict[str, int | None] | None = None,
            outputs: int = 1) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "mode": 0, "widgets_values": widgets or [],
            "inputs": [{"name": k, "type": "*", "link": v} for k, v in (inputs or {}).items()],
            "outputs": [{"name": f"out{i}", "type": "*", "links": []} for i in range(outputs)]}


def sub_link(link_id: int, origin: int, origin_slot: int, target: int, target_slot: int) -> dict[str, Any]:
    return {"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
            "target_slot": target_slot, "type": "*"}


SAMPLER_SUBGRAPH = {  # model and clip come in (slots 0, 1); the latent goes out
    "id": "5a9e0c1e-0000-4000-8000-000000000001", "name": "Sample", "version": 1,
    "inputNode": {"id": -10, "bounding": [0, 0, 10, 10]}, "outputNode": {"id": -20, "bounding": [0, 0, 10, 10]},
    "inputs": [{"id": "i-model", "name": "model", "type": "MODEL", "linkIds": [11]},
               {"id": "i-clip", "name": "clip", "type": "CLIP", "linkIds": [12, 13]}],
    "outputs": [{"id": "o-latent", "name": "LATENT", "type": "LATENT", "linkIds": [17]}],
    "widgets": [],
    "nodes": [
        ui_node(3, "KSampler", [42, "fixed", 20, 7.0, "euler", "normal", 1.0],
                {"model": 11, "positive": 14, "negative": 15, "latent_image": 16}),
        ui_node(5, "EmptyLatentImage", [512, 768, 1]),
        ui_node(6, "CLIPTextEncode", ["a red fox in the snow"], {"clip": 12}),
        ui_node(7, "CLIPTextEncode", ["blurry"], {"clip": 13}),
    ],
    "links": [sub_link(11, -10, 0, 3, 0), sub_link(12, -10, 1, 6, 0), sub_link(13, -10, 1, 7, 0),
              sub_link(14, 6, 0, 3, 1), sub_link(15, 7, 0, 3, 2), sub_link(16, 5, 0, 3, 3),
              sub_link(17, 3, 0, -20, 0)],
}


def ui_workflow(middle: list[dict[str, Any]], definitions: list[dict[str, Any]] | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Checkpoint (id 4) -> `middle` (id 10: model link 1, clip link 2 in; latent link 3 out) -> decode -> save."""
    workflow: dict[str, Any] = {
        "last_node_id": 10, "last_link_id": 5, "version": 0.4,
        "nodes": [ui_node(4, "CheckpointLoaderSimple", ["base.safetensors"], outputs=3), *middle,
                  ui_node(8, "VAEDecode", inputs={"samples": 3, "vae": 4}),
                  ui_node(9, "SaveImage", ["ComfyUI"], {"images": 5})],
        "links": [[1, 4, 0, 10, 0, "MODEL"], [2, 4, 1, 10, 1, "CLIP"], [3, 10, 0, 8, 0, "LATENT"],
                  [4, 4, 2, 8, 1, "VAE"], [5, 8, 0, 9, 0, "IMAGE"]],
        "extra": extra or {},
    }
    if definitions:
        workflow["definitions"] = {"subgraphs": definitions}
    return workflow


def assert_default_graph(got: dict[str, Any]) -> None:
    assert (got["prompt"], got["negative_prompt"]) == ("a red fox in the snow", "blurry")
    assert (got["seed"], got["steps"], got["cfg"], got["sampler"]) == (42, 20, 7.0, "euler")
    assert (got["width"], got["height"], got["model"]) == (512, 768, "base.safetensors")


def test_subgraph_instance_is_expanded(tmp_path: Path) -> None:
    instance = ui_node(10, SAMPLER_SUBGRAPH["id"], inputs={"model": 1, "clip": 2})
    got = inspect(tmp_path, workflow=ui_workflow([instance], [SAMPLER_SUBGRAPH]))
    assert got["software"] == "comfyui"
    assert_default_graph(got)
    assert got["samplers"][0]["sampler_id"] == "10:3"


def test_a_promoted_widget_takes_the_value_set_on_the_instance(tmp_path: Path) -> None:
    """The positive prompt's text widget is promoted to the subgraph (a third input, linked to the text encoder's
    `text`): the value typed on the instance, in its widgets_values, wins over the inner node's stale one."""
    promoted = json.loads(json.dumps(SAMPLER_SUBGRAPH))
    promoted["inputs"].append({"id": "i-text", "name": "text", "type": "STRING", "linkIds": [30]})
    [encoder] = [n for n in promoted["nodes"] if n["id"] == 6]
    encoder["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 30})
    promoted["links"].append(sub_link(30, -10, 2, 6, 1))
    instance = ui_node(10, promoted["id"], ["a lighthouse typed on the instance"], {"model": 1, "clip": 2})
    instance["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None})
    got = inspect(tmp_path, workflow=ui_workflow([instance], [promoted]))
    assert got["prompt"] == "a lighthouse typed on the instance"
    assert got["negative_prompt"] == "blurry"


def proxied_instance(node_id: int, values: list[Any], proxy: Any, **inputs: int) -> dict[str, Any]:
    """An instance saved by the front end's legacy promotion: `properties.proxyWidgets` names the inner widgets
    shown on it, and its widgets_values hold their values in that order."""
    instance = ui_node(node_id, SAMPLER_SUBGRAPH["id"], values, dict(inputs))
    instance["properties"] = {"proxyWidgets": proxy}
    return instance


def test_legacy_proxy_widgets_give_each_instance_its_own_values(tmp_path: Path) -> None:
    """Two instances of one subgraph with proxyWidgets: each sets its own prompt and seed (the definition's inner
    values are whatever the last one saved into it); a `$$` preview entry holds a place but no value."""
    proxy = [["6", "text"], ["-1", "$$canvas-image-preview"], ["3", "seed"]]
    first = proxied_instance(10, ["a lighthouse set on the instance", None, 1234], proxy, model=1, clip=2)
    second = proxied_instance(11, ["a windmill on the other instance", None, 99], json.dumps(proxy))
    workflow = ui_workflow([first, second], [SAMPLER_SUBGRAPH])
    got = inspect(tmp_path, workflow=workflow)
    assert (got["prompt"], got["seed"]) == ("a lighthouse set on the instance", 1234)
    assert (got["negative_prompt"], got["steps"], got["width"]) == ("blurry", 20, 512)  # not promoted: inner values
    graph = graph_from_workflow(workflow)
    assert graph["11:6"]["inputs"]["text"] == "a windmill on the other instance"
    assert graph["11:3"]["inputs"]["seed"] == 99 and graph["11:3"]["inputs"]["steps"] == 20


def test_legacy_proxy_widget_without_a_host_value_keeps_the_inner_one(tmp_path: Path) -> None:
    for values, proxy in (([None], [["6", "text"]]), ([], [["6", "text"]]), (["x"], "not json ["),
                          (["x"], [["6"], "junk", [None, "text"]])):
        got = inspect(tmp_path, workflow=ui_workflow([proxied_instance(10, values, proxy, model=1, clip=2)],
                                                     [SAMPLER_SUBGRAPH]))
        assert got["error"] is None, (values, proxy)
        assert_default_graph(got)


def test_legacy_proxy_widget_of_a_linked_promoted_input_follows_the_proxy_order(tmp_path: Path) -> None:
    """An instance with both forms (a promoted `text` input and proxyWidgets listing seed first): its
    widgets_values follow the proxyWidgets order, not the order of its inputs."""
    promoted = json.loads(json.dumps(SAMPLER_SUBGRAPH))
    promoted["inputs"].append({"id": "i-text", "name": "text", "type": "STRING", "linkIds": [30]})
    [encoder] = [n for n in promoted["nodes"] if n["id"] == 6]
    encoder["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 30})
    promoted["links"].append(sub_link(30, -10, 2, 6, 1))
    instance = ui_node(10, promoted["id"], [7, "a harbour typed on the instance"], {"model": 1, "clip": 2})
    instance["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None})
    instance["properties"] = {"proxyWidgets": [["3", "seed"], ["6", "text"]]}
    got = inspect(tmp_path, workflow=ui_workflow([instance], [promoted]))
    assert (got["prompt"], got["seed"]) == ("a harbour typed on the instance", 7)


def nested_definitions(middle: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The sampler subgraph with its text encoders in a subgraph of their own (node 6: clip in, two conds out;
    inside, node 1 is the positive encoder and node 2 the negative). `middle` is merged into that inner instance."""
    prompts = {
        "id": "5a9e0c1e-0000-4000-8000-000000000002", "name": "Prompts",
        "inputs": [{"id": "p-clip", "name": "clip", "type": "CLIP", "linkIds": [21, 22]}],
        "outputs": [{"id": "p-pos", "name": "positive", "linkIds": [23]},
                    {"id": "p-neg", "name": "negative", "linkIds": [24]}],
        "nodes": [ui_node(1, "CLIPTextEncode", ["a red fox in the snow"], {"clip": 21}),
                  ui_node(2, "CLIPTextEncode", ["blurry"], {"clip": 22})],
        "links": [sub_link(21, -10, 0, 1, 0), sub_link(22, -10, 0, 2, 0), sub_link(23, 1, 0, -20, 0),
                  sub_link(24, 2, 0, -20, 1)],
    }
    outer = json.loads(json.dumps(SAMPLER_SUBGRAPH))
    outer["nodes"] = [n for n in outer["nodes"] if n["type"] != "CLIPTextEncode"]
    outer["nodes"].append(ui_node(6, prompts["id"], inputs={"clip": 12}, outputs=2) | (middle or {}))
    outer["links"] = [link for link in outer["links"] if link["id"] not in (13, 14, 15)]
    outer["links"] += [sub_link(14, 6, 0, 3, 1), sub_link(15, 6, 1, 3, 2)]
    return [outer, prompts]


def test_nested_subgraph_inside_a_subgraph(tmp_path: Path) -> None:
    instance = ui_node(10, SAMPLER_SUBGRAPH["id"], inputs={"model": 1, "clip": 2})
    assert_default_graph(inspect(tmp_path, workflow=ui_workflow([instance], nested_definitions())))


def test_legacy_proxy_widgets_through_a_nested_instance_reach_the_node_they_come_from(tmp_path: Path) -> None:
    """The inner instance (6) promotes both encoders' `text`, told apart by their source node; the outer instances
    promote those two again with the third element, the deepest source node (ComfyUI_frontend's
    `disambiguatingSourceNodeId`), in the other order. Each outer instance's values reach the right encoder."""
    middle = {"widgets_values": ["stale positive of the middle", "stale negative of the middle"],
              "properties": {"proxyWidgets": [["1", "text"], ["2", "text"]]}}
    proxy = [["6", "text", "2"], ["6", "text", "1"], ["3", "seed"]]
    first = proxied_instance(10, ["no text", "a lighthouse on the outer instance", 555], proxy, model=1, clip=2)
    second = proxied_instance(11, ["worst quality", "a windmill on the other one", 7], proxy)
    workflow = ui_workflow([first, second], nested_definitions(middle))
    got = inspect(tmp_path, workflow=workflow)
    assert (got["prompt"], got["negative_prompt"], got["seed"]) == ("a lighthouse on the outer instance", "no text",
                                                                     555)
    graph = graph_from_workflow(workflow)
    assert (graph["11:6:1"]["inputs"]["text"], graph["11:6:2"]["inputs"]["text"]) == ("a windmill on the other one",
                                                                                      "worst quality")
    only_middle = ui_node(10, SAMPLER_SUBGRAPH["id"], inputs={"model": 1, "clip": 2})  # no outer proxyWidgets
    got = inspect(tmp_path, workflow=ui_workflow([only_middle], nested_definitions(middle)))
    assert (got["prompt"], got["negative_prompt"]) == ("stale positive of the middle", "stale negative of the middle")


def test_legacy_proxy_widget_names_with_a_source_prefix_and_linked_inner_inputs(tmp_path: Path) -> None:
    """Older saves put the source node in the name (`1:text`); an inner instance without proxyWidgets still takes
    it. An inner instance that promotes by a linked input (`widget` on the input) takes an outer value by name."""
    outer = proxied_instance(10, ["a harbour by prefix"], [["6", "1:text"]], model=1, clip=2)
    got = inspect(tmp_path, workflow=ui_workflow([outer], nested_definitions()))
    assert (got["prompt"], got["negative_prompt"]) == ("a harbour by prefix", "blurry")
    outer_def, prompts = nested_definitions()
    prompts["inputs"].append({"id": "p-text", "name": "text", "type": "STRING", "linkIds": [30]})
    encoder = prompts["nodes"][0]
    encoder["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 30})
    prompts["links"].append(sub_link(30, -10, 1, 1, 1))
    [middle] = [n for n in outer_def["nodes"] if n["id"] == 6]
    middle["widgets_values"] = ["the middle's own text"]
    middle["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None})
    for values, expected in ((["a harbour by name"], "a harbour by name"), ([None], "the middle's own text")):
        outer = proxied_instance(10, values, [["6", "text"]], model=1, clip=2)
        got = inspect(tmp_path, workflow=ui_workflow([outer], [outer_def, prompts]))
        assert (got["prompt"], got["negative_prompt"]) == (expected, "blurry")


def test_api_prompt_wins_over_the_subgraph_workflow(tmp_path: Path) -> None:
    """ComfyUI writes subgraphs already flattened into the `prompt` graph; the workflow is only a fallback."""
    instance = ui_node(10, SAMPLER_SUBGRAPH["id"], inputs={"model": 1, "clip": 2})
    graph = txt2img()
    graph["6"]["inputs"]["text"] = "from the api graph"
    got = inspect(tmp_path, prompt=graph, workflow=ui_workflow([instance], [SAMPLER_SUBGRAPH]))
    assert got["prompt"] == "from the api graph"


def test_subgraph_that_contains_itself_is_read_without_looping(tmp_path: Path) -> None:
    looping = json.loads(json.dumps(SAMPLER_SUBGRAPH))
    looping["nodes"].append(ui_node(20, looping["id"], inputs={"model": 11}))
    instance = ui_node(10, looping["id"], inputs={"model": 1, "clip": 2})
    assert_default_graph(inspect(tmp_path, workflow=ui_workflow([instance], [looping])))


@pytest.mark.parametrize("junk", ["not a definition", {"id": "x", "nodes": 3, "links": "?"}, {"nodes": []},
                                  {"id": "y", "nodes": [{"id": 1, "type": "KSampler", "inputs": 5}], "links": [[1]]}])
def test_malformed_definitions_next_to_good_ones_are_skipped(tmp_path: Path, junk: Any) -> None:
    instance = ui_node(10, SAMPLER_SUBGRAPH["id"], inputs={"model": 1, "clip": 2})
    workflow = ui_workflow([instance, ui_node(11, "x"), ui_node(12, "y"), ui_node(13, "workflow>x", [1, 2])],
                           [SAMPLER_SUBGRAPH, junk], extra={"groupNodes": {"x": {"nodes": 5, "links": "?"}}})
    got = inspect(tmp_path, workflow=workflow)
    assert got["error"] is None and not got["warnings"]
    assert_default_graph(got)


GROUP_NODE = {  # a legacy group node ("Convert to group node"): the sampler and its two prompts
    "nodes": [
        {**ui_node(6, "CLIPTextEncode", ["default prompt"], {"clip": None}), "index": 0},
        {**ui_node(7, "CLIPTextEncode", ["default negative"], {"clip": None}), "index": 1},
        {**ui_node(5, "EmptyLatentImage", [512, 768, 1]), "index": 2},
        {**ui_node(3, "KSampler", [1, "fixed", 20, 7.0, "euler", "normal", 1.0],
                   {"model": None, "positive": None, "negative": None, "latent_image": None}), "index": 3},
    ],
    "links": [[None, 1, 0, 0, 4, "CLIP"], [None, 1, 1, 0, 4, "CLIP"], [0, 0, 3, 1, 6, "CONDITIONING"],
              [1, 0, 3, 2, 7, "CONDITIONING"], [2, 0, 3, 3, 5, "LATENT"], [None, 0, 3, 0, 4, "MODEL"]],
    "external": [[3, 0, "LATENT"]],
}


@pytest.mark.parametrize("type_", ["workflow>Sample", "workflow/Sample"])
def test_group_node_inner_widgets(tmp_path: Path, type_: str) -> None:
    """The instance's widgets_values are its inner nodes' widgets in order, and win over the stored defaults."""
    widgets = ["a red fox in the snow", "blurry", 512, 768, 1, 42, "fixed", 20, 7.0, "euler", "normal", 1.0]
    instance = ui_node(10, type_, widgets, inputs={"clip": 2, "CLIPTextEncode clip": 2, "model": 1})
    got = inspect(tmp_path, workflow=ui_workflow([instance], extra={"groupNodes": {"Sample": GROUP_NODE}}))
    assert_default_graph(got)


def test_group_node_falls_back_to_the_stored_widgets(tmp_path: Path) -> None:
    instance = ui_node(10, "workflow>Sample", ["not", "matching"], inputs={"clip": 2, "model": 1})
    got = inspect(tmp_path, workflow=ui_workflow([instance], extra={"groupNodes": {"Sample": GROUP_NODE}}))
    assert (got["prompt"], got["negative_prompt"], got["seed"]) == ("default prompt", "default negative", 1)


# 6. NovelAI: a legacy top-level model name.

def novelai(comment: dict[str, Any], **chunks: str) -> dict[str, str]:
    return {"Title": "AI generated image", "Description": comment["prompt"], "Software": "NovelAI",
            "Source": "Stable Diffusion 1D44365E", "Comment": json.dumps(comment), **chunks}


NAI_COMMENT = {"prompt": "masterpiece, a fox", "uc": "lowres", "steps": 28, "scale": 11.0, "seed": 1234,
               "sampler": "k_euler_ancestral", "width": 512, "height": 768}


def test_novelai_model_key_in_the_comment(tmp_path: Path) -> None:
    got = inspect(tmp_path, **novelai({**NAI_COMMENT, "model": "nai-diffusion"}))
    assert (got["model"], got["prompt"], got["seed"]) == ("nai-diffusion", "masterpiece, a fox", 1234)
    assert "model" not in got["metadata"]


def test_novelai_model_chunk(tmp_path: Path) -> None:
    got = inspect(tmp_path, **novelai(NAI_COMMENT, model="safe-diffusion"))
    assert got["model"] == "safe-diffusion"


def test_novelai_without_a_model_key_leaves_model_empty(tmp_path: Path) -> None:
    """sd-metadata's NovelAI expectations: the Source names the service's model, not a checkpoint."""
    got = inspect(tmp_path, **novelai(NAI_COMMENT))
    assert got["model"] is None
    assert got["samplers"][0]["model"] == {"name": "Stable Diffusion", "hash": "1D44365E"}
