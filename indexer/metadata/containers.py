"""Image containers: text metadata of PNG, JPEG and WebP files, and A1111 "stealth" info hidden in pixel LSBs."""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path
from typing import Any

from PIL import Image

from indexer.images import pillow_error
from promptdex.params import looks_like_a1111

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"
# EXIF tags where front ends put text (ComfyUI save nodes put JSON in ImageDescription, Make and Model).
_EXIF_TEXT_TAGS = {270: "ImageDescription", 271: "Make", 272: "Model", 305: "Software", 315: "Artist",
                   0x9C9C: "XPComment", 0x9286: "UserComment"}
_EXIF_IFD = 0x8769
# A1111 stealth signatures: which plane carries the bits, and whether the payload is gzip-compressed.
_STEALTH = {b"stealth_pnginfo": ("alpha", False), b"stealth_pngcomp": ("alpha", True),
            b"stealth_rgbinfo": ("rgb", False), b"stealth_rgbcomp": ("rgb", True)}
_LSB_DIGITS = bytes(0x30 | (i & 1) for i in range(256))  # sample byte -> b"0" or b"1"


class MetadataError(ValueError):
    """An image file whose metadata cannot be read: empty, truncated, corrupt or not PNG/JPEG/WebP."""


class _Bad(Exception):
    """A problem inside a container; read_text_chunks adds the file name and raises MetadataError."""


def read_text_chunks(path: str | Path, *, data: bytes | None = None) -> dict[str, str]:
    """The text metadata of a PNG, JPEG or WebP file, read from its container without decoding pixels.

    PNG tEXt/zTXt/iTXt chunks (also those after IDAT) keep their keywords. EXIF text tags keep their tag
    names ("ImageDescription", "Make", "XPComment", ...), except a UserComment that holds A1111 text, which
    is returned as "parameters" like the PNG chunk. XMP packets come as "XMP", JPEG comments as "Comment".
    Raises MetadataError for an empty, truncated or corrupt file. `data`: the file's bytes when they are in memory
    already (an archive member), `path` then only names it in messages.
    """
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise MetadataError(f"{path}: cannot read the file: {e.strerror or e}") from e
    if not data:
        raise MetadataError(f"{path}: empty file (0 bytes)")
    out: dict[str, str] = {}
    try:
        if data.startswith(_PNG_SIGNATURE):
            _read_png(data, out)
        elif data.startswith(b"\xff\xd8"):
            _read_jpeg(data, out)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            _read_webp(data, out)
        else:
            raise _Bad(f"not a PNG, JPEG or WebP file (it starts with {data[:8]!r})")
    except _Bad as e:
        raise MetadataError(f"{path}: {e}") from None
    return out


def _put(out: dict[str, str], key: str, value: str) -> None:
    if key in out:
        logger.debug("metadata key %r appears again; keeping the first", key)
    else:
        out[key] = value


def _text(raw: bytes) -> str:
    """Chunk text: UTF-8 when it decodes (front ends write UTF-8 even in tEXt), else Latin-1 as PNG says."""
    try:
        return raw.decode("utf-8").rstrip("\x00")
    except UnicodeDecodeError:
        return raw.decode("latin-1").rstrip("\x00")


def _inflate(raw: bytes, what: str) -> bytes:
    try:
        return zlib.decompress(raw)
    except zlib.error as e:
        raise _Bad(f"corrupt {what}: its compressed text does not decompress ({e})") from None


def _read_png(data: bytes, out: dict[str, str]) -> None:
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        name = ctype.decode("latin-1")
        end = pos + 12 + length
        if end > len(data):
            raise _Bad(f"truncated PNG: chunk {name!r} at byte {pos} needs {end - pos} bytes, "
                       f"the file ends {len(data) - pos} bytes after its start")
        if zlib.crc32(data[pos + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            raise _Bad(f"corrupt PNG: CRC mismatch in chunk {name!r} at byte {pos}")
        body = data[pos + 8:end - 4]
        if ctype == b"IEND":
            return
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, _, rest = body.partition(b"\x00")
            key = keyword.decode("latin-1")
            if ctype == b"tEXt":
                _put(out, key, _text(rest))
            elif ctype == b"zTXt":
                _put(out, key, _text(_inflate(rest[1:], f"PNG zTXt {key!r}")))
            else:
                flag, rest = rest[:1], rest[2:]
                _lang, _, rest = rest.partition(b"\x00")
                _translated, _, rest = rest.partition(b"\x00")
                _put(out, key, _text(_inflate(rest, f"PNG iTXt {key!r}") if flag == b"\x01" else rest))
        elif ctype == b"eXIf":
            _read_exif(body, out)
        pos = end
    raise _Bad(f"truncated PNG: the file ends at byte {len(data)} before the IEND chunk")


def _read_jpeg(data: bytes, out: dict[str, str]) -> None:
    pos = 2
    while True:
        if pos + 2 > len(data):
            raise _Bad(f"truncated JPEG: the file ends at byte {len(data)} among the header segments")
        if data[pos] != 0xFF:
            raise _Bad(f"corrupt JPEG: expected a segment marker at byte {pos}, found 0x{data[pos]:02x}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xD9:
            return
        if pos + 4 > len(data):
            raise _Bad(f"truncated JPEG: segment 0x{marker:02x} at byte {pos} is cut off")
        seg_end = pos + 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if seg_end > len(data) or seg_end < pos + 4:
            raise _Bad(f"truncated JPEG: segment 0x{marker:02x} at byte {pos} runs past the end of the file")
        body = data[pos + 4:seg_end]
        if marker == 0xDA:  # start of scan: metadata segments are behind us
            if data.find(b"\xff\xd9", seg_end) < 0:
                raise _Bad("truncated JPEG: no end-of-image marker after the image data")
            return
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            _read_exif(body[6:], out)
        elif marker == 0xE1 and body.startswith(_XMP_JPEG):
            _put(out, "XMP", _text(body[len(_XMP_JPEG):]))
        elif marker == 0xFE:
            _put(out, "Comment", _text(body))
        pos = seg_end


def _read_webp(data: bytes, out: dict[str, str]) -> None:
    end = 8 + struct.unpack("<I", data[4:8])[0]
    if end > len(data):
        raise _Bad(f"truncated WebP: its RIFF header says {end} bytes, the file has {len(data)}")
    pos = 12
    while pos < end:
        if pos + 8 > end:
            raise _Bad(f"corrupt WebP: chunk header at byte {pos} is cut off")
        fourcc, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body_end = pos + 8 + size
        if body_end > end:
            raise _Bad(f"truncated WebP: chunk {fourcc.decode('latin-1')!r} at byte {pos} runs past the end")
        body = data[pos + 8:body_end]
        if fourcc == b"EXIF":
            _read_exif(body[6:] if body.startswith(b"Exif\x00\x00") else body, out)
        elif fourcc == b"XMP ":
            _put(out, "XMP", _text(body))
        pos = body_end + (size & 1)


def _read_exif(tiff: bytes, out: dict[str, str]) -> None:
    try:
        exif = Image.Exif()
        exif.load(tiff)
        ifds: list[dict[int, Any]] = [dict(exif), dict(exif.get_ifd(_EXIF_IFD))]
    except Exception as e:  # Pillow raises many kinds on malformed TIFF data; none may escape bare
        raise _Bad(f"corrupt EXIF: {pillow_error(e)}") from None
    big_endian = tiff[:2] == b"MM"
    for tags in ifds:
        for tag, name in _EXIF_TEXT_TAGS.items():
            value = tags.get(tag)
            if value is None:
                continue
            if tag == 0x9286:
                text = _user_comment(value, big_endian)
                key = "parameters" if "parameters" not in out and looks_like_a1111(text) else name
            elif tag == 0x9C9C:
                text = _bytes(value).decode("utf-16-le", errors="replace").rstrip("\x00")
                key = name
            else:
                text, key = _exif_string(value), name
            if text:
                _put(out, key, text)


def _bytes(value: Any) -> bytes:
    return bytes(value) if isinstance(value, (bytes, bytearray, tuple, list)) else str(value).encode()


def _exif_string(value: Any) -> str:
    """An EXIF ASCII value; Pillow reads its bytes as Latin-1, front ends write UTF-8."""
    if not isinstance(value, str):
        return _text(_bytes(value))
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _user_comment(value: Any, big_endian: bool) -> str:
    """EXIF UserComment: an 8-byte charset prefix (UNICODE, ASCII, JIS or none) then the text."""
    if isinstance(value, str):
        return _exif_string(value)
    raw = _bytes(value)
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        return _utf16(body, big_endian).rstrip("\x00")
    if prefix == b"JIS\x00\x00\x00\x00\x00":
        return body.decode("shift_jis", errors="replace").rstrip("\x00")
    if prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        return _text(body)
    return _text(raw)


def _utf16(body: bytes, big_endian: bool) -> str:
    """UTF-16 of either byte order: A1111 (piexif) writes big-endian, SwarmUI little-endian."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", errors="replace")
    even_zeros, odd_zeros = body[0::2].count(0), body[1::2].count(0)
    if even_zeros == odd_zeros == 0:
        try:
            return body.decode("utf-8")  # a writer that labelled UTF-8 as UNICODE
        except UnicodeDecodeError:
            pass
    be = even_zeros > odd_zeros if even_zeros != odd_zeros else big_endian
    return body.decode("utf-16-be" if be else "utf-16-le", errors="replace")


def read_stealth_a1111(image: Image.Image | str | Path) -> str | None:
    """A1111 "stealth" parameters hidden in the LSBs of the alpha channel or of RGB, else None.

    Bits run column by column (x outer, y inner): a 15-byte signature (stealth_pnginfo / stealth_pngcomp in
    alpha, stealth_rgbinfo / stealth_rgbcomp in RGB), a 32-bit payload length in bits, then the payload,
    gzip-compressed for the *comp signatures. Decoding pixels is unavoidable here.
    """
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()
                im = opened.copy()
        except Exception as e:  # Pillow: UnidentifiedImageError, OSError (truncated), DecompressionBombError
            raise MetadataError(f"{image}: cannot decode the pixels: {pillow_error(e)}") from None
        name = str(image)
    else:
        im, name = image, str(getattr(image, "filename", "") or "image")
    planes: list[tuple[str, Image.Image, int]] = []
    if "A" in im.getbands():
        planes.append(("alpha", im.getchannel("A"), 1))
    planes.append(("rgb", im if im.mode == "RGB" else im.convert("RGB"), 3))
    for plane, pixels, per_pixel in planes:
        header = _lsb_bytes(pixels, 152, per_pixel)
        if header is None or _STEALTH.get(header[:15], ("", False))[0] != plane:
            continue
        compressed = _STEALTH[header[:15]][1]
        nbits = int.from_bytes(header[15:19], "big")
        data = _lsb_bytes(pixels, 152 + nbits, per_pixel)
        if data is None:
            raise MetadataError(f"{name}: stealth {plane} data claims {nbits} bits, more than the image holds")
        payload = data[19:]
        if compressed:
            try:
                payload = gzip.decompress(payload)
            except (OSError, EOFError, zlib.error) as e:
                raise MetadataError(f"{name}: stealth {plane} data does not decompress: {e}") from None
        return payload.decode("utf-8", errors="replace")
    return None


def _lsb_bytes(pixels: Image.Image, nbits: int, per_pixel: int) -> bytes | None:
    """The first `nbits` LSBs of `pixels` in column-major order, packed big-endian; None if too few."""
    width, height = pixels.size
    npix = -(-nbits // per_pixel)
    if npix > width * height or nbits < 8:
        return None
    columns = pixels.crop((0, 0, -(-npix // height), height)).transpose(Image.Transpose.TRANSPOSE)
    digits = columns.tobytes()[: nbits - nbits % 8].translate(_LSB_DIGITS)
    return int(digits, 2).to_bytes(len(digits) // 8, "big")
