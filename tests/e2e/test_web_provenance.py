"""The detail view's "Content credentials" line (headless Chromium), on a corpus of its own with a signed PNG."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.c2pa_signing import CHATGPT, signed_file
from tests.e2e.test_web import (
    DESKTOP,
    UNLIMITED_RATES,
    Served,
    Web,
    _cli,
    _new_web,
    chromium,  # noqa: F401  (the browser fixture)
    corpus_env,
    serve,
)

pytestmark = pytest.mark.e2e

PROMPT = "a lighthouse at dusk, made by a chat assistant"


@pytest.fixture(scope="module")
def signed_site(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, int]]:
    root = tmp_path_factory.mktemp("web-provenance")
    text = f"{PROMPT}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 64x64"
    signed_file(root / "pics" / "chatgpt.png", CHATGPT, parameters=text, size=(64, 64))
    with corpus_env(pg_server_url, root, **UNLIMITED_RATES) as env:
        _cli("import", str(root / "pics"), cwd=root, env=env)
        _cli("index", cwd=root, env=env)
        with serve(root, env, "serve-provenance") as served:
            [item] = served.get("/api/search", limit=10)["data"]
            yield served, int(item["id"])


@pytest.fixture
def web(chromium: Any, signed_site: tuple[Served, int]) -> Iterator[Web]:  # noqa: F811
    yield from _new_web(chromium, signed_site[0], DESKTOP)


def test_detail_shows_the_content_credentials(web: Web, signed_site: tuple[Served, int]) -> None:
    image_id = signed_site[1]
    web.goto(f"/image/{image_id}")
    web.page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{image_id}']")
    row = web.page.locator("#detail-params .param.provenance")
    assert row.locator("dt").inner_text() == "Content credentials"
    line = row.locator("dd").inner_text()
    assert CHATGPT.label in line and "AI-generated" in line and "signature valid" in line, line
    assert "untrusted signer" in line, line  # the test CA is on no trust list
    assert f"issued by {CHATGPT.issuer}" in (row.locator("dd").get_attribute("title") or "")
