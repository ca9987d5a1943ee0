"""What some ComfyUI nodes output, for the graph reader: texts of string nodes, sizes of aspect-ratio nodes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Inputs that hold the text a string node outputs: Impact Pack's populated/wildcard text, rgthree's and
# Comfyroll's `prompt`, WAS's `text`, core primitives' `value`.
TEXT_KEYS = ("populated_text", "text", "prompt", "string", "value", "wildcard_text", "STRING")
# Nodes with one text output per input, in slot order.
_PER_SLOT = {"Text String": ("text", "text_b", "text_c", "text_d")}  # WAS Node Suite
# Comfyroll's aspect-ratio nodes: a preset such as "3:4 portrait 896x1152", or "custom" for width/height.
ASPECT_NODES = frozenset({"CR SDXL Aspect Ratio", "CR SD1.5 Aspect Ratio"})
_PRESET = re.compile(r"(\d+)\s*x\s*(\d+)\s*$")
# Latent size inputs of loaders that make the empty latent themselves (Efficiency Nodes).
SIZE_KEYS = (("width", "height"), ("empty_latent_width", "empty_latent_height"))


@dataclass(frozen=True)
class Join:
    """A node that joins its text inputs: which inputs, in order, the delimiter input, and its rules."""

    keys: tuple[str, ...]
    delimiter: str
    skip_empty: bool = False
    strip_key: str | None = None  # an input that, when "true", strips each part

    def apply(self, inputs: dict[str, Any], parts: list[str]) -> str:
        delimiter = inputs.get(self.delimiter, "")
        delimiter = "\n" if delimiter == "\\n" else delimiter if isinstance(delimiter, str) else ""
        if self.strip_key is not None and inputs.get(self.strip_key) == "true":
            parts = [p.strip() for p in parts]
        return delimiter.join(p for p in parts if p or not self.skip_empty)


_JOINS = {
    # WAS Node Suite: text_a..text_d that are strings, stripped when clean_whitespace is "true", empty ones left out.
    "Text Concatenate": Join(("text_a", "text_b", "text_c", "text_d"), "delimiter", True, "clean_whitespace"),
    "StringConcatenate": Join(("string_a", "string_b"), "delimiter"),  # ComfyUI core
}


def join_of(class_type: str) -> Join | None:
    return _JOINS.get(class_type)


def text_keys(class_type: str, slot: int) -> tuple[str, ...]:
    """The inputs, in order of preference, whose text a node puts out on output `slot`."""
    per_slot = _PER_SLOT.get(class_type)
    if per_slot is not None:
        return (per_slot[slot],) if 0 <= slot < len(per_slot) else ()
    return TEXT_KEYS


def aspect_preset(inputs: dict[str, Any]) -> tuple[int, int] | None:
    """The width and height an aspect-ratio preset names, before swapping; None for "custom"."""
    match = _PRESET.search(str(inputs.get("aspect_ratio", "")))
    return (int(match.group(1)), int(match.group(2))) if match else None


def swapped(inputs: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    return (size[1], size[0]) if inputs.get("swap_dimensions") in ("On", True) else size
