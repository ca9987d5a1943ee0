"""`promptdex import-dataset`: each layout built here in its exact published form from the shared fixture images, read
with every parameter, twice without duplicates; bad layouts, columns and embeddings refused with clear messages."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from indexer.datasets.core import DatasetError, import_dataset
from indexer.datasets.layouts import Options, open_dataset, sampler_name
from promptdex.settings import get_settings

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FIXTURE_NAMES = (
    "sd-parsers/parsers/AUTOMATIC1111/automatic1111_cropped.png",
    "sd-parsers/parsers/InvokeAI/invokeai_dream1.png",
    "sd-parsers/parsers/AUTOMATIC1111/automatic1111_cropped.jpg",
    "sd-parsers/parsers/NovelAI/novelai1_cropped.png",
    "sd-parsers/parsers/InvokeAI/invokeai_imeta1.png",
    "sd-parsers/parsers/InvokeAI/invokeai_sdmeta1.png",
    "sd-parsers/parsers/Fooocus/fooocus1_cropped.png",
    "sd-parsers/parsers/ComfyUI/img2img_cropped.png",
    "sd-parsers/parsers/ComfyUI/unclip_2pass_cropped.png",
    "sd-parsers/parsers/ComfyUI/night_evening_day_morning_cropped.png",
    "sd-metadata/webp/gimp.webp",
    "sd-metadata/webp/sd-webui.webp",
)


@pytest.fixture
def images(metadata_fixtures: Path) -> list[tuple[str, bytes]]:
    """(file name, bytes) of distinct real images from the shared fixtures."""
    found = [(Path(n).name, (metadata_fixtures / n).read_bytes()) for n in FIXTURE_NAMES]
    assert len({hashlib.sha256(d).hexdigest() for _, d in found}) == len(found)
    return found


@pytest.fixture
def tiny(settings: Any, database_url: str, tmp_path: Path) -> Any:
    return get_settings(data_dir=tmp_path / "data", database_url=database_url, models="tiny")


def _rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT i.*, p.text AS prompt FROM images i LEFT JOIN prompts p ON p.id = i.prompt_id "
                       "ORDER BY i.id").fetchall()


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def _ddb_entries(names: list[str], part: int) -> dict[str, dict[str, Any]]:
    samplers = ["k_lms", "k_euler_a", "ddim", "k_euler", "plms", "k_dpm_2_a"]
    return {name: {"p": f"a lighthouse at dusk, part {part} image {i}", "se": 1000 + 10 * part + i,
                   "c": 7.0 + i / 2, "st": 20 + i, "sa": samplers[i % len(samplers)]}
            for i, name in enumerate(names)}


def build_diffusiondb(root: Path, images: list[tuple[str, bytes]], *, zipped: bool, table: bool,
                      per_part: int = 4) -> dict[str, dict[str, Any]]:
    """DiffusionDB 2M's layout: images/part-NNNNNN/ (or part-NNNNNN.zip) holding UUID-named PNGs and
    part-NNNNNN.json; metadata.parquet at the top. Returns file name -> its JSON entry."""
    from PIL import Image

    everything: dict[str, dict[str, Any]] = {}
    rows = []
    (root / "images").mkdir(parents=True)
    for part in range(1, (len(images) + per_part - 1) // per_part + 1):
        chunk = images[(part - 1) * per_part: part * per_part]
        names = [f"{hashlib.md5(d).hexdigest()[:8]}-0000-4000-8000-{part:012d}{Path(n).suffix}" for n, d in chunk]
        entries = _ddb_entries(names, part)
        everything |= entries
        folder = f"part-{part:06d}"
        if zipped:
            with zipfile.ZipFile(root / "images" / f"{folder}.zip", "w") as archive:
                for name, (_, data) in zip(names, chunk, strict=True):
                    archive.writestr(name, data)
                archive.writestr(f"{folder}.json", json.dumps(entries))
        else:
            (root / "images" / folder).mkdir()
            for name, (_, data) in zip(names, chunk, strict=True):
                (root / "images" / folder / name).write_bytes(data)
            (root / "images" / folder / f"{folder}.json").write_text(json.dumps(entries))
        for name, (_, data) in zip(names, chunk, strict=True):
            e = entries[name]
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
            rows.append({"image_name": name, "prompt": e["p"], "part_id": part, "seed": e["se"], "step": e["st"],
                         "cfg": e["c"], "sampler": e["sa"], "width": width, "height": height,
                         "user_name": f"user{part}", "timestamp": datetime(2022, 8, part, 12, tzinfo=UTC),
                         "image_nsfw": 0.1, "prompt_nsfw": 0.02})
    if table:
        _write_parquet(root / "metadata.parquet", rows)
    return everything


def test_diffusiondb_folders_with_every_parameter_twice(tiny: Any, conn: Any, tmp_path: Path,
                                                        images: list[tuple[str, bytes]]) -> None:
    root = tmp_path / "diffusiondb"
    entries = build_diffusiondb(root, images, zipped=False, table=True)
    dataset = open_dataset("diffusiondb", root, Options())
    assert [u.name for u in dataset.units] == ["part-000001", "part-000002", "part-000003"]
    first = import_dataset(conn, tiny, dataset, progress=False)
    assert (first.imported, first.duplicates, first.errors) == (len(images), 0, [])
    rows = _rows(conn)
    assert len(rows) == len(images)
    stored = tiny.images_path
    for row in rows:
        name = row["raw_metadata"]["diffusiondb"]["image_name"]
        e = entries[name]
        assert row["source"] == "diffusiondb"
        assert (row["prompt"], row["seed"], row["steps"], row["cfg"]) == (e["p"], e["se"], e["st"], e["c"])
        assert row["sampler"] == {"k_lms": "LMS", "k_euler_a": "Euler a", "ddim": "DDIM", "k_euler": "Euler",
                                  "plms": "PLMS", "k_dpm_2_a": "DPM2 a"}[e["sa"]]
        assert row["raw_metadata"]["diffusiondb"]["user_name"].startswith("user")
        assert row["created_at"].year == 2022 and row["created_at"].month == 8
        data = (stored / row["path"]).read_bytes()  # the original bytes, content-addressed
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and row["path"].startswith(row["sha256"][:2] + "/")
        assert row["nsfw_scores"] is not None  # the prompt was scored on the way
    again = import_dataset(conn, tiny, open_dataset("diffusiondb", root, Options()), progress=False)
    assert (again.imported, again.duplicates, again.units_done_before) == (0, 0, 3)
    assert len(_rows(conn)) == len(images)


def test_diffusiondb_zip_archives_and_bad_entries(tiny: Any, conn: Any, tmp_path: Path,
                                                  images: list[tuple[str, bytes]]) -> None:
    root = tmp_path / "ddb"
    entries = build_diffusiondb(root, images[:8], zipped=True, table=False)
    part = root / "images" / "part-000002.zip"
    with zipfile.ZipFile(part) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    listing = json.loads(members["part-000002.json"])
    broken, refused = sorted(listing)[:2]
    listing[broken]["st"] = "fifty"
    listing[refused]["p"] = "a prompt with a NUL \u0000 in it"  # valid JSON that PostgreSQL's text refuses
    listing["not-there.png"] = {"p": "a ghost", "se": 1, "c": 7, "st": 20, "sa": "k_lms"}
    members["part-000002.json"] = json.dumps(listing).encode()
    with zipfile.ZipFile(part, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    summary = import_dataset(conn, tiny, open_dataset("diffusiondb", root, Options()), progress=False)
    assert summary.imported == 6  # the rest of the refused row's batch is stored row by row
    errors = dict(summary.errors)
    assert "part-000002.json: key 'st' (steps): 'fifty' is not a whole number" in errors[f"{part}:{broken}"]
    assert "part-000002.json" in errors[f"{part}:{broken}"]
    assert errors[f"{part}:{refused}"].startswith("the database refused it: ")
    assert errors[f"{part}:not-there.png"] == "listed in part-000002.json but not in part-000002.zip"
    assert len(errors) == 3
    prompts = {r["prompt"] for r in _rows(conn)}
    assert {e["p"] for n, e in entries.items() if n not in (broken, refused)} == prompts
    again = import_dataset(conn, tiny, open_dataset("diffusiondb", root, Options()), progress=False)
    assert again.imported == 0 and len(_rows(conn)) == 6


def test_diffusiondb_metadata_table_alone_and_bad_layouts(tiny: Any, conn: Any, tmp_path: Path,
                                                          images: list[tuple[str, bytes]]) -> None:
    root = tmp_path / "ddb"
    build_diffusiondb(root, images[:4], zipped=False, table=True)
    (root / "images" / "part-000001" / "part-000001.json").unlink()  # the table alone says it all
    summary = import_dataset(conn, tiny, open_dataset("diffusiondb", root, Options()), progress=False)
    assert summary.imported == 4 and all(r["seed"] and r["sampler"] for r in _rows(conn))

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: not a DiffusionDB layout: expected images/part-NNNNNN/"):
        open_dataset("diffusiondb", tmp_path / "empty", Options())
    _write_parquet(root / "metadata.parquet", [{"name": "a.png", "part": 1}])
    with pytest.raises(DatasetError, match=r"metadata.parquet: no column 'image_name'.*its columns are name, part"):
        open_dataset("diffusiondb", root, Options())
    with pytest.raises(DatasetError, match="no such file or folder"):
        open_dataset("diffusiondb", tmp_path / "missing", Options())
    zipped = tmp_path / "zipped"
    build_diffusiondb(zipped, images[:4], zipped=True, table=False)
    (zipped / "images" / "part-000001.zip").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DatasetError, match=r"part-000001.zip: not a readable zip archive"):
        open_dataset("diffusiondb", zipped, Options())


def test_sampler_names() -> None:
    assert [sampler_name(v) for v in ("k_lms", "k_euler_ancestral", "k_dpm_2", 8, 4, "DPM++ 2M", "others")] == [
        "LMS", "Euler a", "DPM2", "LMS", "Euler a", "DPM++ 2M", "others"]


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tiny: Any, conn: Any, tmp_path: Path, images: list[tuple[str, bytes]]) -> None:
    root = tmp_path / "wds"
    root.mkdir()
    (name0, a1111), *rest = images  # the A1111 PNG keeps its own metadata
    samples: dict[str, bytes] = {"000000/000000000.png": a1111}
    for i, (name, data) in enumerate(rest[:5], start=1):
        ext = Path(name).suffix.lstrip(".")
        samples[f"000000/{i:09d}.{ext}"] = data
        if i % 2:
            samples[f"000000/{i:09d}.json"] = json.dumps({"prompt": f"sample {i}", "seed": i, "steps": 30,
                                                          "cfg_scale": 6.5, "sampler": "k_euler_a",
                                                          "url": f"https://example.invalid/{i}"}).encode()
        else:
            samples[f"000000/{i:09d}.txt"] = f"caption {i}".encode()
    _tar(root / "00000.tar", samples)
    _tar(root / "00001.tar", {f"1/{i:09d}.{Path(n).suffix.lstrip('.')}": d for i, (n, d) in enumerate(rest[5:8])}
         | {"1/000000099.json": b"{}"})
    summary = import_dataset(conn, tiny, open_dataset("webdataset", root, Options()), progress=False)
    assert summary.imported == 9
    assert summary.errors == [(f"{root / '00001.tar'}:1/000000099", "no image in the sample (members: json)")]
    rows = {r["raw_metadata"].get("webdataset", {}).get("key"): r for r in _rows(conn)}
    first = rows["000000/000000000"]
    assert first["source"] != "webdataset" and first["prompt"]  # read from the PNG's own parameters
    one = rows["000000/000000001"]
    assert (one["prompt"], one["seed"], one["steps"], one["cfg"], one["sampler"], one["source"]) == (
        "sample 1", 1, 30, 6.5, "Euler a", "webdataset")
    assert one["raw_metadata"]["webdataset"]["url"] == "https://example.invalid/1"
    assert rows["000000/000000002"]["prompt"] == "caption 2"
    again = import_dataset(conn, tiny, open_dataset("webdataset", root, Options()), progress=False)
    assert (again.imported, again.units_done_before) == (0, 2) and len(_rows(conn)) == 9


def test_img2dataset_files_layout(tiny: Any, conn: Any, tmp_path: Path, images: list[tuple[str, bytes]]) -> None:
    root = tmp_path / "i2d"
    shard = root / "00000"
    shard.mkdir(parents=True)
    table = []
    for i, (name, data) in enumerate(images[:5]):
        key = f"{i:09d}"
        table.append({"key": key, "caption": f"photo {i}", "url": f"https://example.invalid/{i}",
                      "status": "success" if i != 4 else "failed_to_download", "width": 64, "height": 64})
        if i == 4:
            continue
        (shard / f"{key}{Path(name).suffix}").write_bytes(data)
        (shard / f"{key}.txt").write_text(f"photo {i}")
        (shard / f"{key}.json").write_text(json.dumps(table[-1]))
    _write_parquet(root / "00000.parquet", table)
    dataset = open_dataset("img2dataset", root, Options())
    assert dataset.units[0].count == 5
    summary = import_dataset(conn, tiny, dataset, progress=False)
    assert (summary.imported, summary.items, summary.errors) == (4, 4, [])
    assert sorted(r["prompt"] for r in _rows(conn)) == ["photo 0", "photo 1", "photo 2", "photo 3"]
    assert {r["source"] for r in _rows(conn)} == {"img2dataset"}
    assert import_dataset(conn, tiny, open_dataset("img2dataset", root, Options()), progress=False).imported == 0


def test_hf_saved_and_parquet_with_column_mapping(tiny: Any, conn: Any, tmp_path: Path,
                                                  images: list[tuple[str, bytes]]) -> None:
    datasets = pytest.importorskip("datasets")
    records = {"picture": [{"bytes": d, "path": n} for n, d in images[:6]],
               "caption": [f"hf prompt {i}" for i in range(6)], "guidance": [5.0 + i for i in range(6)],
               "seed": list(range(6)), "sampler": ["k_lms"] * 6}
    features = datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string"),
                                  "guidance": datasets.Value("float32"), "seed": datasets.Value("int64"),
                                  "sampler": datasets.Value("string")})
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(records, features=features)}).save_to_disk(str(saved))
    options = Options(image_column="picture", columns={"prompt": "caption", "cfg": "guidance"})
    summary = import_dataset(conn, tiny, open_dataset("hf", saved, options), progress=False)
    assert (summary.imported, summary.errors) == (6, [])
    rows = sorted(_rows(conn), key=lambda r: r["seed"])
    assert [(r["prompt"], r["cfg"], r["sampler"], r["source"]) for r in rows] == [
        (f"hf prompt {i}", 5.0 + i, "LMS", "hf") for i in range(6)]
    assert import_dataset(conn, tiny, open_dataset("hf", saved, options), progress=False).imported == 0

    folder = tmp_path / "parquet"
    folder.mkdir()
    _write_parquet(folder / "train-00000.parquet", [{"image": {"bytes": d, "path": n}, "text": f"pq {i}"}
                                                    for i, (n, d) in enumerate(images[6:9])])
    summary = import_dataset(conn, tiny, open_dataset("hf", folder, Options()), progress=False)
    assert summary.imported == 3 and {"pq 0", "pq 1", "pq 2"} <= {r["prompt"] for r in _rows(conn)}

    with pytest.raises(DatasetError, match=r"no column 'words' \(--column prompt=words\); its columns are picture"):
        open_dataset("hf", saved, Options(image_column="picture", columns={"prompt": "words"}))
    with pytest.raises(DatasetError, match=r"no image column 'photo' \(set --image-column\)"):
        open_dataset("hf", folder, Options(image_column="photo"))
    with pytest.raises(DatasetError, match=r"--column colour=\.\.\.: not a parameter"):
        open_dataset("hf", folder, Options(columns={"colour": "text"}))


def _clip_retrieval(root: Path, keys: list[str], vectors: np.ndarray[Any, Any]) -> None:
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    half = len(keys) // 2
    for n, (lo, hi) in enumerate(((0, half), (half, len(keys)))):
        np.save(root / "img_emb" / f"img_emb_{n}.npy", vectors[lo:hi].astype(np.float16))
        _write_parquet(root / "metadata" / f"metadata_{n}.parquet",
                       [{"image_path": f"/laion/{k}", "caption": "x"} for k in keys[lo:hi]])


def test_precomputed_embeddings_go_into_the_bundle(tiny: Any, conn: Any, tmp_path: Path,
                                                   images: list[tuple[str, bytes]]) -> None:
    from indexer.bundles import Bundle
    from indexer.datasets.embeddings import Embeddings, EmbeddingSink
    from indexer.embedders import clip_from_settings

    root = tmp_path / "ddb"
    entries = build_diffusiondb(root, images[:8], zipped=True, table=False)
    model = clip_from_settings(tiny)
    names = sorted(entries)[:6]  # two images have no precomputed vector: `promptdex index` embeds them
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((len(names), model.dim)).astype(np.float32)
    emb = tmp_path / "emb"
    _clip_retrieval(emb, names, vectors)

    with pytest.raises(DatasetError, match=r"--embeddings-model open_clip:ViT-L-14:openai: the configured CLIP model"):
        EmbeddingSink(conn, tiny, Embeddings(emb), "open_clip:ViT-L-14:openai")
    sink = EmbeddingSink(conn, tiny, Embeddings(emb), model.model_id)
    try:
        summary = import_dataset(conn, tiny, open_dataset("diffusiondb", root, Options()), sink=sink, progress=False)
    finally:
        sink.close(conn)
    assert (summary.imported, summary.vectors, summary.without_vectors) == (8, 6, 2)
    bundle = Bundle.open(tiny.indexes_path / "clip-image", model=model.model_id)
    by_name = {r["raw_metadata"]["diffusiondb"]["image_name"]: r["id"] for r in _rows(conn)}
    assert sorted(bundle.ids().tolist()) == sorted(by_name[n] for n in names)
    for name, vector in zip(names, vectors, strict=True):  # each vector is found as its own image's
        found, _ = bundle.search((vector / np.linalg.norm(vector)).astype(np.float16).astype(np.float32)[None], 1)
        assert int(np.ravel(found)[0]) == by_name[name]
    recorded = {r["item_id"] for r in conn.execute("SELECT item_id FROM index_entries WHERE bundle = 'clip-image'")}
    assert recorded == set(bundle.ids().tolist())

    again_sink = EmbeddingSink(conn, tiny, Embeddings(emb), model.model_id)
    try:
        again = import_dataset(conn, tiny, open_dataset("diffusiondb", root, Options()), sink=again_sink,
                               progress=False)
    finally:
        again_sink.close(conn)
    assert (again.imported, again.vectors) == (0, 0)
    assert Bundle.open(tiny.indexes_path / "clip-image", model=model.model_id).count == 6

    np.save(emb / "img_emb" / "img_emb_1.npy", vectors[:1])
    with pytest.raises(DatasetError, match=r"img_emb_1.npy holds 1 vectors but .*metadata_1.parquet has 3 rows"):
        Embeddings(emb)
    np.save(emb / "img_emb" / "img_emb_1.npy", rng.standard_normal((3, model.dim + 1)))
    with pytest.raises(DatasetError, match=r"img_emb_1.npy: vectors of dimension \d+, but the files before it"):
        Embeddings(emb)
