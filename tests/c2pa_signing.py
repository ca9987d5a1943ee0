"""Test images carrying C2PA content credentials, signed at test time with c2pa-python's Builder.

The certificates are made here with `cryptography` (ES256, P-256): a CA and a leaf that c2pa's certificate profile
accepts (not self-signed, KeyUsage digitalSignature critical, an EKU of emailProtection, CA:FALSE, authority and
subject key identifiers). No trust list knows the CA, so c2pa reports `signingCredential.untrusted`.
The manifests imitate those the generators write (public examples): OpenAI's ChatGPT, Adobe Firefly, Google.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

AI_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True)
class Generator:
    """What a generator's manifest says, and what provenance should make of it."""

    claim_generator: str
    version: str
    agent: str
    issuer: str  # the signing certificate's organisation
    label: str  # the expected friendly label


CHATGPT = Generator("ChatGPT", "1.0", "GPT-4o", "OpenAI", "ChatGPT (OpenAI)")
FIREFLY = Generator("Adobe Firefly", "3.0", "Adobe Firefly", "Adobe Inc.", "Adobe Firefly")
GEMINI = Generator("Google Media Processing Services", "1.0", "Gemini", "Google LLC", "Google Gemini")


def c2pa_module() -> Any:
    """c2pa-python, or a skip (a failure under CI=true, where the extra is installed)."""
    import os

    try:
        import c2pa
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("c2pa-python is not installed (CI=true: promptdex[c2pa] must be)")
        pytest.skip("c2pa-python is not installed")
    return c2pa


def _name(common: str, org: str) -> Any:
    from cryptography.x509 import Name, NameAttribute
    from cryptography.x509.oid import NameOID

    return Name([NameAttribute(NameOID.COMMON_NAME, common), NameAttribute(NameOID.ORGANIZATION_NAME, org)])


def _usage(*, sign: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not sign, crl_sign=not sign,
                         encipher_only=False, decipher_only=False)


def certificate_chain(org: str) -> tuple[bytes, bytes]:
    """(leaf + CA certificates as PEM, the leaf's PKCS#8 private key as PEM) for a signer of organisation `org`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("promptdex test root CA", "promptdex tests")

    def base(subject: Any, public: Any) -> Any:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))

    ca = (base(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_usage(sign=False), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (base(_name(f"{org} test signer", org), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(sign=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return leaf.public_bytes(pem) + ca.public_bytes(pem), private


def manifest(generator: Generator) -> dict[str, Any]:
    """A manifest shaped like the generator's: claim_generator_info, a c2pa.created action made by a model."""
    return {
        "claim_generator_info": [{"name": generator.claim_generator, "version": generator.version}],
        "title": "image",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": AI_SOURCE, "softwareAgent": {"name": generator.agent}},
        ]}}],
    }


def plain_image(fmt: str = "PNG", *, parameters: str | None = None, colour: tuple[int, int, int] = (200, 40, 40),
                size: tuple[int, int] = (32, 32)) -> bytes:
    """A small image's bytes (a PNG may carry A1111 `parameters` text)."""
    buffer = io.BytesIO()
    image = Image.new("RGB", size, colour)
    if fmt == "PNG" and parameters:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        image.save(buffer, fmt, pnginfo=info)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


def sign(source: bytes, generator: Generator, fmt: str = "PNG") -> bytes:
    """`source` with a C2PA manifest of `generator` embedded, signed by a fresh test chain."""
    c2pa = c2pa_module()
    chain, key = certificate_chain(generator.issuer)
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
    out = io.BytesIO()
    with signer, c2pa.Builder(manifest(generator)) as builder:
        builder.sign(signer, MIME[fmt], io.BytesIO(source), out)
    return out.getvalue()


def signed_file(path: Path, generator: Generator = CHATGPT, fmt: str = "PNG", **image: Any) -> Path:
    """Write a small signed image to `path` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sign(plain_image(fmt, **image), generator, fmt))
    return path
