"""A1111-style text read from the shared fixture files matches the upstream parsers' own expectations."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from indexer.metadata.containers import MetadataError, read_stealth_a1111, read_text_chunks
from promptdex.params import GenerationParams, detect_software, looks_like_a1111, parse_a1111
from tests.conftest import SHARED_FIXTURES, require_shared_fixtures

# sd-metadata samples beyond a1111.test.ts whose files carry A1111 text: ComfyUI save nodes that write it
# (upstream reports them as sd-webui) and Stability Matrix (A1111 text next to its own JSON chunks).
A1111_TEXT_SAMPLES = {
    "webp/comfyui-saveimagewithmetadata.webp", "jpg/comfyui-saveimagewithmetadata.jpeg",
    "webp/comfyui-comfy-image-saver.webp", "jpg/comfyui-comfy-image-saver.jpeg", "png/stability-matrix.png",
}
# Fields upstream takes from other chunks of the file than its A1111 text: Stability Matrix's ComfyUI graph
# gives "euler_ancestral"/"karras" and clip skip 2, while its A1111 text says "Sampler: Euler Ancestral
# Karras" and has no "Clip skip"; "nodes" is the graph itself.
NOT_IN_A1111_TEXT = {
    "png/stability-matrix.png": ("sampling.sampler", "sampling.scheduler", "sampling.clipSkip", "nodes"),
}
# Upstream takes these prompts from Stability Matrix's parameters-json, which keeps a trailing CRLF; the A1111
# text form cannot carry whitespace around a prompt (A1111 itself strips it), so we compare stripped values.
STRIPPED_PROMPTS = {"png/stability-matrix.png": ("prompt", "negativePrompt")}
SD_PARSERS_A1111 = [
    "parsers/AUTOMATIC1111/automatic1111_cropped.png",
    "parsers/AUTOMATIC1111/automatic1111_cropped.jpg",
    "parsers/AUTOMATIC1111/automatic1111_stealth.png",
]
SOFTWARE_NAMES = {"AUTOMATIC1111": "sd-webui"}  # sd-parsers' generator names -> sd-metadata's


def fixtures() -> Path:
    return require_shared_fixtures()


def expected(project: str) -> dict[str, Any]:
    return json.loads((fixtures() / project / "expected.json").read_text(encoding="utf-8"))


def sd_metadata_cases(a1111: bool) -> list[Any]:
    if not SHARED_FIXTURES.is_dir():
        return [pytest.param(None, id="fixtures-missing")]
    return [
        pytest.param(e, id=e["file"]) for e in expected("sd-metadata")["expectations"]
        if (e["test_file"] == "a1111.test.ts" or e["file"] in A1111_TEXT_SAMPLES) == a1111
    ]


def drop_none(value: Any) -> Any:
    """vitest's toEqual treats undefined properties as absent: drop None and emptied objects."""
    if isinstance(value, dict):
        kept = {k: drop_none(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    return value


def sd_metadata_shape(p: GenerationParams, software: str) -> dict[str, Any]:
    """Our parameters in sd-metadata's result shape.

    Its rule, from the data: `hires` is a second sampling pass (A1111's Hires keys and Denoising strength;
    civitai-hires.jpg's second KSampler), `upscale` an upscale without sampling (civitai-upscale.jpg; in A1111
    text the extras tab's "Postprocess ..." keys, which we keep in `extra`).
    """
    h, by = p.hires, p.extra.get("Postprocess upscale by")
    return {
        "software": software, "prompt": p.prompt, "negativePrompt": p.negative_prompt,
        "width": p.width, "height": p.height, "model": {"name": p.model, "hash": p.model_hash},
        "sampling": {"sampler": p.sampler, "scheduler": p.scheduler, "steps": p.steps, "cfg": p.cfg,
                     "seed": p.seed, "clipSkip": p.clip_skip},
        "hires": None if h is None else {"scale": h.upscale, "upscaler": h.upscaler, "steps": h.steps,
                                         "denoise": h.denoising_strength},
        "upscale": {"upscaler": p.extra.get("Postprocess upscaler"), "scale": float(by) if by else None},
    }


@pytest.mark.parametrize("case", sd_metadata_cases(a1111=True))
def test_sd_metadata_sample_with_a1111_text(case: dict[str, Any]) -> None:
    chunks = read_text_chunks(fixtures() / "sd-metadata" / case["file"])
    text = chunks["parameters"]
    want = json.loads(json.dumps(case["expected"]))
    got = sd_metadata_shape(parse_a1111(text), detect_software(text, chunks))
    for dotted in NOT_IN_A1111_TEXT.get(case["file"], ()):
        for shape in (want, got):
            *parents, leaf = dotted.split(".")
            for part in parents:
                shape = shape[part]
            shape.pop(leaf, None)
    for field in STRIPPED_PROMPTS.get(case["file"], ()):
        want[field] = want[field].strip()
    assert drop_none(got) == drop_none(want)


@pytest.mark.parametrize("case", sd_metadata_cases(a1111=False))
def test_other_sd_metadata_samples_carry_no_a1111_text(case: dict[str, Any]) -> None:
    """The samples left out above (ComfyUI graphs, JSON formats, NovelAI, empty) really hold no A1111 text."""
    chunks = read_text_chunks(fixtures() / "sd-metadata" / case["file"])
    assert not any(looks_like_a1111(v) for v in chunks.values())


def sd_parsers_entry(name: str) -> dict[str, Any]:
    spec = expected("sd-parsers")
    entry = spec[name]
    return {**spec[entry["same_expectation_as"]], **entry} if "same_expectation_as" in entry else entry


def assert_sd_parsers_expectation(p: GenerationParams, sampler: dict[str, Any], metadata: dict[str, Any]) -> None:
    assert p.sampler == sampler["name"]
    as_ours = {"steps": ("steps", int), "cfg_scale": ("cfg", float), "seed": ("seed", int),
               "scheduler": ("scheduler", str)}
    for key, value in sampler["parameters"].items():
        field, kind = as_ours[key]
        assert getattr(p, field) == kind(value), key
    assert (p.model, p.model_hash) == (sampler["model"]["name"], sampler["model"]["hash"])
    assert [p.prompt] == sampler["prompts"] and [p.negative_prompt] == sampler["negative_prompts"]
    mapped = {"Size": f"{p.width}x{p.height}", "Clip skip": str(p.clip_skip), "Version": p.version,
              "Model": p.model, "Model hash": p.model_hash}
    for key, value in metadata.items():
        ours = mapped[key] if key in mapped else p.extra[key]
        assert ours is not None, key
        assert (json.loads(ours) if isinstance(value, dict | list) else ours) == value, key
    assert set(p.extra) == set(metadata) - set(mapped)


@pytest.mark.parametrize("name", SD_PARSERS_A1111)
def test_sd_parsers_automatic1111_file(name: str) -> None:
    entry = sd_parsers_entry(name)
    path = fixtures() / "sd-parsers" / name
    chunks = read_text_chunks(path)
    if "stealth" in entry["container"]:
        assert "parameters" not in chunks
        text = read_stealth_a1111(path)
        assert text is not None
    else:
        text = chunks["parameters"]
    [sampler] = entry["samplers"]
    assert_sd_parsers_expectation(parse_a1111(text), sampler, entry["metadata"])
    assert detect_software(text, chunks) == SOFTWARE_NAMES[entry["generator"]]


def test_sd_parsers_a1111_infotext_unit_test() -> None:
    case = expected("sd-parsers")["_a1111_infotext_unit_test"]
    text = case["input"]
    assert text.split("\n")[case["info_line_index"]] == text.split("\n")[-1]  # the settings line is the last
    p = parse_a1111(text)
    info = case["sampler_info"]
    assert (p.sampler, p.steps, p.cfg, p.seed) == (
        info["Sampler"], int(info["Steps"]), float(info["CFG scale"]), int(info["Seed"]))
    assert p.model == case["metadata"]["Model"] and p.model_hash == case["metadata"]["Model hash"]
    assert f"{p.width}x{p.height}" == case["metadata"]["Size"]
    assert json.loads(p.extra["Hashes"]) == case["metadata"]["Hashes"] and list(p.extra) == ["Hashes"]


def test_text_chunks_after_idat_are_found() -> None:
    chunks = read_text_chunks(fixtures() / "sd-parsers" / "bad_images" / "text_after_idat.png")
    assert parse_a1111(chunks["parameters"]).prompt == "photo of a duck"


def test_empty_file_raises_and_images_without_metadata_have_none() -> None:
    bad = fixtures() / "sd-parsers" / "bad_images"
    with pytest.raises(MetadataError, match="empty_file.png: empty file"):
        read_text_chunks(bad / "empty_file.png")
    for name in ("empty_image.png", "empty_image.jpg"):
        assert "parameters" not in read_text_chunks(bad / name)
        assert read_stealth_a1111(bad / name) is None


@pytest.mark.parametrize(("sample", "cut", "problem"), [
    ("png/sd-webui.png", 0.5, "truncated PNG"),
    ("png/sd-webui.png", -12, "truncated PNG: the file ends"),  # only IEND lost
    ("jpg/sd-webui.jpg", 0.5, "truncated JPEG: no end-of-image"),
    ("jpg/sd-webui.jpg", 100, "truncated JPEG: segment"),
    ("webp/sd-webui.webp", 0.5, "truncated WebP"),
])
def test_truncated_files_raise_metadata_error(tmp_path: Path, sample: str, cut: float, problem: str) -> None:
    data = (fixtures() / "sd-metadata" / sample).read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else cut
    path = tmp_path / Path(sample).name
    path.write_bytes(data[:end])
    with pytest.raises(MetadataError, match=problem) as info:
        read_text_chunks(path)
    assert str(path) in str(info.value)


def test_corrupt_chunk_and_unknown_format_raise_metadata_error(tmp_path: Path) -> None:
    data = bytearray((fixtures() / "sd-metadata" / "png" / "sd-webui.png").read_bytes())
    data[data.index(b"Steps")] ^= 0x20
    (tmp_path / "crc.png").write_bytes(data)
    with pytest.raises(MetadataError, match="CRC mismatch in chunk 'iTXt'"):
        read_text_chunks(tmp_path / "crc.png")
    (tmp_path / "note.png").write_bytes(b"hello, world")
    with pytest.raises(MetadataError, match="not a PNG, JPEG or WebP"):
        read_text_chunks(tmp_path / "note.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00XX\x00*junkjunk\xff\xd9")
    with pytest.raises(MetadataError, match="corrupt EXIF"):
        read_text_chunks(tmp_path / "bad.jpg")


A1111 = "a cat, テスト\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 8x8"


def test_png_compressed_itxt_and_ztxt(tmp_path: Path) -> None:
    info = PngInfo()
    info.add_itxt("parameters", A1111, zip=True)
    info.add_text("comment", "packed", zip=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=info)
    assert read_text_chunks(tmp_path / "a.png") == {"parameters": A1111, "comment": "packed"}


@pytest.mark.parametrize(("fmt", "comment"), [
    ("JPEG", b"UNICODE\x00" + A1111.encode("utf-16-be")),  # A1111 (piexif) writes big-endian
    ("JPEG", b"UNICODE\x00" + A1111.encode("utf-16-le")),  # SwarmUI: little-endian in a big-endian TIFF
    ("JPEG", b"ASCII\x00\x00\x00" + A1111.encode()),
    ("WEBP", A1111.encode()),  # no charset prefix
])
def test_exif_user_comment_charsets_and_other_text_tags(tmp_path: Path, fmt: str, comment: bytes) -> None:
    exif = Image.Exif()
    exif[270] = 'Workflow: {"nodes": []}'
    exif[0x9C9C] = "a note".encode("utf-16-le") + b"\x00\x00"
    exif.get_ifd(0x8769)[0x9286] = comment
    path = tmp_path / f"a.{fmt.lower()}"
    extra = {"xmp": b"<x:xmpmeta>hi</x:xmpmeta>"} if fmt == "WEBP" else {}
    Image.new("RGB", (8, 8)).save(path, fmt, exif=exif, **extra)
    chunks = read_text_chunks(path)
    assert chunks["parameters"] == A1111
    assert chunks["ImageDescription"] == 'Workflow: {"nodes": []}' and chunks["XPComment"] == "a note"
    if fmt == "WEBP":
        assert chunks["XMP"] == "<x:xmpmeta>hi</x:xmpmeta>"


def test_json_user_comment_keeps_its_tag_name(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + '{"sui_image_params": {}}'.encode("utf-16-le")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg", exif=exif)
    assert read_text_chunks(tmp_path / "a.jpg") == {"UserComment": '{"sui_image_params": {}}'}


def embed_stealth(im: Image.Image, signature: bytes, payload: bytes) -> Image.Image:
    """Hide `payload` as A1111's stealth-pnginfo extension does: column-major LSBs of alpha or of RGB."""
    bits = "".join(f"{b:08b}" for b in signature + (len(payload) * 8).to_bytes(4, "big") + payload)
    bands = (0, 1, 2) if b"rgb" in signature else (3,)
    px, (w, h), i = im.load(), im.size, 0
    assert px is not None
    for x in range(w):
        for y in range(h):
            pixel = list(cast(tuple[int, ...], px[x, y]))
            for band in bands:
                if i < len(bits):
                    pixel[band] = (pixel[band] & ~1) | int(bits[i])
                    i += 1
            px[x, y] = tuple(pixel)
    assert i == len(bits), "image too small for the payload"
    return im


@pytest.mark.parametrize(("signature", "mode"), [
    (b"stealth_pnginfo", "RGBA"), (b"stealth_pngcomp", "RGBA"),
    (b"stealth_rgbinfo", "RGB"), (b"stealth_rgbcomp", "RGBA"),
])
def test_stealth_signatures(tmp_path: Path, signature: bytes, mode: str) -> None:
    payload = gzip.compress(A1111.encode()) if signature.endswith(b"comp") else A1111.encode()
    im = embed_stealth(Image.new(mode, (40, 30), (200, 100, 50, 255)[: len(mode)]), signature, payload)
    im.save(tmp_path / "s.png")
    assert read_stealth_a1111(tmp_path / "s.png") == A1111
    assert read_stealth_a1111(im) == A1111


def test_stealth_absent_or_overlong(tmp_path: Path) -> None:
    assert read_stealth_a1111(Image.new("RGBA", (64, 64), (1, 2, 3, 255))) is None
    im = embed_stealth(Image.new("RGBA", (20, 20)), b"stealth_pnginfo", b"x")
    px, bit = im.load(), 15 * 8 + 7  # a high bit of the 32-bit length: 1 << 24 more bits than 400 pixels hold
    assert px is not None
    px[bit // 20, bit % 20] = (0, 0, 0, 1)
    with pytest.raises(MetadataError, match="claims"):
        read_stealth_a1111(im)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:-40])
    with pytest.raises(MetadataError, match="cut.png: cannot decode the pixels"):
        read_stealth_a1111(tmp_path / "cut.png")
