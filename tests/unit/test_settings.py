"""Settings: prefix, nested groups, derived paths, and .env.example documenting every setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from promptdex.settings import ModelsMode, Settings, describe_settings, get_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PROMPTDEX_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_put_everything_under_data_dir(tmp_path: Path) -> None:
    s = get_settings()
    assert s.data_path == (tmp_path / "data").resolve()
    assert s.database_url is None
    assert s.models is ModelsMode.DEFAULT
    assert s.images_path == s.data_path / "images"
    assert s.postgres_path == s.data_path / "postgres"
    assert s.indexes_path == s.data_path / "indexes"


def test_prefix_and_nested_groups_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTDEX_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PROMPTDEX_GENERATOR__STEPS", "33")
    monkeypatch.setenv("PROMPTDEX_INDEXER__CLIP_MODEL", "ViT-L-14")
    monkeypatch.setenv("PROMPTDEX_MODELS", "tiny")
    monkeypatch.setenv("PROMPTDEX_THUMBS_DIR", str(tmp_path / "t"))
    s = get_settings()
    assert s.data_path == tmp_path / "elsewhere"
    assert s.generator.steps == 33
    assert s.indexer.clip_model == "ViT-L-14"
    assert s.models is ModelsMode.TINY
    assert s.thumbs_path == tmp_path / "t"
    assert s.images_path == tmp_path / "elsewhere" / "images"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PROMPTDEX_API__PORT=9123\n")
    assert get_settings().api.port == 9123


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTDEX_API__PORT", "not-a-port")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("PROMPTDEX_API__PORT", "8000")
    monkeypatch.setenv("PROMPTDEX_MODELS", "huge")
    with pytest.raises(ValidationError):
        Settings()


def test_env_example_documents_every_setting() -> None:
    text = (REPO / ".env.example").read_text()
    for variable, _default, description in describe_settings():
        assert f"# {variable}=" in text, f"{variable} missing from .env.example"
        assert description, f"{variable} has no description"


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    for variable, _default, _description in describe_settings():
        assert f"`{variable}`" in readme, f"{variable} missing from README's configuration table"
