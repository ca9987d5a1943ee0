"""ComfyUI: find the sampler nodes of a `prompt` graph and follow their links to prompts, model and settings."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from indexer.metadata.comfy_nodes import ASPECT_NODES, SIZE_KEYS, aspect_preset, join_of, swapped, text_keys
from indexer.metadata.result import PromptPart, SamplerInfo, build_params, snake, to_float, to_int, to_str
from promptdex.params import GenerationParams, HiresParams

logger = logging.getLogger(__name__)

Graph = dict[str, dict[str, Any]]

_HOPS = ("noise", "sampler", "sigmas", "guider")  # SamplerCustomAdvanced gets its settings through these links
_PRIMITIVES = ("value", "seed", "noise_seed", "int", "float", "number", "string", "text", "STRING", "INT", "FLOAT")
_CHECKPOINT_KEYS = ("ckpt_name", "unet_name", "model_path", "model_name")
_LATENT_LINKS = ("latent_image", "samples", "pixels", "image", "images", "latent", "samples_to")
_PARAM_KEYS = {"cfg": "cfg_scale", "noise_seed": "seed"}
_MAX_DEPTH = 64
_ZEROED = ("ConditioningZeroOut",)  # an empty conditioning, whatever it was made from (SD3/Flux negatives)


def nodes_of(value: dict[str, Any]) -> Graph:
    """The nodes of an API-format graph (`{id: {"class_type", "inputs"}}`); other keys (Civitai's extras) are left."""
    return {
        str(k): v for k, v in value.items()
        if isinstance(v, dict) and isinstance(v.get("class_type"), str) and isinstance(v.get("inputs"), dict)
    }


@dataclass
class _Trace:
    """What lies upstream of a latent or image input, up to the previous sampler."""

    size: tuple[int, int] | None = None
    scale_by: float | None = None
    scale_step: int = 1  # the size's granularity for scale_by: 8 when a latent was scaled
    upstream: str | None = None
    upscaler: str | None = None
    loaded_image: bool = False


@dataclass
class GraphSummary:
    """The parameters of the image a graph made, every sampler, the nodes not used for them, and post-upscaling."""

    params: GenerationParams
    samplers: list[SamplerInfo]
    metadata: dict[str, list[dict[str, Any]]]
    post_upscaler: str | None = None
    post_size: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)


def _natural(key: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", key) if p]


class _Walker:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.visited: set[str] = set()

    def link(self, value: Any) -> tuple[str, int] | None:
        if (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
                and isinstance(value[0], str | int) and str(value[0]) in self.graph):
            return str(value[0]), value[1]
        return None

    def inputs(self, node_id: str) -> dict[str, Any]:
        return self.graph[node_id]["inputs"]

    def cls(self, node_id: str) -> str:
        return str(self.graph[node_id]["class_type"])

    def scalars(self, node_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.inputs(node_id).items() if self.link(v) is None}

    def is_sampler(self, node_id: str) -> bool:
        inputs = self.inputs(node_id)
        return (("latent_image" in inputs or "latent" in inputs)
                and (("positive" in inputs and "negative" in inputs) or "guider" in inputs)
                and ("steps" in inputs or "sigmas" in inputs))

    def resolve(self, value: Any, names: tuple[str, ...], depth: int = 0) -> Any:
        """A literal input value, following a link to the node that holds it (primitive, seed node, ...)."""
        found = self.link(value)
        if found is None:
            return value
        if depth > _MAX_DEPTH:
            return None
        inputs = self.inputs(found[0])
        for name in (*names, *_PRIMITIVES):
            if name in inputs:
                return self.resolve(inputs[name], names, depth + 1)
        return None

    def param(self, node_id: str, names: tuple[str, ...], depth: int = 0) -> Any:
        """A sampler setting: on the node itself or on its noise/sampler/sigmas/guider nodes."""
        inputs = self.inputs(node_id)
        for name in names:
            if name in inputs:
                return self.resolve(inputs[name], names)
        if depth < 4:
            for hop in _HOPS:
                up = self.link(inputs.get(hop))
                if up is not None:
                    value = self.param(up[0], names, depth + 1)
                    if value is not None:
                        return value
        return None

    def param_link(self, node_id: str, names: tuple[str, ...]) -> Any:
        """The raw (link) input of a sampler, looking through its guider."""
        inputs = self.inputs(node_id)
        for name in names:
            if self.link(inputs.get(name)) is not None:
                return inputs[name]
        guider = self.link(inputs.get("guider"))
        if guider is not None:
            return self.param_link(guider[0], names)
        return None

    def string(self, value: Any, depth: int = 0) -> str | None:
        """A text input's string, following links through string nodes (primitives, joins, prompt nodes)."""
        found = self.link(value)
        if found is None:
            return value if isinstance(value, str) else None
        if depth > _MAX_DEPTH:
            return None
        node_id, slot = found
        inputs = self.inputs(node_id)
        join = join_of(self.cls(node_id))
        if join is not None:
            parts = [self.string(inputs.get(k), depth + 1) for k in join.keys]
            return join.apply(inputs, [p for p in parts if p is not None])
        for key in text_keys(self.cls(node_id), slot):
            if key in inputs:
                return self.string(inputs[key], depth + 1)
        return None

    def texts(self, node_id: str, side: str) -> list[str] | None:
        """The prompt texts a text-encoder node holds; None when the node is not one."""
        inputs = self.inputs(node_id)
        for key in ("populated_text", "text", "prompt", "wildcard_text"):
            if key in inputs:
                value = self.string(inputs[key])
                if value is not None:
                    return [value] if value else []
        if side in inputs and (isinstance(inputs[side], str) or any(k in inputs for k in _CHECKPOINT_KEYS)):
            value = self.string(inputs[side])  # loaders that take the prompt text (Efficient Loader)
            if value is not None:
                return [value] if value else []
        if "text_g" in inputs or "text_l" in inputs:
            values = [self.string(inputs.get(k)) for k in ("text_g", "text_l")]
            return list(dict.fromkeys(v for v in values if v))
        return None

    def prompts(self, value: Any, side: str, attrs: dict[str, Any], out: list[PromptPart], depth: int = 0) -> None:
        found = self.link(value)
        if found is None or depth > _MAX_DEPTH:
            return
        node_id, slot = found
        self.visited.add(node_id)
        if self.cls(node_id) in _ZEROED:
            return
        texts = self.texts(node_id, side)
        if texts is not None:
            out.extend(PromptPart(t, node_id=node_id, attributes=dict(attrs)) for t in texts)
            return
        inputs = self.inputs(node_id)
        scalars = self.scalars(node_id)
        here = {**attrs, self.cls(node_id): {"id": node_id, **scalars}} if scalars else attrs
        if self.link(inputs.get("positive")) and self.link(inputs.get("negative")):  # e.g. ControlNetApplyAdvanced
            self.prompts(inputs["negative" if slot == 1 else "positive"], side, here, out, depth + 1)
            return
        for name, item in inputs.items():
            if self.link(item) is not None and ("cond" in name or name in ("positive", "negative")):
                self.prompts(item, side, here, out, depth + 1)

    def model(self, sampler_id: str) -> dict[str, Any] | None:
        value = self.param_link(sampler_id, ("model",))
        for _ in range(_MAX_DEPTH):
            found = self.link(value)
            if found is None:
                return None
            node_id = found[0]
            scalars = self.scalars(node_id)
            for key in _CHECKPOINT_KEYS:
                name = to_str(scalars.get(key))
                if name is not None:
                    self.visited.add(node_id)
                    model: dict[str, Any] = {"name": name, "model_id": node_id}
                    rest = {k: v for k, v in scalars.items() if k != key}
                    if rest:
                        model["metadata"] = rest
                    return model
            inputs = self.inputs(node_id)
            value = inputs.get("model", next((v for k, v in inputs.items() if "model" in k and self.link(v)), None))
        return None

    def clip_skip(self, text_node: str) -> int | None:
        """The CLIP layer the text node's CLIP stops at: on the node itself (Efficient Loader) or up its clip link."""
        node_id: str | None = text_node
        for _ in range(_MAX_DEPTH):
            if node_id is None:
                return None
            inputs = self.inputs(node_id)
            for key in ("stop_at_clip_layer", "clip_skip"):
                layer = to_int(self.resolve(inputs.get(key), (key,)))
                if layer is not None:
                    return abs(layer)
            found = self.link(inputs.get("clip", inputs.get("opt_clip")))
            node_id = found[0] if found else None
        return None

    def size(self, node_id: str) -> tuple[int, int] | None:
        """The width and height a node sets: an empty latent's, a resize's, a loader's or an aspect-ratio preset's."""
        inputs = self.inputs(node_id)
        aspect = self.cls(node_id) in ASPECT_NODES
        size = aspect_preset(inputs) if aspect else None
        for keys in SIZE_KEYS if size is None else ():
            width, height = (self.dimension(inputs.get(k), k) for k in keys)
            if width and height:
                size = (width, height)
                break
        return swapped(inputs, size) if aspect and size else size

    def dimension(self, value: Any, name: str) -> int | None:
        """A width or height input; a link to an aspect-ratio node's width (0) or height (1) output reads its size."""
        found = self.link(value)
        if found is not None and self.cls(found[0]) in ASPECT_NODES and found[1] in (0, 1):
            size = self.size(found[0])
            return size[found[1]] if size else None
        return to_int(self.resolve(value, (name,)))

    def trace(self, value: Any) -> _Trace:
        out = _Trace()
        for _ in range(_MAX_DEPTH):
            found = self.link(value)
            if found is None:
                break
            node_id = found[0]
            if self.is_sampler(node_id):
                out.upstream = node_id
                break
            inputs = self.inputs(node_id)
            size = self.size(node_id) if out.size is None else None
            if size is not None:
                out.size = _scaled(size, out.scale_by, out.scale_step)
            if out.size is None and out.scale_by is None and "scale_by" in inputs:
                out.scale_by = to_float(self.resolve(inputs["scale_by"], ("scale_by",)))
                out.scale_step = 8 if "Latent" in self.cls(node_id) else 1
            upscale_model = self.link(inputs.get("upscale_model"))
            if upscale_model is not None and out.upscaler is None:
                out.upscaler = to_str(self.resolve(self.inputs(upscale_model[0]).get("model_name"), ("model_name",)))
            if isinstance(inputs.get("image"), str) and not any(self.link(v) for v in inputs.values()):
                out.loaded_image = True
                break
            value = next((inputs[k] for k in _LATENT_LINKS if self.link(inputs.get(k)) is not None), None)
        return out


def _scaled(size: tuple[int, int], scale: float | None, step: int) -> tuple[int, int]:
    """A size after a scale_by node downstream of it; LatentUpscaleBy rounds to whole latent cells (`step` 8)."""
    if scale is None:
        return size
    width, height = (round(v / step * scale) * step for v in size)
    return width, height


def _sampler_info(w: _Walker, node_id: str) -> SamplerInfo:
    parameters: dict[str, Any] = {}
    for key, value in w.scalars(node_id).items():
        if key != "sampler_name":
            parameters[_PARAM_KEYS.get(key, snake(key))] = value
    for key, names in (("seed", ("seed", "noise_seed")), ("steps", ("steps",)), ("cfg_scale", ("cfg",)),
                       ("scheduler", ("scheduler",)), ("denoise", ("denoise",))):
        if key not in parameters:
            value = w.param(node_id, names)
            if value is not None:
                parameters[key] = value
    positive: list[PromptPart] = []
    negative: list[PromptPart] = []
    w.visited.add(node_id)
    w.prompts(w.param_link(node_id, ("positive", "conditioning")), "positive", {}, positive)
    w.prompts(w.param_link(node_id, ("negative",)), "negative", {}, negative)
    name = w.param(node_id, ("sampler_name",))
    return SamplerInfo(name=name if isinstance(name, str) else None, parameters=parameters,
                       model=w.model(node_id), prompts=positive, negative_prompts=negative, node_id=node_id)


def _chain(w: _Walker, samplers: list[str]) -> list[str]:
    """Samplers from the first pass to the one that made the saved image (hires passes in between)."""
    def back(final: str) -> list[str]:
        chain = [final]
        while len(chain) <= len(samplers):
            up = w.trace(w.inputs(chain[0]).get("latent_image", w.inputs(chain[0]).get("latent"))).upstream
            if up is None or up in chain:
                break
            chain.insert(0, up)
        return chain

    best: list[str] = []
    best_saved = False
    for node_id in _image_outputs(w):
        final = w.trace(w.inputs(node_id)["images"]).upstream
        saved = _saves(w, node_id)
        if final is not None and (saved, len(chain := back(final))) > (best_saved, len(best)):
            best, best_saved = chain, saved
    if best:
        return best
    feeding = {w.trace(w.inputs(s).get("latent_image", w.inputs(s).get("latent"))).upstream for s in samplers}
    sinks = [s for s in samplers if s not in feeding]
    return back(sinks[0]) if sinks else [samplers[0]]


def _saves(w: _Walker, node_id: str) -> bool:
    """Whether an image output keeps its files: PreviewImage writes to ComfyUI's temp folder, which is emptied."""
    return "Preview" not in w.cls(node_id)


def _image_outputs(w: _Walker) -> list[str]:
    """The nodes that take finished images (save, preview, video combine), saving ones first."""
    outputs = [n for n in sorted(w.graph, key=_natural)
               if w.link(w.inputs(n).get("images")) is not None and not w.is_sampler(n)]
    return sorted(outputs, key=lambda n: not _saves(w, n))


def _output_trace(w: _Walker, final: str | None) -> _Trace | None:
    """What lies between the image output fed by sampler `final` (else the first output) and its sampler."""
    traces = [w.trace(w.inputs(n)["images"]) for n in _image_outputs(w)]
    return next((t for t in traces if t.upstream == final), traces[0] if traces else None)


def summarize_graph(graph: Graph) -> GraphSummary:
    """Read a ComfyUI API graph: the first pass's settings, a hires pass, and an upscale after the last sampler."""
    w = _Walker(graph)
    warnings: list[str] = []
    sampler_ids = sorted((n for n in graph if w.is_sampler(n)), key=_natural)
    if not sampler_ids:
        output = _output_trace(w, None)
        metadata = _unused(w)
        return GraphSummary(GenerationParams(), [], metadata, output.upscaler if output else None,
                            output.size if output else None, warnings)
    chain = _chain(w, sampler_ids)
    output = _output_trace(w, chain[-1])
    ordered = chain + [s for s in sampler_ids if s not in chain]
    infos = {s: _sampler_info(w, s) for s in ordered}
    base, info = chain[0], infos[chain[0]]
    trace = w.trace(w.inputs(base).get("latent_image", w.inputs(base).get("latent")))
    model = info.model or {}
    denoise = to_float(info.parameters.get("denoise"))
    values: dict[str, Any] = {
        "prompt": "\n".join(p.text for p in info.prompts),
        "negative_prompt": "\n".join(p.text for p in info.negative_prompts),
        "seed": to_int(info.parameters.get("seed")), "steps": to_int(info.parameters.get("steps")),
        "cfg": to_float(info.parameters.get("cfg_scale")), "sampler": info.name,
        "scheduler": to_str(info.parameters.get("scheduler")), "model": model.get("name"),
        "denoising_strength": denoise if denoise is not None and denoise < 1 else None,
        "clip_skip": w.clip_skip(info.prompts[0].node_id) if info.prompts and info.prompts[0].node_id else None,
    }
    if trace.size:
        values["width"], values["height"] = trace.size
    values["hires"] = _hires(w, chain, infos, trace)
    final_size = trace.size
    if len(chain) > 1:
        final_size = w.trace(w.inputs(chain[1]).get("latent_image")).size or final_size
    extra: dict[str, str] = {}
    if output is not None and output.upscaler and output.upstream is not None:
        extra["Postprocess upscaler"] = output.upscaler
        if output.size and final_size:
            extra["Postprocess upscale by"] = f"{round(output.size[0] / final_size[0], 4):g}"
    params = build_params({**values, "extra": extra}, warnings, "ComfyUI graph")
    post_upscaler = output.upscaler if output is not None and output.upstream is None else None
    return GraphSummary(params, list(infos.values()), _unused(w), post_upscaler,
                        output.size if post_upscaler and output else None, warnings)


def _hires(w: _Walker, chain: list[str], infos: dict[str, SamplerInfo], base_trace: _Trace) -> HiresParams | None:
    base = infos[chain[0]]
    if len(chain) == 1:
        denoise = to_float(base.parameters.get("denoise"))
        if base_trace.loaded_image and base_trace.upscaler and denoise is not None and denoise < 1:
            return HiresParams(upscaler=base_trace.upscaler, steps=to_int(base.parameters.get("steps")),
                               denoising_strength=denoise)
        return None
    second = infos[chain[1]]
    trace = w.trace(w.inputs(chain[1]).get("latent_image", w.inputs(chain[1]).get("latent")))
    scale = trace.scale_by
    if trace.size and base_trace.size:
        scale = round(trace.size[0] / base_trace.size[0], 4)
    sampler = second.name if second.name != base.name else None
    scheduler = second.parameters.get("scheduler")
    return HiresParams(
        upscale=scale, upscaler=trace.upscaler, steps=to_int(second.parameters.get("steps")),
        denoising_strength=to_float(second.parameters.get("denoise")), sampler=sampler,
        scheduler=scheduler if isinstance(scheduler, str) and scheduler != base.parameters.get("scheduler") else None,
    )


def _unused(w: _Walker) -> dict[str, list[dict[str, Any]]]:
    """Settings of the nodes that no sampler, prompt or model was read from, by node class."""
    out: dict[str, list[dict[str, Any]]] = {}
    for node_id in sorted(w.graph, key=_natural):
        if node_id in w.visited:
            continue
        scalars = w.scalars(node_id)
        if scalars:
            out.setdefault(w.cls(node_id), []).append({"id": node_id, **scalars})
    return out
