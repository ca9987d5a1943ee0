"""C2PA content credentials as provenance: signed test images in, the claim generator, label and validation out."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from indexer.metadata import provenance
from indexer.metadata.provenance import embedded_manifest, read_provenance, summarise
from indexer.metadata.reader import read_metadata
from tests.c2pa_signing import CHATGPT, FIREFLY, GEMINI, Generator, c2pa_module, plain_image, sign

UNTRUSTED = "signingCredential.untrusted"  # the test CA is on no trust list


def _chunks(png: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, body) of each PNG chunk."""
    out, pos = [], 8
    while pos < len(png):
        length, ctype = struct.unpack(">I4s", png[pos:pos + 8])
        out.append((pos, ctype, png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _replace_chunk(png: bytes, ctype: bytes, body: bytes) -> bytes:
    """`png` with its `ctype` chunk's body replaced (a valid CRC: only the payload is wrong)."""
    pos, _, old = next(c for c in _chunks(png) if c[1] == ctype)
    chunk = struct.pack(">I4s", len(body), ctype) + body + struct.pack(">I", zlib.crc32(ctype + body))
    return png[:pos] + chunk + png[pos + 12 + len(old):]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("generator", [CHATGPT, FIREFLY, GEMINI], ids=lambda g: g.label)
def test_signed_images_name_their_generator(generator: Generator, fmt: str) -> None:
    found, warnings = read_provenance(sign(plain_image(fmt), generator, fmt))
    assert warnings == []
    assert found is not None
    assert found["label"] == generator.label
    assert (found["claim_generator"], found["claim_generator_version"]) == (generator.claim_generator,
                                                                             generator.version)
    assert found["software_agent"] == generator.agent
    assert found["ai_generated"] is True and found["digital_source_type"] == "trainedAlgorithmicMedia"
    assert found["issuer"] == generator.issuer
    assert found["validation"] == "valid" and UNTRUSTED in found["validation_problems"]
    assert found["manifest"]


def test_webp_credentials_are_read() -> None:
    found, warnings = read_provenance(sign(plain_image("WEBP"), CHATGPT, "WEBP"))
    assert warnings == [] and found is not None and found["label"] == CHATGPT.label


@pytest.mark.parametrize("fmt, where", [("PNG", "PNG caBX chunk"), ("JPEG", "JPEG APP11 JUMBF segment"),
                                        ("WEBP", "WebP C2PA chunk")])
def test_the_manifest_store_is_found_without_the_library(fmt: str, where: str) -> None:
    assert embedded_manifest(plain_image(fmt)) is None
    found = embedded_manifest(sign(plain_image(fmt), CHATGPT, fmt))
    assert found is not None and found[1] == where


def test_a_file_without_credentials_has_none(tmp_path: Path) -> None:
    assert read_provenance(plain_image("PNG")) == (None, [])
    path = tmp_path / "plain.png"
    path.write_bytes(plain_image("PNG", parameters="a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1"))
    result = read_metadata(path)
    assert result.provenance is None and result.to_json()["provenance"] is None
    assert result.warnings == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "zeroed"])
def test_a_broken_manifest_gives_none_and_a_warning(damage: str, tmp_path: Path) -> None:
    signed = sign(plain_image("PNG"), CHATGPT)
    body = next(c[2] for c in _chunks(signed) if c[1] == b"caBX")
    broken = {"truncated": body[:200], "garbage": b"not a JUMBF box at all",
              "zeroed": body[:100] + bytes(64) + body[164:]}[damage]
    data = _replace_chunk(signed, b"caBX", broken)
    found, warnings = read_provenance(data)
    assert found is None
    assert len(warnings) == 1 and "PNG caBX chunk" in warnings[0] and "cannot be read" in warnings[0]
    path = tmp_path / "broken.png"
    path.write_bytes(data)
    result = read_metadata(path)
    assert result.error is None and result.provenance is None and warnings[0] in result.warnings


def test_changed_pixels_fail_validation() -> None:
    signed = sign(plain_image("PNG"), FIREFLY)
    idat = next(c[2] for c in _chunks(signed) if c[1] == b"IDAT")
    other = next(c[2] for c in _chunks(plain_image("PNG", colour=(0, 0, 255))) if c[1] == b"IDAT")
    assert other != idat
    found, warnings = read_provenance(_replace_chunk(signed, b"IDAT", other))
    assert warnings == [] and found is not None
    assert found["validation"] == "invalid" and any("mismatch" in p for p in found["validation_problems"])


def test_credentials_and_generation_parameters_are_both_read(tmp_path: Path) -> None:
    text = "a lighthouse at dusk\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42"
    path = tmp_path / "both.png"
    path.write_bytes(sign(plain_image("PNG", parameters=text), CHATGPT))
    result = read_metadata(path)
    assert result.software == "sd-webui" and result.params.seed == 42
    assert result.provenance is not None and result.provenance["label"] == CHATGPT.label
    data_result = read_metadata("member.png", data=path.read_bytes())
    assert data_result.provenance == result.provenance


def test_credentials_alone_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "only.jpg"
    path.write_bytes(sign(plain_image("JPEG"), GEMINI, "JPEG"))
    item = read_metadata(path).to_json()
    assert item["software"] == "none" and item["provenance"]["label"] == GEMINI.label


def test_without_the_library_a_warning_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = sign(plain_image("PNG"), CHATGPT)
    monkeypatch.setattr(provenance, "_library", lambda: None)
    found, warnings = read_provenance(signed)
    assert found is None and len(warnings) == 1 and "c2pa-python is not installed" in warnings[0]
    assert read_provenance(plain_image("PNG")) == (None, [])  # no C2PA chunk: nothing to say


def test_legacy_claim_generator_string_and_labels() -> None:
    store = {"active_manifest": "m", "manifests": {"m": {
        "claim_generator": "Adobe_Firefly/1.0 adobe_c2pa/0.7.6 c2pa-rs/0.25.2", "label": "m",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created"}]}}],
        "signature_info": {"issuer": "Adobe Inc.", "time": "2024-01-02T03:04:05+00:00"}}},
        "validation_status": [{"code": UNTRUSTED}]}
    found = summarise(store)
    assert found is not None
    assert (found["claim_generator"], found["claim_generator_version"], found["label"]) == ("Adobe Firefly", "1.0",
                                                                                           "Adobe Firefly")
    assert found["ai_generated"] is False and found["signed_at"] == "2024-01-02T03:04:05+00:00"
    assert found["validation"] == "valid"  # only a trust problem, and no state from an older library
    assert summarise({"manifests": {}}) is None
    openai_api = {"active_manifest": "m", "manifests": {"m": {"claim_generator": "OpenAI-API c2pa-rs/0.28.4"}}}
    assert (summarise(openai_api) or {})["label"] == "OpenAI"


def test_the_library_is_c2pa_python() -> None:
    c2pa = c2pa_module()
    assert hasattr(c2pa, "Reader") and hasattr(c2pa, "Builder")  # not the unrelated 2021 `c2pa` project
