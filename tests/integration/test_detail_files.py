"""The image detail's extras for imported files: every path that holds one content (admins only), and the ComfyUI
workflow to download (`GET /api/images/{id}/workflow`), through the real importer, database and API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from indexer.importer import import_paths
from promptdex import accounts
from promptdex.accounts import Role
from tests.conftest import require_shared_fixtures
from tests.integration.test_import_folders import png

pytestmark = pytest.mark.integration

COMFY = "sd-metadata/png/comfyui-hires.png"


def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    text = "a red barn\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 32x32"
    return png(path, colour=colour, size=(32, 32), chunks={"parameters": text})


@pytest.fixture
def api(settings: Any, conn: Any) -> Any:
    from fastapi.testclient import TestClient

    from promptdex.settings import get_settings
    from search_api.app import create_app

    accounts.add_user(conn, name="root", role=Role.ADMIN, password="root-password")
    accounts.add_user(conn, name="vera", role=Role.VIEWER, password="vera-password")
    tokens = {name: accounts.create_token(conn, name=name)[1] for name in ("root", "vera")}
    served = get_settings(data_dir=settings.data_dir, database_url=settings.database_url, models="tiny",
                          api={"rate_burst": 10_000, "rate_sustained": 100_000})
    with TestClient(create_app(served), base_url="http://localhost") as client:
        client.tokens = tokens  # type: ignore[attr-defined]
        yield client


def _get(api: Any, path: str, who: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {api.tokens[who]}"} if who else {}
    return api.get(path, headers=headers)


def test_one_content_at_several_paths_lists_them_all(settings: Any, conn: Any, api: Any, tmp_path: Path) -> None:
    first = _png(tmp_path / "pics" / "barn.png", (200, 20, 20))
    copy = tmp_path / "pics" / "sorted" / "barn-copy.png"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    other = _png(tmp_path / "pics" / "other.png", (20, 20, 200))
    summary = import_paths(conn, settings, [tmp_path / "pics"], progress=False)
    assert (summary.imported, summary.duplicates) == (2, 1), summary.to_json()
    [image_id] = [r["id"] for r in conn.execute("SELECT id FROM images WHERE path = %s", (str(first),)).fetchall()]

    detail = _get(api, f"/api/images/{image_id}", "root").json()
    assert detail["paths"] == [str(first), str(copy)]
    assert _get(api, f"/api/images/{image_id}", "vera").json()["paths"] == []  # server paths: admins only
    assert _get(api, f"/api/images/{image_id}").json()["paths"] == []
    [other_id] = [r["id"] for r in conn.execute("SELECT id FROM images WHERE path = %s", (str(other),)).fetchall()]
    assert _get(api, f"/api/images/{other_id}", "root").json()["paths"] == [str(other)]

    first.unlink()  # one copy deleted: the other is the image's path now, and the only one listed
    import_paths(conn, settings, [tmp_path / "pics"], progress=False, prune=True)
    assert _get(api, f"/api/images/{image_id}", "root").json()["paths"] == [str(copy)]


def test_the_comfyui_workflow_downloads_as_a_file(settings: Any, conn: Any, api: Any, tmp_path: Path) -> None:
    source = require_shared_fixtures() / COMFY
    folder = tmp_path / "pics"
    folder.mkdir()
    shutil.copy(source, folder / "comfy.png")
    _png(folder / "a1111.png", (10, 200, 10))
    import_paths(conn, settings, [folder], progress=False)
    ids = {Path(r["path"]).name: r["id"] for r in conn.execute("SELECT id, path FROM images").fetchall()}
    embedded = json.loads(Image.open(source).info["workflow"])

    comfy = ids["comfy.png"]
    assert _get(api, f"/api/images/{comfy}").json()["has_workflow"] is True
    answer = _get(api, f"/api/images/{comfy}/workflow")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    assert answer.headers["content-disposition"] == f'attachment; filename="promptdex-{comfy}-workflow.json"'
    assert answer.json() == embedded and "nodes" in answer.json()

    plain = ids["a1111.png"]
    assert _get(api, f"/api/images/{plain}").json()["has_workflow"] is False
    missing = _get(api, f"/api/images/{plain}/workflow")
    assert missing.status_code == 404 and "no ComfyUI workflow" in missing.json()["detail"]
    assert _get(api, "/api/images/999999/workflow").status_code == 404
    assert _get(api, "/api/images/0/workflow").status_code == 422

