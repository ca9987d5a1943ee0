"""Corpus store: plain functions with keyword-only arguments and hand-written SQL over images and prompts."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from promptdex.params import GenerationParams
from promptdex.records import FileRecord, FileStatus, Image, ImageFilter, ImageLocation, NewImage, SafetyScore

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
Order = Literal["newest", "oldest"]

# Columns written for every image, in COPY order; `prompt` is resolved to prompt_id on insert.
_COLUMNS = (
    "sha256", "path", "file_size", "file_mtime", "width", "height", "format", "prompt", "negative_prompt",
    "seed", "steps", "cfg", "sampler", "scheduler", "sampler_class", "scheduler_config", "model", "model_hash",
    "clip_skip", "denoising_strength", "init_image_sha256", "hires", "params", "generation", "source",
    "raw_metadata", "created_at", "nsfw", "nsfw_by", "nsfw_scores", "nsfw_key", "provenance",
)
_IMAGE_COLUMNS = tuple(c for c in _COLUMNS if c != "prompt")
_JSON_COLUMNS = {"scheduler_config", "hires", "params", "generation", "raw_metadata", "nsfw_scores", "provenance"}

_SELECT = """
SELECT i.*, coalesce(p.text, '') AS prompt
FROM images i LEFT JOIN prompts p ON p.id = i.prompt_id
"""


def _row_values(image: NewImage) -> tuple[Any, ...]:
    p = image.params
    values: dict[str, Any] = {
        "sha256": image.sha256, "path": image.path, "file_size": image.file_size, "file_mtime": image.file_mtime,
        "width": image.width, "height": image.height, "format": image.format,
        "prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": p.seed, "steps": p.steps,
        "cfg": p.cfg, "sampler": p.sampler, "scheduler": p.scheduler, "sampler_class": image.sampler_class,
        "scheduler_config": image.scheduler_config, "model": p.model, "model_hash": p.model_hash,
        "clip_skip": p.clip_skip, "denoising_strength": p.denoising_strength,
        "init_image_sha256": image.init_image_sha256,
        "hires": p.hires.model_dump(mode="json") if p.hires else None,
        "params": p.model_dump(mode="json"), "generation": image.generation, "source": image.source,
        "raw_metadata": image.raw_metadata, "created_at": image.created_at or datetime.now().astimezone(),
        "provenance": image.provenance, **_safety_values(image.safety),
    }
    return tuple(
        json.dumps(values[c], ensure_ascii=False) if c in _JSON_COLUMNS and values[c] is not None else values[c]
        for c in _COLUMNS
    )


def _safety_values(safety: SafetyScore | None) -> dict[str, Any]:
    if safety is None:
        return {"nsfw": None, "nsfw_by": None, "nsfw_scores": None, "nsfw_key": None}
    return {"nsfw": safety.score, "nsfw_by": safety.by, "nsfw_key": safety.key,
            "nsfw_scores": {name: s.model_dump() for name, s in safety.scores.items()}}


def safety_from_row(row: dict[str, Any]) -> SafetyScore | None:
    """The NSFW scores of a row of `images` (None when nothing scored it)."""
    if row.get("nsfw") is None and not row.get("nsfw_scores"):
        return None
    return SafetyScore(score=row.get("nsfw"), by=row.get("nsfw_by"), scores=row.get("nsfw_scores") or {},
                       key=row.get("nsfw_key"))


def image_from_row(row: dict[str, Any]) -> Image:
    """The Image of a row of `images` joined with its prompt text (`_SELECT`'s columns)."""
    params = GenerationParams.model_validate(row["params"] or {}).model_copy(update={"prompt": row["prompt"]})
    fields = {k: row[k] for k in NewImage.model_fields if k in row and k not in ("params", "safety")}
    return Image.model_validate(
        {**fields, "params": params, "id": row["id"], "prompt_id": row["prompt_id"], "imported_at": row["imported_at"],
         "missing": bool(row.get("missing", False)), "safety": safety_from_row(row)}
    )


def _prompt_id(conn: Conn, text: str, safety: SafetyScore | None = None) -> int | None:
    if not text:
        return None
    scored = safety.prompt_score() if safety is not None else None
    row = conn.execute(
        "INSERT INTO prompts (text, nsfw, nsfw_key) VALUES (%s, %s, %s) ON CONFLICT ((md5(text))) DO NOTHING "
        "RETURNING id", (text, scored.score if scored else None, scored.key if scored else None)
    ).fetchone()
    if row is None:
        row = conn.execute("SELECT id FROM prompts WHERE md5(text) = md5(%s)", (text,)).fetchone()
    return None if row is None else int(_first(row))


def _first(row: Any) -> Any:
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


def add_image(conn: Conn, *, image: NewImage) -> tuple[int, bool]:
    """Add one image; the same content (sha256) twice gives one row. Returns (id, created)."""
    values = dict(zip(_COLUMNS, _row_values(image), strict=True))
    prompt_id = _prompt_id(conn, values.pop("prompt"), image.safety)
    cols = [*values.keys(), "prompt_id"]
    query = sql.SQL("INSERT INTO images ({cols}) VALUES ({vals}) ON CONFLICT (sha256) DO NOTHING RETURNING id").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(cols)),
    )
    row = conn.execute(query, (*values.values(), prompt_id)).fetchone()
    if row is not None:
        return int(_first(row)), True
    existing = conn.execute("SELECT id FROM images WHERE sha256 = %s", (image.sha256,)).fetchone()
    if existing is None:  # pragma: no cover - only if the row was deleted between the two statements
        raise psycopg.errors.UniqueViolation(f"image {image.sha256} vanished while being added")
    return int(_first(existing)), False


_BATCH_TABLE = "staging_add"  # a temporary table of this session, emptied at each commit


def add_images(conn: Conn, *, images: Sequence[NewImage]) -> list[tuple[int, bool]]:
    """Add many images in four statements, in the caller's transaction: what `add_image` does for each in turn.

    The rows are copied into a temporary table, then their prompts and their images are inserted from it (a
    sha256 already in the corpus, or twice in the batch, gives one row: only its first occurrence is `created`).
    Returns (id, created) in the order of `images`. A value the database refuses (psycopg.DataError,
    IntegrityError) fails the whole call: to find which, run it in a savepoint and fall back to `add_image`.
    """
    if not images:
        return []
    columns = ", ".join(f"{c} {_staging_type(c)}" for c in _COLUMNS)
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_BATCH_TABLE} (ord integer, {columns}, prompt_nsfw real, "
                 "prompt_nsfw_key text) ON COMMIT DELETE ROWS")
    conn.execute(f"TRUNCATE {_BATCH_TABLE}")  # a second call in one transaction
    copy_sql = sql.SQL("COPY {} (ord, {}, prompt_nsfw, prompt_nsfw_key) FROM STDIN").format(
        sql.Identifier(_BATCH_TABLE), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)))
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for order, image in enumerate(images):
            scored = image.safety.prompt_score() if image.safety is not None else None
            copy.write_row((order, *_row_values(image), scored.score if scored else None,
                            scored.key if scored else None))
    conn.execute(  # a prompt's first occurrence gives its score, as add_image's would
        f"INSERT INTO prompts (text, nsfw, nsfw_key) SELECT DISTINCT ON (md5(prompt)) prompt, prompt_nsfw, "
        f"prompt_nsfw_key FROM {_BATCH_TABLE} WHERE prompt <> '' ORDER BY md5(prompt), ord "
        "ON CONFLICT ((md5(text))) DO NOTHING")
    # Scalar subqueries, not joins: the temporary table has no statistics, and each lookup must use the index.
    cols = sql.SQL(", ").join(map(sql.Identifier, _IMAGE_COLUMNS))
    scols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in _IMAGE_COLUMNS)
    found = conn.cursor(row_factory=tuple_row).execute(sql.SQL(
        "WITH added AS (INSERT INTO images ({cols}, prompt_id) "
        " SELECT DISTINCT ON (s.sha256) {scols}, CASE WHEN s.prompt <> '' THEN "
        "  (SELECT p.id FROM prompts p WHERE md5(p.text) = md5(s.prompt)) END "
        " FROM {table} s ORDER BY s.sha256, s.ord ON CONFLICT (sha256) DO NOTHING RETURNING id, sha256) "
        "SELECT s.ord, s.sha256, a.id AS added, (SELECT i.id FROM images i WHERE i.sha256 = s.sha256) AS existing "
        "FROM {table} s LEFT JOIN added a ON a.sha256 = s.sha256 ORDER BY s.ord"
    ).format(cols=cols, scols=scols, table=sql.Identifier(_BATCH_TABLE))).fetchall()
    late = [sha for _, sha, added, existing in found if added is None and existing is None]
    ids: dict[str, int] = {}
    if late:  # added by another session after this statement's snapshot was taken
        ids = dict(conn.cursor(row_factory=tuple_row).execute(
            "SELECT sha256, id FROM images WHERE sha256 = ANY(%s)", (late,)).fetchall())
    out: list[tuple[int, bool]] = []
    seen: set[str] = set()
    for _, sha, added, existing in found:
        first = sha not in seen
        seen.add(sha)
        image_id = added if added is not None else existing if existing is not None else ids[sha]
        out.append((int(image_id), added is not None and first))
    return out


def get_image(conn: Conn, *, image_id: int) -> Image | None:
    """One image by id, also when it is marked missing (its file routes answer 410 Gone)."""
    row = conn.execute(sql.SQL(_SELECT + " WHERE i.id = %s"), (image_id,)).fetchone()
    return None if row is None else image_from_row(row)


def get_image_by_sha256(conn: Conn, *, sha256: str) -> Image | None:
    row = conn.execute(sql.SQL(_SELECT + " WHERE i.sha256 = %s"), (sha256,)).fetchone()
    return None if row is None else image_from_row(row)


def get_images(conn: Conn, *, ids: Sequence[int]) -> dict[int, Image]:
    """Images by id; unknown ids and rows marked missing (no file holds them) are absent from the result."""
    if not ids:
        return {}
    rows = conn.execute(sql.SQL(_SELECT + " WHERE i.id = ANY(%s) AND NOT i.missing"), (list(ids),)).fetchall()
    return {row["id"]: image_from_row(row) for row in rows}


def filter_clause(filters: ImageFilter | None, alias: str = "i") -> tuple[sql.Composable, list[Any]]:
    """A WHERE clause and its parameters for the given filters.

    Always a clause with at least one parameter: rows marked missing (no file holds their content) are never
    listed or searched, so callers may append `AND ...` to it.
    """
    condition, args = filter_condition(filters, alias)
    return sql.SQL("WHERE ") + condition, args


def filter_condition(filters: ImageFilter | None, alias: str = "i") -> tuple[sql.Composable, list[Any]]:
    """The condition of `filter_clause` without its WHERE, to join with others by AND."""
    a = sql.Identifier(alias)
    parts: list[sql.Composable] = [sql.SQL("{}.missing = %s").format(a)]
    args: list[Any] = [False]
    if filters is None or filters.is_empty():
        return parts[0], args
    if filters.nsfw_below is not None:
        if filters.nsfw_complete:  # NULL scores fail the comparison: not scored, not shown
            parts.append(sql.SQL("{a}.nsfw_key IS NOT NULL AND {a}.nsfw < %s").format(a=a))
        else:
            parts.append(sql.SQL("({a}.nsfw IS NULL OR {a}.nsfw < %s)").format(a=a))
        args.append(filters.nsfw_below)
    checks: list[tuple[str, str, Any]] = [
        ("model", "=", filters.model), ("sampler", "=", filters.sampler), ("width", "=", filters.width),
        ("height", "=", filters.height), ("steps", ">=", filters.min_steps), ("steps", "<=", filters.max_steps),
        ("cfg", ">=", filters.min_cfg), ("cfg", "<=", filters.max_cfg), ("seed", "=", filters.seed),
        ("source", "=", filters.source), ("created_at", ">=", filters.since), ("created_at", "<", filters.until),
    ]
    for column, op, value in checks:
        if value is None:
            continue
        parts.append(sql.SQL("{}.{} {} %s").format(a, sql.Identifier(column), sql.SQL(op)))
        args.append(value)
    return sql.SQL(" AND ").join(parts), args


def filter_images(
    conn: Conn,
    *,
    filters: ImageFilter | None = None,
    order: Order = "newest",
    limit: int = 50,
    after: tuple[datetime, int] | None = None,
) -> list[Image]:
    """Images matching the filters, newest or oldest first; `after` is the (created_at, id) of the last seen row."""
    where, args = filter_clause(filters)
    direction = sql.SQL("DESC" if order == "newest" else "ASC")
    if after is not None:
        keyset = sql.SQL("(i.created_at, i.id) {} (%s, %s)").format(sql.SQL("<" if order == "newest" else ">"))
        where = where + sql.SQL(" AND ") + keyset
        args = [*args, *after]
    query = sql.SQL(_SELECT) + where + sql.SQL(" ORDER BY i.created_at {d}, i.id {d} LIMIT %s").format(d=direction)
    rows = conn.execute(query, (*args, limit)).fetchall()
    return [image_from_row(row) for row in rows]


def count_images(conn: Conn, *, filters: ImageFilter | None = None) -> int:
    where, args = filter_clause(filters)
    row = conn.execute(sql.SQL("SELECT count(*) FROM images i ") + where, args).fetchone()
    return int(_first(row)) if row else 0


def count_rows(conn: Conn) -> dict[str, int]:
    """Row counts of the main tables, for `promptdex db status`."""
    counts: dict[str, int] = {}
    for table in ("images", "prompts", "jobs", "index_entries"):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        counts[table] = int(_first(row)) if row else 0
    return counts


def iter_rows(images: Iterable[NewImage]) -> Iterator[tuple[Any, ...]]:
    for image in images:
        yield _row_values(image)


def bulk_load(conn: Conn, *, images: Iterable[NewImage] | None = None,
              rows: Iterable[Sequence[Any]] | None = None) -> int:
    """Load many images with COPY (duplicates by sha256 skipped). Returns how many rows were added.

    Pass `images` (NewImage records) or `rows` already shaped like `copy_columns()` (JSON columns as
    JSON text), which skips validation for synthetic corpora.
    """
    source = rows if rows is not None else iter_rows(images or [])
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE staging_images ("
            + ", ".join(f"{c} {_staging_type(c)}" for c in _COLUMNS)
            + ") ON COMMIT DROP"
        )
        copy_sql = sql.SQL("COPY staging_images ({}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
        )
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for row in source:
                copy.write_row(row)
        conn.execute(
            "INSERT INTO prompts (text) SELECT DISTINCT prompt FROM staging_images WHERE prompt <> '' "
            "ON CONFLICT ((md5(text))) DO NOTHING"
        )
        cols = sql.SQL(", ").join(map(sql.Identifier, _IMAGE_COLUMNS))
        scols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in _IMAGE_COLUMNS)
        inserted = conn.execute(
            sql.SQL(
                "INSERT INTO images ({cols}, prompt_id) "
                "SELECT DISTINCT ON (s.sha256) {scols}, p.id FROM staging_images s "
                "LEFT JOIN prompts p ON md5(p.text) = md5(s.prompt) AND s.prompt <> '' "
                "ORDER BY s.sha256 ON CONFLICT (sha256) DO NOTHING"
            ).format(cols=cols, scols=scols)
        )
        added = inserted.rowcount
    logger.info("bulk-loaded %d images", added)
    return added


def copy_columns() -> tuple[str, ...]:
    """The column order `bulk_load(rows=...)` expects."""
    return _COLUMNS


def _staging_type(column: str) -> str:
    types = {
        "file_size": "bigint", "file_mtime": "double precision", "width": "integer", "height": "integer",
        "seed": "numeric(20,0)", "steps": "integer", "cfg": "double precision", "clip_skip": "integer",
        "denoising_strength": "double precision", "created_at": "timestamptz", "nsfw": "real",
    }
    if column in _JSON_COLUMNS:
        return "jsonb"
    return types.get(column, "text")


def facets(conn: Conn, *, filters: ImageFilter | None = None) -> dict[str, Any]:
    """Distinct models, samplers and sizes of the images the filters let through, most used first, for menus."""
    cond, args = filter_condition(filters)

    def top(columns: str, limit: int) -> list[dict[str, Any]]:
        nonnull = sql.SQL(" AND ").join(sql.SQL("i.{} IS NOT NULL").format(sql.Identifier(c.strip()))
                                        for c in columns.split(","))
        query = sql.SQL("SELECT " + columns + " FROM images i WHERE {n} AND {c} GROUP BY " + columns
                        + " ORDER BY count(*) DESC LIMIT %s").format(n=nonnull, c=cond)
        return conn.execute(query, (*args, limit)).fetchall()

    return {"models": [r["model"] for r in top("model", 200)], "samplers": [r["sampler"] for r in top("sampler", 100)],
            "sizes": [[r["width"], r["height"]] for r in top("width, height", 50)]}


# -- where image files are: the paths `promptdex import` recorded, rows whose file changed or vanished ------------

_LOCATION = "SELECT id, sha256, path, file_size, file_mtime, missing FROM images"


def image_location(conn: Conn, *, image_id: int) -> ImageLocation | None:
    """The path, file facts and missing flag of one image, or None for an unknown id."""
    row = conn.execute(_LOCATION + " WHERE id = %s", (image_id,)).fetchone()
    return None if row is None else ImageLocation.model_validate(row)


def move_image(conn: Conn, *, image_id: int, path: str, file_size: int, file_mtime: float) -> None:
    """Point an image at a file that holds its content (and clear its missing mark)."""
    conn.execute("UPDATE images SET path = %s, file_size = %s, file_mtime = %s, missing = false WHERE id = %s",
                 (path, file_size, file_mtime, image_id))


def mark_missing(conn: Conn, *, image_id: int) -> None:
    """No file holds this image's content any more: hide it from search; its files answer 410 Gone."""
    conn.execute("UPDATE images SET missing = true WHERE id = %s", (image_id,))


def file_records(conn: Conn, *, paths: Sequence[str]) -> dict[str, FileRecord]:
    """What the last import recorded for each of `paths` (paths never seen are absent)."""
    found: dict[str, FileRecord] = {}
    for start in range(0, len(paths), 2000):
        rows = conn.execute("SELECT * FROM imported_files WHERE path = ANY(%s)",
                            (list(paths[start:start + 2000]),)).fetchall()
        found.update((row["path"], FileRecord.model_validate(row)) for row in rows)
    return found


def current_files(conn: Conn, *, paths: Sequence[str]) -> dict[str, tuple[int, float]]:
    """(size, mtime) by path of images (not marked missing) whose `path` is one of `paths`."""
    found: dict[str, tuple[int, float]] = {}
    for start in range(0, len(paths), 2000):
        rows = conn.execute(
            "SELECT path, file_size, file_mtime FROM images WHERE path = ANY(%s) AND NOT missing "
            "AND file_size IS NOT NULL AND file_mtime IS NOT NULL", (list(paths[start:start + 2000]),)).fetchall()
        found.update((row["path"], (int(row["file_size"]), float(row["file_mtime"]))) for row in rows)
    return found


_RECORD_FILE = (
    "INSERT INTO imported_files (path, file_size, file_mtime, sha256, image_id, status, error) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (path) DO UPDATE SET file_size = EXCLUDED.file_size, "
    "file_mtime = EXCLUDED.file_mtime, sha256 = EXCLUDED.sha256, image_id = EXCLUDED.image_id, "
    "status = EXCLUDED.status, error = EXCLUDED.error, seen_at = now()")


def _record_values(record: FileRecord) -> tuple[Any, ...]:
    return (record.path, record.file_size, record.file_mtime, record.sha256, record.image_id, str(record.status),
            record.error)


def record_file(conn: Conn, *, record: FileRecord) -> None:
    """Remember what an import found at a path (replacing what was recorded there before)."""
    conn.execute(_RECORD_FILE, _record_values(record))


def record_files(conn: Conn, *, records: Sequence[FileRecord]) -> None:
    """`record_file` for many paths, in one pipelined round of statements."""
    if records:
        with conn.cursor() as cur:
            cur.executemany(_RECORD_FILE, [_record_values(r) for r in records])


def other_copies(conn: Conn, *, image_id: int, besides: str) -> list[FileRecord]:
    """Other paths recorded as holding this image's content, oldest first."""
    rows = conn.execute(
        "SELECT * FROM imported_files WHERE image_id = %s AND path <> %s AND status <> %s ORDER BY seen_at, path",
        (image_id, besides, str(FileStatus.ERROR))).fetchall()
    return [FileRecord.model_validate(row) for row in rows]


def recorded_under(conn: Conn, *, roots: Sequence[str]) -> list[str]:
    """Recorded paths (import records, and images not marked missing) equal to or inside any of `roots`."""
    prefixes = [root.rstrip("/") + "/" for root in roots]
    rows = conn.execute(
        "WITH r AS (SELECT unnest(%s::text[]) AS root, unnest(%s::text[]) AS prefix) "
        "SELECT f.path FROM imported_files f JOIN r ON f.path = r.root OR starts_with(f.path, r.prefix) "
        "UNION SELECT i.path FROM images i JOIN r ON i.path = r.root OR starts_with(i.path, r.prefix) "
        "WHERE NOT i.missing ORDER BY path", (list(roots), prefixes)).fetchall()
    return [row["path"] for row in rows]


def forget_file(conn: Conn, *, path: str) -> None:
    """Drop the import record of a path whose file is gone."""
    conn.execute("DELETE FROM imported_files WHERE path = %s", (path,))


def image_paths(conn: Conn, *, image_id: int) -> list[str]:
    """Every file that holds this image's content now: its own path first, then the other recorded copies (import
    records that are not errors), each once."""
    rows = conn.execute(
        "SELECT path, 0 AS rank, now() AS seen FROM images WHERE id = %s AND NOT missing "
        "UNION ALL SELECT path, 1, seen_at FROM imported_files WHERE image_id = %s AND status <> %s "
        "ORDER BY rank, seen, path", (image_id, image_id, str(FileStatus.ERROR))).fetchall()
    return list(dict.fromkeys(row["path"] for row in rows))


def images_at(conn: Conn, *, path: str) -> list[int]:
    """Ids of the images (not marked missing) whose file is `path`."""
    rows = conn.execute("SELECT id FROM images WHERE path = %s AND NOT missing ORDER BY id", (path,)).fetchall()
    return [int(row["id"]) for row in rows]


# -- NSFW scores: what `promptdex safety rescore` and `index` read and write ----------------------------------------

_STALE = """
SELECT i.id, i.sha256, i.path, i.missing, i.nsfw_scores, i.prompt_id, coalesce(p.text, '') AS prompt,
       p.nsfw AS prompt_nsfw, p.nsfw_key AS prompt_nsfw_key
FROM images i LEFT JOIN prompts p ON p.id = i.prompt_id
"""


def stale_safety(conn: Conn, *, key: str, after_id: int = 0, limit: int = 256,
                 ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Images whose scores were not all made under `key` (the classifier set's), in id order after `after_id`
    (or among `ids`): id, sha256, path, missing, nsfw_scores, prompt_id, prompt, prompt_nsfw, prompt_nsfw_key."""
    if ids is not None:
        return conn.execute(_STALE + " WHERE i.id = ANY(%s) AND i.nsfw_key IS DISTINCT FROM %s ORDER BY i.id",
                            (list(ids), key)).fetchall()
    return conn.execute(_STALE + " WHERE i.id > %s AND i.nsfw_key IS DISTINCT FROM %s ORDER BY i.id LIMIT %s",
                        (after_id, key, limit)).fetchall()


def count_stale_safety(conn: Conn, *, key: str) -> int:
    row = conn.execute("SELECT count(*) FROM images WHERE nsfw_key IS DISTINCT FROM %s", (key,)).fetchone()
    return int(_first(row)) if row else 0


def set_safety(conn: Conn, *, scores: Sequence[tuple[int, SafetyScore]],
               prompts: Sequence[tuple[int, float, str]] = ()) -> None:
    """Write images' scores ((id, score) pairs) and prompts' ((prompt id, score, key)), in one transaction."""
    with conn.transaction(), conn.cursor() as cur:
        if prompts:
            cur.executemany("UPDATE prompts SET nsfw = %s, nsfw_key = %s WHERE id = %s",
                            [(score, key, pid) for pid, score, key in prompts])
        if scores:
            cur.executemany(
                "UPDATE images SET nsfw = %s, nsfw_by = %s, nsfw_scores = %s, nsfw_key = %s WHERE id = %s",
                [(v["nsfw"], v["nsfw_by"], json.dumps(v["nsfw_scores"]), v["nsfw_key"], image_id)
                 for image_id, safety in scores for v in [_safety_values(safety)]])


def safety_counts(conn: Conn, *, key: str, strict: float, moderate: float) -> dict[str, int]:
    """How many images are scored under `key`, stale or never scored, flagged, and hidden in moderate mode."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE nsfw_key = %s) AS current, "
        "count(*) FILTER (WHERE nsfw_key IS DISTINCT FROM %s AND nsfw_scores IS NOT NULL) AS stale, "
        "count(*) FILTER (WHERE nsfw_scores IS NULL) AS unscored, "
        "count(*) FILTER (WHERE nsfw >= %s) AS flagged, count(*) FILTER (WHERE nsfw >= %s) AS explicit "
        "FROM images WHERE NOT missing", (key, key, strict, moderate)).fetchone()
    return {k: int(v) for k, v in (row or {}).items()}
