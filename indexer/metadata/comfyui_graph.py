"""ComfyUI graphs as files carry them: PNG `prompt`/`workflow` chunks, EXIF tags of save nodes, UI workflows.

A UI workflow becomes an API-format graph here, with its subgraph instances (`definitions.subgraphs`, the node's
`type` the subgraph's id) and legacy group nodes (`extra.groupNodes`, type `workflow>NAME` or `workflow/NAME`)
expanded the way ComfyUI's front end does before queueing: inner nodes get ids "<instance id>:<inner id>".
An instance's promoted widgets are read in both forms the front end has saved: inputs that carry `widget` (linked to
the subgraph's inputs; the instance's `widgets_values` in input order), and the legacy `properties.proxyWidgets`
list of `[inner node id, widget name]` (the instance's `widgets_values` in that list's order; `$$` entries are
previews, not values). A legacy entry may name an inner node that is itself an instance: then the widget is one that
instance promotes, and a third element (or an `id:` prefix on the name) gives the deepest node it comes from, as
ComfyUI_frontend's `disambiguatingSourceNodeId` does; the outer instance's value wins over the inner one's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from indexer.metadata.comfyui import Graph, nodes_of
from indexer.metadata.result import as_list, json_object

logger = logging.getLogger(__name__)

# Widget order of common nodes in a UI workflow (None: a widget we skip, e.g. "control after generate").
_WIDGETS: dict[str, tuple[str | None, ...]] = {
    "KSampler": ("seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler",
                         "start_at_step", "end_at_step", "return_with_leftover_noise"),
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g",
                           "text_l"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CheckpointLoader": ("config_name", "ckpt_name"),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "CLIPSetLastLayer": ("stop_at_clip_layer",),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "VAELoader": ("vae_name",),
    "SaveImage": ("filename_prefix",),
    "UpscaleModelLoader": ("model_name",),
    "ImageScale": ("upscale_method", "width", "height", "crop"),
    "ImageScaleBy": ("upscale_method", "scale_by"),
    "LatentUpscale": ("upscale_method", "width", "height", "crop"),
    "LatentUpscaleBy": ("upscale_method", "scale_by"),
    "LoadImage": ("image", None),
    "RandomNoise": ("noise_seed", None),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "CFGGuider": ("cfg",),
    "PrimitiveNode": ("value", None),
}
_LABELLED = re.compile(r"^\s*(prompt|workflow)\s*:\s*", re.IGNORECASE)
_MUTED_MODES = (2, 4)  # never / bypass
_SUBGRAPH_INPUT, _SUBGRAPH_OUTPUT = "-10", "-20"  # litegraph's boundary nodes inside a subgraph definition
_GROUP_PREFIXES = ("workflow>", "workflow/")
_MAX_NESTING = 16

Origin = tuple[str, int]  # (node id, output slot) inside one graph level


def graph_from_workflow(workflow: dict[str, Any]) -> Graph:
    """An API-format graph from a UI workflow: links become inputs, known widgets become named values."""
    graph: Graph = {}
    top = _Definition(_nodes(workflow.get("nodes")), {k: o for k, o, _ in _links(workflow.get("links"))}, {})
    _Level(_Definitions(workflow), top, "", {}, graph).emit()
    return graph


def _nodes(value: Any) -> list[dict[str, Any]]:
    return [n for n in as_list(value) if isinstance(n, dict) and "type" in n and n.get("mode") not in _MUTED_MODES]


def _links(value: Any) -> list[tuple[Any, Origin, Origin]]:
    """(link id, origin, target) of each link, in either form: `[id, origin, slot, target, slot, type]` (a
    workflow's top level, group nodes) or `{"id", "origin_id", "origin_slot", "target_id", "target_slot"}`."""
    out: list[tuple[Any, Origin, Origin]] = []
    for link in as_list(value):
        if isinstance(link, list) and len(link) >= 5:
            out.append((link[0], (str(link[1]), link[2]), (str(link[3]), link[4])))
        elif isinstance(link, dict) and "id" in link:
            out.append((link["id"], (str(link.get("origin_id")), link.get("origin_slot", 0)),
                        (str(link.get("target_id")), link.get("target_slot", 0))))
    return out


def _widget_inputs(node: dict[str, Any]) -> dict[str, Any]:
    """A UI node's widget values by input name (widgets of node types we know the order of)."""
    widgets = node.get("widgets_values")
    if isinstance(widgets, dict):
        return dict(widgets)
    if isinstance(widgets, list):
        names = _WIDGETS.get(str(node["type"]), ())
        return {name: value for name, value in zip(names, widgets, strict=False) if name is not None}
    return {}


@dataclass
class _Definition:
    """The inside of a graph level: its nodes, its links by id, and what feeds each of its outputs."""

    nodes: list[dict[str, Any]]
    links: dict[Any, Origin]
    outputs: dict[int, Origin]


def _subgraph(data: dict[str, Any]) -> _Definition:
    links = _links(data.get("links"))
    outputs = {target[1]: origin for _, origin, target in links if target[0] == _SUBGRAPH_OUTPUT}
    return _Definition(_nodes(data.get("nodes")), {k: o for k, o, _ in links}, outputs)


def _group(data: dict[str, Any], instance_widgets: Any) -> _Definition:
    """A legacy group node's inside. Its links are `[origin index, slot, target index, slot, ...]` (origin null:
    from outside); its inputs are the inner inputs not linked inside, its outputs the inner outputs not used
    inside or listed in `external`, both in inner-node order."""
    nodes = [n for n in as_list(data.get("nodes")) if isinstance(n, dict) and "type" in n]
    indexes = [str(n.get("index", position)) for position, n in enumerate(nodes)]
    inside = {(str(link[2]), link[3]): (str(link[0]), link[1]) for link in as_list(data.get("links"))
              if isinstance(link, list) and len(link) >= 4 and link[0] is not None}
    links: dict[Any, Origin] = {}
    for index, node in zip(indexes, nodes, strict=True):
        for slot, item in enumerate(_items(node.get("inputs"))):
            if (index, slot) in inside:
                links[(index, slot)] = inside[(index, slot)]
            elif "widget" not in item:
                links[(index, slot)] = (_SUBGRAPH_INPUT, sum(o[0] == _SUBGRAPH_INPUT for o in links.values()))
    external = {(str(e[0]), e[1]) for e in as_list(data.get("external")) if isinstance(e, list) and len(e) >= 2}
    used = set(inside.values()) - external
    produced = [(index, slot) for index, node in zip(indexes, nodes, strict=True)
                for slot in range(len(as_list(node.get("outputs"))))]
    outputs = dict(enumerate(o for o in produced if o not in used))
    inner = [{**node, "id": index, "widgets_values": widgets,
              "inputs": [{**item, "link": (index, slot)} for slot, item in enumerate(_items(node.get("inputs")))]}
             for index, node, widgets in zip(indexes, nodes, _group_widgets(nodes, instance_widgets), strict=True)]
    return _Definition([n for n in inner if n.get("mode") not in _MUTED_MODES], links, outputs)


@dataclass(frozen=True)
class _Promoted:
    """A value an instance sets through a legacy proxyWidgets entry: on its inner node `node`, widget `name`; where
    `node` is itself an instance, `leaf` (if known) is the deepest node the promoted widget comes from."""

    node: str
    name: str
    leaf: str | None
    value: Any


_LEAF_PREFIX = re.compile(r"^(-?\d+):(.+)$")  # a legacy promoted name that carries its source node: "17:text"


def _proxy_values(node: dict[str, Any]) -> list[_Promoted] | None:
    """An instance's legacy promoted widgets (`properties.proxyWidgets`, a list or its JSON text) with the values set
    on the instance, in order. None when it has none (the linked-input form)."""
    properties = node.get("properties")
    raw = properties.get("proxyWidgets") if isinstance(properties, dict) else None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, list) or not raw:
        return None
    values = as_list(node.get("widgets_values"))
    found: list[_Promoted] = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, list) or len(entry) < 2 or not all(isinstance(e, str | int) for e in entry[:2]):
            continue
        inner, name = str(entry[0]), str(entry[1])
        if name.startswith("$$") or index >= len(values) or values[index] is None:  # a preview, or no host value
            continue
        leaf = str(entry[2]) if len(entry) > 2 and isinstance(entry[2], str | int) else None
        found.append(_Promoted(inner, name, leaf, values[index]))
    return found


def _pass_down(own: list[_Promoted] | None, outer: list[_Promoted], inside: _Definition) -> list[_Promoted]:
    """The promoted values that reach an instance's inner nodes: its own, with the values an enclosing instance sets
    on the widgets it promotes in turn (matched by name and, when given, source node) put in their place. An outer
    value that matches none of its entries goes straight to its source node when that node is inside."""
    entries = list(own or [])
    inner_ids = {str(n.get("id")) for n in inside.nodes}
    for promoted in outer:
        name, leaf = promoted.name, promoted.leaf
        if leaf is None and (prefixed := _LEAF_PREFIX.match(name)):
            leaf, name = prefixed.group(1), prefixed.group(2)
        index = next((i for i, e in enumerate(entries)
                      if e.name == name and (leaf is None or leaf in (e.leaf, e.node))), None)
        if index is not None:
            entries[index] = _Promoted(entries[index].node, name, entries[index].leaf, promoted.value)
        elif leaf is not None and leaf in inner_ids:
            entries.append(_Promoted(leaf, name, None, promoted.value))
    return entries


def _items(value: Any) -> list[dict[str, Any]]:
    """A node's input (or output) slots."""
    return [i for i in as_list(value) if isinstance(i, dict)]


def _group_widgets(nodes: list[dict[str, Any]], instance_widgets: Any) -> list[Any]:
    """Each inner node's widget values: the instance's own (its inner widgets in order) when they add up, else the
    values stored with the group's definition."""
    stored: list[list[Any]] = [as_list(n.get("widgets_values")) for n in nodes]
    if not isinstance(instance_widgets, list) or len(instance_widgets) != sum(len(w) for w in stored):
        return [n.get("widgets_values") for n in nodes]
    out: list[Any] = []
    start = 0
    for own in stored:
        out.append(instance_widgets[start:start + len(own)])
        start += len(own)
    return out


class _Definitions:
    """The subgraph and group-node definitions a workflow carries, by the node type that instances them."""

    def __init__(self, workflow: dict[str, Any]) -> None:
        definitions = workflow.get("definitions")
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        self.subgraphs = {str(d["id"]): _subgraph(d) for d in subgraphs or [] if isinstance(d, dict) and "id" in d}
        extra = workflow.get("extra")
        groups = extra.get("groupNodes") if isinstance(extra, dict) else None
        self.groups = {str(k): v for k, v in groups.items() if isinstance(v, dict)} if isinstance(groups, dict) else {}

    def of(self, node: dict[str, Any]) -> _Definition | None:
        type_ = str(node["type"])
        if type_ in self.subgraphs:
            return self.subgraphs[type_]
        name = next((type_[len(p):] for p in _GROUP_PREFIXES if type_.startswith(p)), None)
        if name is not None and name in self.groups:
            return _group(self.groups[name], node.get("widgets_values"))
        return None


class _Level:
    """One graph level being flattened into `graph`: the workflow itself, or one instance of a definition."""

    def __init__(self, definitions: _Definitions, inside: _Definition, prefix: str, bindings: dict[int, Any],
                 graph: Graph, path: tuple[str, ...] = (), overrides: list[_Promoted] | None = None) -> None:
        self.definitions, self.inside, self.prefix, self.bindings = definitions, inside, prefix, bindings
        self.overrides = overrides or []  # widget values the instance sets on inner nodes (legacy proxyWidgets)
        self.graph, self.path = graph, path  # path: the definitions this level is inside, outermost first
        self.nodes = {str(n.get("id")): n for n in inside.nodes}
        self.instances = {k: d for k, n in self.nodes.items() if (d := definitions.of(n)) is not None}
        self.expanded: dict[str, dict[int, Any]] = {}

    def source(self, origin: Origin) -> Any:
        """The API-graph link (`[node id, slot]`) that produces what `origin` puts out at this level."""
        node_id, slot = origin
        if node_id == _SUBGRAPH_INPUT:
            return self.bindings.get(slot)
        if node_id in self.instances:
            return self.expand(node_id).get(slot)
        return [self.prefix + node_id, slot] if node_id in self.nodes else None

    def link_source(self, link_id: Any) -> Any:
        origin = self.inside.links.get(link_id) if isinstance(link_id, int | str | tuple) else None
        return self.source(origin) if origin is not None else None

    def expand(self, node_id: str) -> dict[int, Any]:
        """Emit an instance's inner nodes (once) and return what feeds each of its outputs."""
        type_ = str(self.nodes[node_id]["type"])
        if node_id in self.expanded or type_ in self.path or len(self.path) >= _MAX_NESTING:
            return self.expanded.get(node_id, {})  # a definition inside itself is not expanded again
        self.expanded[node_id] = {}  # set first: instances that feed each other stop here
        own = _proxy_values(self.nodes[node_id])
        outer = [p for p in self.overrides if p.node == node_id]  # what an enclosing instance sets through this one
        bindings = self.bindings_of(self.nodes[node_id], promoted_in_order=own is None, outer=outer)
        child = _Level(self.definitions, self.instances[node_id], f"{self.prefix}{node_id}:", bindings, self.graph,
                       (*self.path, type_), _pass_down(own, outer, self.instances[node_id]))
        child.emit()
        self.expanded[node_id] = {slot: child.source(origin) for slot, origin in child.inside.outputs.items()}
        return self.expanded[node_id]

    def bindings_of(self, node: dict[str, Any], *, promoted_in_order: bool = True,
                    outer: Sequence[_Promoted] = ()) -> dict[int, Any]:
        """What feeds each input of an instance: its link, or for a promoted widget (an input that carries `widget`)
        the value set on the instance, which its `widgets_values` hold in the order of those inputs (unless they
        follow a legacy proxyWidgets list: then those values reach the inner nodes as overrides instead). A value an
        enclosing instance's proxyWidgets sets on one of these widgets, by its name, wins over the instance's own."""
        values = iter(as_list(node.get("widgets_values")) if promoted_in_order else ())
        named = {p.name: p.value for p in outer}
        bindings: dict[int, Any] = {}
        for slot, item in enumerate(_items(node.get("inputs"))):
            widget = item.get("widget")
            promoted = next(values, None) if isinstance(widget, dict) else None
            if isinstance(widget, dict) and str(widget.get("name")) in named:
                promoted = named[str(widget.get("name"))]
            linked = self.link_source(item.get("link"))
            bindings[slot] = linked if linked is not None else promoted
        return bindings

    def emit(self) -> None:
        for node_id, node in self.nodes.items():
            if node_id in self.instances:
                self.expand(node_id)
                continue
            inputs = _widget_inputs(node) | {p.name: p.value for p in self.overrides if p.node == node_id}
            for item in _items(node.get("inputs")):
                if (source := self.link_source(item.get("link"))) is not None:
                    inputs[str(item.get("name"))] = source
            self.graph[self.prefix + node_id] = {"class_type": str(node["type"]), "inputs": inputs}


@dataclass
class FoundGraph:
    """A ComfyUI graph found in a file, where it was, and the non-node keys next to it (Civitai's extras)."""

    graph: Graph
    where: str
    extras: dict[str, Any] = field(default_factory=dict)
    workflow: dict[str, Any] | None = None


def _labelled(raw: dict[str, str]) -> dict[str, str]:
    """`prompt:`/`workflow:` texts that ComfyUI's WebP saver and other save nodes put into EXIF tags."""
    found: dict[str, str] = {}
    for value in raw.values():
        match = _LABELLED.match(value)
        if match and value[match.end():].lstrip().startswith("{"):
            found.setdefault(match.group(1).lower(), value[match.end():])
    return found


def find_graph(raw: dict[str, str], warnings: list[str]) -> FoundGraph | None:
    """The ComfyUI graph in a file's metadata, in any of the places front ends and save nodes write it."""
    workflow: dict[str, Any] | None = None
    candidates: list[tuple[str, str | None]] = [("prompt", raw.get("prompt")), ("Prompt", raw.get("Prompt"))]
    labelled = _labelled(raw)
    candidates.append(("EXIF prompt:", labelled.get("prompt")))
    for where, text in candidates:
        value = json_object(text, f"ComfyUI {where}", warnings)
        if value is not None and nodes_of(value):
            workflow = _workflow(raw, labelled, warnings)
            return FoundGraph(nodes_of(value), where, {k: v for k, v in value.items() if k not in nodes_of(value)},
                              workflow)
    comment = json_object(raw.get("UserComment"), "UserComment", warnings)
    if comment is not None:
        inner = comment.get("prompt")
        if isinstance(inner, str):
            inner = json_object(inner, "UserComment prompt", warnings)
        if isinstance(inner, dict) and nodes_of(inner):
            flow = comment.get("workflow")
            return FoundGraph(nodes_of(inner), "UserComment prompt", {},
                              flow if isinstance(flow, dict) else None)
        if nodes_of(comment):
            extras = {k: v for k, v in comment.items() if k not in nodes_of(comment)}
            return FoundGraph(nodes_of(comment), "UserComment", extras)
    workflow = _workflow(raw, labelled, warnings)
    if workflow is not None:
        graph = graph_from_workflow(workflow)
        if graph:
            return FoundGraph(graph, "workflow", {}, workflow)
    return None


def _workflow(raw: dict[str, str], labelled: dict[str, str], warnings: list[str]) -> dict[str, Any] | None:
    for where, text in (("workflow", raw.get("workflow")), ("Workflow", raw.get("Workflow")),
                        ("EXIF workflow:", labelled.get("workflow"))):
        value = json_object(text, f"ComfyUI {where}", warnings)
        if value is not None and isinstance(value.get("nodes"), list):
            return value
    return None

