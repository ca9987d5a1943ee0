"""The dataset layouts `promptdex import-dataset` reads: each lists its units and yields their items lazily.

- `diffusiondb`: `images/part-NNNNNN/` folders (or `part-NNNNNN.zip` archives) of images, each part with
  `part-NNNNNN.json` mapping a file name to `{"p": prompt, "se": seed, "c": cfg, "st": steps, "sa": sampler}`, and
  `metadata.parquet` (one row per image: image_name, part_id, prompt, seed, step, cfg, sampler, width, height,
  user_name, timestamp, image_nsfw, prompt_nsfw). DiffusionDB Large's `diffusiondb-large-part-N/part-NNNNNN/`
  folders and `metadata-large.parquet` are read the same way.
- `webdataset`: `.tar` shards; a sample is the members sharing a key (`dir/000001.jpg`, `.json`, `.txt`).
- `img2dataset`: its `webdataset` output (as above) or its `files` output: shard folders (`00000/000000001.jpg`,
  `.json`, `.txt`) beside `00000.parquet`, whose `key` and `status` columns list the shard's samples.
- `hf`: a Hugging Face `datasets` dataset saved with `save_to_disk`, or parquet files, with an image column.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from indexer.datasets.core import Dataset, DatasetError, Item, Unit
from indexer.images import IMAGE_SUFFIXES
from promptdex.samplers import find_sampler

logger = logging.getLogger(__name__)

KINDS = ("diffusiondb", "webdataset", "img2dataset", "hf")
_PART = re.compile(r"^part-(\d{6})$")
_PART_ZIP = re.compile(r"^part-(\d{6})\.zip$")
# DiffusionDB's integer sampler codes (its metadata table documents them) -> its k-diffusion names
DIFFUSIONDB_SAMPLERS = {1: "ddim", 2: "plms", 3: "k_euler", 4: "k_euler_ancestral", 5: "k_heun", 6: "k_dpm_2",
                        7: "k_dpm_2_ancestral", 8: "k_lms", 9: "others"}
# GenerationParams field -> the column names datasets use for it, first match wins (`--column FIELD=COLUMN` overrides)
FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "text", "caption", "TEXT"),
    "negative_prompt": ("negative_prompt", "negative"),
    "seed": ("seed",),
    "steps": ("steps", "step", "num_inference_steps"),
    "cfg": ("cfg", "cfg_scale", "guidance_scale"),
    "sampler": ("sampler", "sampler_name", "scheduler"),
    "width": ("width",),
    "height": ("height",),
    "model": ("model", "model_name"),
}
_INTS, _FLOATS = {"seed", "steps", "width", "height"}, {"cfg"}
_EXTRA_LIMIT = 2000  # longest string kept from a sidecar's other fields (raw metadata)


@dataclass
class Options:
    """The flags of `promptdex import-dataset` that shape how a layout is read."""

    image_column: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # GenerationParams field -> column (--column)
    key_column: str | None = None
    split: str | None = None


def sampler_name(value: Any) -> str | None:
    """A dataset's sampler (`k_lms`, `k_euler_ancestral`, DiffusionDB's 1-9 codes) as A1111 names it (`LMS`)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = DIFFUSIONDB_SAMPLERS.get(value, str(value))
    text = str(value).strip()
    found = find_sampler(text)
    return found.name if found is not None else text


def _convert(name: str, value: Any) -> Any:
    """A column's value as GenerationParams wants it; ValueError (in words) when it is not one."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN: not recorded
        return None
    if name in _INTS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{value!r} is not a whole number")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
        if not number.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        return int(number)
    if name in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{value!r} is not a number")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    if name == "sampler":
        return sampler_name(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def params_from(record: Mapping[str, Any], columns: Mapping[str, str], where: str,
                what: str = "column") -> tuple[dict[str, Any], str | None]:
    """GenerationParams fields from one record (a row, a sidecar), by `columns` (field -> column name), or the
    error naming the column (`what`: "key" for JSON) and its value."""
    params: dict[str, Any] = {}
    for name, column in columns.items():
        if column not in record:
            continue
        try:
            value = _convert(name, record[column])
        except ValueError as exc:
            return {}, f"{where}: {what} {column!r} ({name}): {exc}"
        if value is not None:
            params[name] = value
    return params, None


def resolve_columns(available: Sequence[str], options: Options, where: str, *,
                    skip: Sequence[str] = ()) -> dict[str, str]:
    """field -> column for the columns present: `--column` mappings (each must exist, else DatasetError naming it
    and what there is) over the usual names."""
    unknown = sorted(set(options.columns) - set(FIELDS))
    if unknown:
        raise DatasetError(f"--column {unknown[0]}=...: not a parameter (use one of {', '.join(FIELDS)})")
    chosen: dict[str, str] = {}
    for name, candidates in FIELDS.items():
        if name in options.columns:
            column = options.columns[name]
            if column not in available:
                raise DatasetError(f"{where}: no column {column!r} (--column {name}={column}); its columns are "
                                   f"{', '.join(available)}")
            chosen[name] = column
            continue
        found = next((c for c in candidates if c in available and c not in skip), None)
        if found is not None:
            chosen[name] = found
    return chosen


def _extra(record: Mapping[str, Any], used: set[str]) -> dict[str, Any]:
    """A sidecar's other small fields, kept as raw metadata."""
    return {k: v for k, v in record.items() if k not in used and isinstance(v, int | float | bool | str)
            and (not isinstance(v, str) or len(v) <= _EXTRA_LIMIT)}


def _stat_print(*paths: Path) -> str:
    parts = []
    for path in paths:
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _require(root: Path) -> Path:
    path = root.expanduser().absolute()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    return path


# --- DiffusionDB -----------------------------------------------------------------------------------------------

_DDB_KEYS = {"p": "prompt", "se": "seed", "c": "cfg", "st": "steps", "sa": "sampler"}
_DDB_COLUMNS = {"prompt": "prompt", "seed": "seed", "steps": "step", "cfg": "cfg", "sampler": "sampler",
                "width": "width", "height": "height"}
_DDB_EXTRA = ("user_name", "image_nsfw", "prompt_nsfw")


def _parts(root: Path) -> list[tuple[int, Path]]:
    """(part number, folder or zip) of a DiffusionDB layout, looking in the root, `images/` and DiffusionDB
    Large's `diffusiondb-large-part-N/` folders."""
    places = [root, root / "images", *sorted(p for p in root.glob("diffusiondb-large-part-*") if p.is_dir())]
    found: dict[int, Path] = {}
    for place in places:
        if not place.is_dir():
            continue
        for entry in sorted(place.iterdir()):
            match = (_PART.match(entry.name) if entry.is_dir() else _PART_ZIP.match(entry.name)
                     if entry.is_file() else None)
            if match is not None:
                found.setdefault(int(match.group(1)), entry)
    return sorted(found.items())


class _Metadata:
    """DiffusionDB's metadata table, read one part at a time (its rows filtered by part_id)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.dataset as pads

        self.path = path
        try:
            self.table = pads.dataset(str(path), format="parquet")
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a file that is not parquet
            raise DatasetError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
        self.columns = list(self.table.schema.names)
        missing = [c for c in ("image_name", "part_id") if c not in self.columns]
        if missing:
            raise DatasetError(f"{path}: no column {missing[0]!r} (a DiffusionDB metadata table has image_name, "
                               f"part_id, prompt, seed, step, cfg, sampler, ...); its columns are "
                               f"{', '.join(self.columns)}")

    def part(self, number: int) -> dict[str, dict[str, Any]]:
        import pyarrow.dataset as pads

        rows = self.table.to_table(filter=pads.field("part_id") == number).to_pylist()
        return {str(r["image_name"]): r for r in rows}


def diffusiondb(root: Path, options: Options) -> Dataset:
    root = _require(root)
    parts = _parts(root) if root.is_dir() else []
    if not parts:
        raise DatasetError(f"{root}: not a DiffusionDB layout: expected images/part-NNNNNN/ folders or "
                           "part-NNNNNN.zip archives, each with its part-NNNNNN.json")
    table_file = next((p for p in (root / "metadata.parquet", root / "metadata-large.parquet") if p.is_file()), None)
    table = _Metadata(table_file) if table_file is not None else None
    units = []
    for number, where in parts:
        name = f"part-{number:06d}"
        if where.is_dir():
            count = sum(1 for f in where.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        else:  # the archive's directory only, for the progress bar's total
            try:
                with zipfile.ZipFile(where) as archive:
                    count = sum(1 for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DatasetError(f"{where}: not a readable zip archive ({exc})") from None
        units.append(Unit(name, _stat_print(where / f"{name}.json") if where.is_dir() and
                          (where / f"{name}.json").is_file() else _stat_print(where),
                          partial(_ddb_items, where, number, table), count))
    return Dataset("diffusiondb", root, units)


class _Part:
    """One DiffusionDB part's files: a folder or a zip archive."""

    def __init__(self, where: Path) -> None:
        self.where, self.zip = where, zipfile.ZipFile(where) if where.is_file() else None

    def names(self) -> list[str]:
        if self.zip is not None:
            return [i.filename for i in self.zip.infolist() if not i.is_dir()]
        return sorted(f.name for f in self.where.iterdir() if f.is_file())

    def read(self, name: str) -> bytes | None:
        try:
            return self.zip.read(name) if self.zip is not None else (self.where / name).read_bytes()
        except (KeyError, FileNotFoundError):
            return None

    def label(self, name: str) -> str:
        return f"{self.where}:{name}" if self.zip is not None else str(self.where / name)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _part_json(part: _Part, name: str) -> dict[str, Any] | None:
    raw = part.read(f"{name}.json")
    if raw is None:
        return None
    try:
        entries = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{part.label(name + '.json')}: not valid JSON ({exc})") from None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise DatasetError(f"{part.label(name + '.json')}: expected an object mapping each image's file name to "
                           '{"p": prompt, "se": seed, "c": cfg, "st": steps, "sa": sampler}')
    return entries


def _ddb_items(where: Path, number: int, table: _Metadata | None, skip: int) -> Iterator[Item]:
    name = f"part-{number:06d}"
    part = _Part(where)
    try:
        entries = _part_json(part, name)
        rows = table.part(number) if table is not None else {}
        if entries is None and not rows:
            raise DatasetError(f"{part.label(name + '.json')}: missing, and "
                               f"{'metadata.parquet has no rows for this part' if table else 'no metadata.parquet'}"
                               ": nothing says what made these images")
        images = [n for n in part.names() if Path(n).suffix.lower() in IMAGE_SUFFIXES]
        listed = list(entries) if entries is not None else sorted(rows)
        order = listed + sorted(set(images) - set(listed))
        for position, file in enumerate(order):
            if position < skip:
                continue
            yield _ddb_item(part, file, entries, rows, table)
    finally:
        part.close()


def _ddb_item(part: _Part, file: str, entries: dict[str, Any] | None, rows: dict[str, dict[str, Any]],
              table: _Metadata | None) -> Item:
    where = part.label(file)
    row = rows.get(file)
    entry = entries.get(file) if entries is not None else None
    if entry is None and row is None:
        return Item(file, where, None, error=f"not listed in {part.where.stem}.json"
                    f"{' nor in ' + table.path.name if table else ''}")
    data = part.read(file)
    if data is None:
        return Item(file, where, None, error=f"listed in {part.where.stem}.json but not in {part.where.name}")
    if entry is not None:
        if "p" not in entry:
            return Item(file, where, data, error=f"{part.where.stem}.json: its entry has no \"p\" (prompt)")
        params, error = params_from(entry, {v: k for k, v in _DDB_KEYS.items()}, f"{part.where.stem}.json", "key")
    else:
        params, error = params_from(row or {}, _DDB_COLUMNS, table.path.name if table else "metadata")
    if error is None and row is not None:
        sizes, error = params_from(row, {"width": "width", "height": "height"}, table.path.name if table else "")
        params |= sizes
    extra = {"part": part.where.stem, "image_name": file}
    created = None
    if row is not None:
        extra |= {k: row[k] for k in _DDB_EXTRA if isinstance(row.get(k), str | int | float)}
        stamp = row.get("timestamp")
        created = stamp if isinstance(stamp, datetime) else None
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
    return Item(file, where, data, params=params, extra={"diffusiondb": extra}, created_at=created, error=error)


# --- webdataset / img2dataset ----------------------------------------------------------------------------------

_IMAGE_EXTS = {s.lstrip(".") for s in IMAGE_SUFFIXES}


def _sidecar_params(sample: dict[str, bytes], options: Options, where: str) -> tuple[dict[str, Any] | None,
                                                                                    dict[str, Any], str | None]:
    """(params or None, extra raw fields, error) from a sample's `.json` and `.txt`."""
    record: dict[str, Any] = {}
    if "json" in sample:
        try:
            loaded = json.loads(sample["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, {}, f"{where}.json: not valid JSON ({exc})"
        if not isinstance(loaded, dict):
            return None, {}, f"{where}.json: expected a JSON object"
        record = loaded
    columns = resolve_columns(list(record), Options(), where)
    columns |= {name: column for name, column in options.columns.items() if column in record}  # --column, leniently
    params, error = params_from(record, columns, f"{where}.json", "key")
    if "prompt" not in params and "txt" in sample:
        params["prompt"] = sample["txt"].decode("utf-8", errors="replace").strip()
    extra = _extra(record, set(columns.values()))
    return (params if params.get("prompt") else None), extra, error


def _sample_item(kind: str, unit: str, key: str, sample: dict[str, bytes], options: Options, where: str) -> Item:
    image_ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in sample), None)
    if image_ext is None:
        return Item(key, where, None, error=f"no image in the sample (members: {', '.join(sorted(sample))})")
    params, extra, error = _sidecar_params(sample, options, where)
    if params is not None:  # a sidecar's size is the original's (img2dataset resizes): the stored one is the file's
        params.pop("width", None)
        params.pop("height", None)
    return Item(key, f"{where}.{image_ext}", sample[image_ext], params=params,
                extra={kind: {"shard": unit, "key": key, **extra}}, error=error)


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the rest its extension."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _tar_items(kind: str, shard: Path, root: Path, options: Options, skip: int) -> Iterator[Item]:
    unit = str(shard.relative_to(root))
    try:
        archive = tarfile.open(shard, mode="r|*")  # noqa: SIM115 - streamed, closed below
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{shard}: not a readable tar shard ({exc})") from None
    position = 0
    try:
        key: str | None = None
        sample: dict[str, bytes] = {}
        for member in archive:
            if not member.isfile():
                continue
            member_key, ext = _split_member(member.name)
            if member_key != key and key is not None:
                if position >= skip:
                    yield _sample_item(kind, unit, key, sample, options, f"{shard}:{key}")
                position += 1
                sample = {}
            key = member_key
            handle = archive.extractfile(member)
            if handle is not None and (ext in _IMAGE_EXTS or ext in ("json", "txt")):
                sample[ext] = handle.read()
        if key is not None and position >= skip:
            yield _sample_item(kind, unit, key, sample, options, f"{shard}:{key}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{shard}: the tar shard is damaged ({type(exc).__name__}: {exc}); the samples before "
                           "the damage were imported; replace the shard and run the same import again") from None
    finally:
        archive.close()


def webdataset(root: Path, options: Options, kind: str = "webdataset") -> Dataset:
    root = _require(root)
    shards = [root] if root.is_file() else sorted(root.rglob("*.tar"))
    if not shards or any(s.suffix != ".tar" for s in shards):
        raise DatasetError(f"{root}: not a webdataset layout: expected .tar shards (image plus .json/.txt sidecars)")
    base = root.parent if root.is_file() else root
    return Dataset(kind, root, [Unit(str(s.relative_to(base)), _stat_print(s),
                                     partial(_tar_items, kind, s, base, options)) for s in shards])


def _files_items(folder: Path, table: Path | None, options: Options, skip: int) -> Iterator[Item]:
    files: dict[str, dict[str, Path]] = {}
    for file in sorted(folder.iterdir()):
        stem, _, ext = file.name.partition(".")
        files.setdefault(stem, {})[ext.lower()] = file
    keys = sorted(files)
    if table is not None:
        import pyarrow.parquet as pq

        rows = pq.read_table(table).to_pylist()
        if rows and "key" not in rows[0]:
            raise DatasetError(f"{table}: no column 'key' (img2dataset's shard table lists key, status, caption, "
                               f"url...); its columns are {', '.join(rows[0])}")
        keys = [str(r["key"]) for r in rows if r.get("status", "success") == "success"]
    for position, key in enumerate(keys):
        if position < skip:
            continue
        members = files.get(key, {})
        sample = {ext: path.read_bytes() for ext, path in members.items() if ext in _IMAGE_EXTS | {"json", "txt"}}
        yield _sample_item("img2dataset", folder.name, key, sample, options, str(folder / key))


def img2dataset(root: Path, options: Options) -> Dataset:
    root = _require(root)
    if root.is_file() or any(root.rglob("*.tar")):
        return webdataset(root, options, kind="img2dataset")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not folders:
        raise DatasetError(f"{root}: not an img2dataset layout: expected .tar shards, or shard folders "
                           "(00000/ with 000000000.jpg, .json, .txt) beside their 00000.parquet")
    units = []
    for folder in folders:
        table = root / f"{folder.name}.parquet"
        count = None
        if table.is_file():
            import pyarrow.parquet as pq

            count = pq.ParquetFile(table).metadata.num_rows
        units.append(Unit(folder.name, _stat_print(folder, *([table] if table.is_file() else [])),
                          partial(_files_items, folder, table if table.is_file() else None, options), count))
    return Dataset("img2dataset", root, units)


# --- Hugging Face datasets -------------------------------------------------------------------------------------

_HF_BATCH = 256


def _image_bytes(value: Any, root: Path) -> tuple[bytes | None, str | None]:
    """(bytes, file name) of an image column's value: datasets' {"bytes", "path"} struct, or raw bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return bytes(data), path
        if path:
            file = Path(path) if Path(path).is_absolute() else root / path
            return (file.read_bytes() if file.is_file() else None), path
    return None, None


def _hf_columns(available: list[str], options: Options, where: str) -> tuple[str, dict[str, str], str | None]:
    image = options.image_column or next((c for c in ("image", "jpg", "png", "webp", "img") if c in available), None)
    if image is None or image not in available:
        raise DatasetError(f"{where}: no image column {image or 'image'!r} (set --image-column); its columns are "
                           f"{', '.join(available)}")
    columns = resolve_columns(available, options, where, skip=[image])
    key = options.key_column
    if key is not None and key not in available:
        raise DatasetError(f"{where}: no column {key!r} (--key-column); its columns are {', '.join(available)}")
    key = key or next((c for c in ("key", "image_name", "file_name", "id") if c in available), None)
    return image, columns, key


def _hf_rows(kind: str, unit: str, rows: Iterator[dict[str, Any]], root: Path, image: str, columns: dict[str, str],
             key_column: str | None, start: int) -> Iterator[Item]:
    for offset, row in enumerate(rows):
        position = start + offset
        data, name = _image_bytes(row.get(image), root)
        key = str(row[key_column]) if key_column and row.get(key_column) is not None else (name or str(position))
        where = f"{unit}[{position}]"
        if data is None:
            yield Item(key, where, None, error=f"column {image!r} holds no image bytes")
            continue
        params, error = params_from(row, columns, where)
        stamp = row.get("timestamp")
        created = stamp if isinstance(stamp, datetime) else None
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        extra = _extra(row, {image, *columns.values()})
        yield Item(key, where, data, params=params if params.get("prompt") else None, extra={"hf": extra},
                   created_at=created, error=error)


def _saved_items(root: Path, split: str, options: Options, skip: int) -> Iterator[Item]:
    dataset = _load_saved(root, split)
    import datasets

    image, columns, key = _hf_columns(list(dataset.column_names), options, f"{root} (split {split})")
    if isinstance(dataset.features.get(image), datasets.Image):
        dataset = dataset.cast_column(image, datasets.Image(decode=False))
    for start in range(skip, len(dataset), _HF_BATCH):
        batch = dataset[start:start + _HF_BATCH]
        rows = (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True))
        yield from _hf_rows("hf", split, rows, root, image, columns, key, start)


def _load_saved(root: Path, split: str) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(root))
    if isinstance(loaded, datasets.DatasetDict):
        return loaded[split]
    return loaded


def _parquet_items(file: Path, root: Path, options: Options, skip: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(file)
    image, columns, key = _hf_columns(list(reader.schema_arrow.names), options, str(file))
    seen = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal seen
        for batch in reader.iter_batches(batch_size=_HF_BATCH):
            if seen + batch.num_rows <= skip:
                seen += batch.num_rows
                continue
            records = batch.to_pylist()
            first = max(0, skip - seen)
            seen += batch.num_rows
            yield from records[first:]

    yield from _hf_rows("hf", str(file.relative_to(root)) if file != root else file.name, rows(), root, image,
                        columns, key, skip)


def hf(root: Path, options: Options) -> Dataset:
    root = _require(root)
    if root.is_dir() and ((root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file()
                          or (root / "state.json").is_file()):
        import datasets

        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as exc:  # noqa: BLE001 - datasets' errors for a damaged folder
            raise DatasetError(f"{root}: not a readable saved dataset ({type(exc).__name__}: {exc})") from None
        if isinstance(loaded, datasets.DatasetDict):
            splits = list(loaded)
            chosen = options.split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
            if chosen is None or chosen not in splits:
                raise DatasetError(f"{root}: {'no split ' + repr(options.split) if options.split else 'several splits'}"
                                   f" (--split one of {', '.join(splits)})")
            split, dataset = chosen, loaded[chosen]
        else:
            split, dataset = options.split or "train", loaded
        _hf_columns(list(dataset.column_names), options, f"{root} (split {split})")  # fail before any work
        fingerprint = str(getattr(dataset, "_fingerprint", "")) or _stat_print(root)
        return Dataset("hf", root, [Unit(f"split-{split}", fingerprint, partial(_saved_items, root, split, options),
                                         len(dataset))])
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if not files or any(f.suffix != ".parquet" for f in files):
        raise DatasetError(f"{root}: not a Hugging Face dataset: expected a folder written by save_to_disk "
                           "(dataset_info.json, state.json) or .parquet files")
    import pyarrow.parquet as pq

    base = root.parent if root.is_file() else root
    units = []
    for file in files:
        try:
            meta = pq.ParquetFile(file)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a file that is not parquet
            raise DatasetError(f"{file}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
        _hf_columns(list(meta.schema_arrow.names), options, str(file))
        units.append(Unit(str(file.relative_to(base)), _stat_print(file), partial(_parquet_items, file, base, options),
                          meta.metadata.num_rows))
    return Dataset("hf", root, units)


def open_dataset(kind: str, root: Path, options: Options) -> Dataset:
    """The dataset at `root` read as `kind` (DatasetError naming the path when it is not that layout)."""
    readers = {"diffusiondb": diffusiondb, "webdataset": webdataset, "img2dataset": img2dataset, "hf": hf}
    if kind not in readers:
        raise DatasetError(f"unknown dataset kind {kind!r} (one of {', '.join(KINDS)})")
    return readers[kind](root, options)

