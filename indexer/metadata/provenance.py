"""C2PA content credentials: who made a file (its claim generator), whether it says AI-generated, and if it verifies.

The manifest store is found in the container without the library (PNG `caBX` chunk, JPEG APP11 JUMBF segments,
WebP `C2PA` chunk) and read with c2pa-python (`pip install 'promptdex[c2pa]'`, import name `c2pa`) when it is
installed. Nothing here raises on bad input: a broken manifest gives None and a warning.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import struct
from typing import Any

logger = logging.getLogger(__name__)

NOT_INSTALLED = "c2pa-python is not installed (pip install 'promptdex[c2pa]')"
AI_SOURCE = "trainedAlgorithmicMedia"  # IPTC digital source type: made by a trained model
_PNG = b"\x89PNG\r\n\x1a\n"
# Verification settings: never fetch a remote manifest or an OCSP answer while importing a folder.
_READ_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
# Codes that say the signer is not on a trust list (expected without one), not that the manifest is broken.
_TRUST_CODES = ("signingCredential.untrusted", "signingCredential.ocsp")
# Known generators, most specific first: a pattern over the claim generator, software agents, issuer and signer.
_LABELS = [
    (r"chatgpt", "ChatGPT (OpenAI)"),
    (r"dall[-·.\s]?e", "DALL·E (OpenAI)"),
    (r"\bsora\b", "Sora (OpenAI)"),
    (r"openai|gpt-image|gpt-4o", "OpenAI"),
    (r"gemini|nano banana", "Google Gemini"),
    (r"\bimagen\b", "Google Imagen"),
    (r"firefly", "Adobe Firefly"),
    (r"microsoft designer", "Microsoft Designer"),
    (r"\bbing\b", "Bing Image Creator (Microsoft)"),
    (r"midjourney", "Midjourney"),
    (r"meta ai|imagine with meta", "Meta AI"),
    (r"stability ai|stable diffusion", "Stability AI"),
    (r"google", "Google"),
    (r"microsoft", "Microsoft"),
    (r"adobe", "Adobe"),
]


def embedded_manifest(data: bytes) -> tuple[str, str] | None:
    """(MIME type, where) of the C2PA manifest store embedded in a PNG, JPEG or WebP file's bytes, else None.

    Only the container is walked (no library, no pixels): a PNG `caBX` chunk, a JPEG APP11 segment holding a
    JUMBF `c2pa` box, a WebP `C2PA` chunk.
    """
    if data.startswith(_PNG):
        pos = len(_PNG)
        while pos + 8 <= len(data):
            length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
            if ctype == b"caBX":
                return "image/png", "PNG caBX chunk"
            if ctype == b"IEND":
                return None
            pos += 12 + length
        return None
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker in (0xD8, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:
                pos += 1 if marker == 0xFF else 2
                continue
            if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata segments
                return None
            end = pos + 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
            body = data[pos + 4:min(end, pos + 4 + 64)]
            if marker == 0xEB and body.startswith(b"JP") and b"jumb" in body and b"c2pa" in body:
                return "image/jpeg", "JPEG APP11 JUMBF segment"
            pos = end
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        pos, end = 12, min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
        while pos + 8 <= end:
            fourcc, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if fourcc == b"C2PA":
                return "image/webp", "WebP C2PA chunk"
            pos += 8 + size + (size & 1)
    return None


@functools.cache
def _library() -> Any | None:
    """The c2pa-python module, or None (not installed, or the unrelated 2021 `c2pa` project under its name)."""
    try:
        import c2pa
    except (ImportError, OSError) as exc:  # OSError: the package is there but its native library does not load
        logger.debug("c2pa-python unavailable: %s", exc)
        return None
    return c2pa if hasattr(c2pa, "Reader") else None


@functools.cache
def _context() -> Any | None:
    c2pa = _library()
    if c2pa is None or not hasattr(c2pa, "Context"):
        return None
    try:
        return c2pa.Context.from_dict(_READ_SETTINGS)
    except Exception as exc:  # noqa: BLE001 - an older library without these settings reads with its defaults
        logger.debug("c2pa: default settings (%s)", exc)
        return None


def read_provenance(data: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """The content credentials of a file's bytes as a small JSON-able dict (None when it has none), and warnings.

    A file with a manifest store but without c2pa-python, or with a manifest the library cannot parse (truncated,
    corrupt), gives None and a warning that says why.
    """
    found = embedded_manifest(data)
    if found is None:
        return None, []
    mime, where = found
    c2pa = _library()
    if c2pa is None:
        return None, [f"C2PA content credentials ({where}) not read: {NOT_INSTALLED}"]
    try:
        with c2pa.Reader(mime, io.BytesIO(data), context=_context()) as reader:  # None: the default settings
            store = json.loads(reader.json())
    except Exception as exc:  # noqa: BLE001 - the native reader raises many kinds; a bad file must never escape
        return None, [f"C2PA content credentials ({where}): the manifest cannot be read ({_reason(exc)})"]
    try:
        summary = summarise(store)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return None, [f"C2PA content credentials ({where}): unexpected manifest layout ({_reason(exc)})"]
    if summary is None:
        return None, [f"C2PA content credentials ({where}): the manifest store has no active manifest"]
    return summary, []


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def summarise(store: dict[str, Any]) -> dict[str, Any] | None:
    """The provenance summary of a manifest store as c2pa's Reader.json() gives it; None without an active manifest."""
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "")
    if not isinstance(active, dict):
        return None
    name, version = _claim_generator(active)
    agents, sources = _actions(active)
    signature = active.get("signature_info") or {}
    issuer, signer = _str(signature.get("issuer")), _str(signature.get("common_name"))
    problems = [str(s.get("code")) for s in store.get("validation_status") or [] if isinstance(s, dict)]
    state = _str(store.get("validation_state"))
    if state is None:  # older libraries: no state, only the problems
        state = "valid" if all(p.startswith(_TRUST_CODES) for p in problems) else "invalid"
    created = next((s for s in sources if s), None)
    return {
        "label": _label([name, _str(active.get("claim_generator")), *agents, issuer, signer]),
        "claim_generator": name, "claim_generator_version": version, "software_agent": agents[0] if agents else None,
        "ai_generated": AI_SOURCE in sources, "digital_source_type": created,
        "issuer": issuer, "signer": signer, "signed_at": _str(signature.get("time")),
        "validation": state.lower(), "validation_problems": problems,
        "manifest": _str(active.get("label")),
    }


def _str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _claim_generator(manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    """(name, version) from `claim_generator_info`, else from the User-Agent-like `claim_generator` string."""
    for info in manifest.get("claim_generator_info") or []:
        if isinstance(info, dict) and _str(info.get("name")):
            version = info.get("version")
            return _str(info["name"]), str(version) if version not in (None, "") else None
    text = _str(manifest.get("claim_generator"))
    if text is None:
        return None, None
    product, _, version = text.split()[0].partition("/")  # "ChatGPT c2pa-rs/0.28.4", "Adobe_Firefly/1.0 ..."
    return product.replace("_", " "), version or None


def _actions(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The software agents and the IPTC digital source types (short codes) of the manifest's actions."""
    agents: list[str] = []
    sources: list[str] = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            if not isinstance(action, dict):
                continue
            agent = action.get("softwareAgent")
            agent = agent.get("name") if isinstance(agent, dict) else agent
            if _str(agent) and agent not in agents:
                agents.append(str(agent).strip())
            source = _str(action.get("digitalSourceType"))
            if source:
                sources.append(source.rstrip("/").rsplit("/", 1)[-1])
    return agents, sources


def _label(fields: list[str | None]) -> str | None:
    """The friendly name of a known generator, from the manifest's names; None for others."""
    text = " ".join(f for f in fields if f).lower()
    return next((label for pattern, label in _LABELS if re.search(pattern, text)), None)
