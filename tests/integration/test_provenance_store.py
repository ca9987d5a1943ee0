"""C2PA content credentials through the corpus: imported with the file, stored, returned by the image detail API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from indexer.importer import import_paths
from tests.c2pa_signing import CHATGPT, GEMINI, plain_image, signed_file

pytestmark = pytest.mark.integration


def test_imported_credentials_are_in_the_image_detail(settings: Any, conn: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from promptdex.settings import get_settings
    from search_api.app import create_app

    folder = tmp_path / "pics"
    text = "a lighthouse at dusk\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 32x32"
    signed_file(folder / "chatgpt.png", CHATGPT, parameters=text)
    signed_file(folder / "gemini.jpg", GEMINI, "JPEG", colour=(10, 120, 10))
    (folder / "plain.png").write_bytes(plain_image("PNG", colour=(0, 0, 200)))
    summary = import_paths(conn, settings, [folder], progress=False)
    assert summary.imported == 3 and not summary.errors and not summary.warnings, summary.to_json()
    ids = {Path(r["path"]).name: r["id"] for r in conn.execute("SELECT id, path FROM images").fetchall()}
    stored = conn.execute("SELECT provenance FROM images WHERE id = %s", (ids["gemini.jpg"],)).fetchone()
    assert stored["provenance"]["label"] == GEMINI.label
    api = get_settings(data_dir=settings.data_dir, database_url=settings.database_url, models="tiny",
                       api={"rate_burst": 10_000, "rate_sustained": 100_000})
    with TestClient(create_app(api), base_url="http://localhost") as client:
        detail = client.get(f"/api/images/{ids['chatgpt.png']}").json()
        assert detail["seed"] == 42
        credentials = detail["provenance"]
        assert (credentials["label"], credentials["claim_generator"], credentials["issuer"]) == (
            CHATGPT.label, CHATGPT.claim_generator, CHATGPT.issuer)
        assert credentials["ai_generated"] is True and credentials["validation"] == "valid"
        assert "signingCredential.untrusted" in credentials["validation_problems"]
        assert client.get(f"/api/images/{ids['gemini.jpg']}").json()["provenance"]["label"] == GEMINI.label
        assert client.get(f"/api/images/{ids['plain.png']}").json()["provenance"] is None
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "provenance" in schema["ImageDetail"]["properties"]
        assert {"label", "claim_generator", "ai_generated", "validation"} <= set(schema["ContentCredentials"]
                                                                                 ["properties"])
