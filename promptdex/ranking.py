"""Ranked image search in one statement: candidate lists filtered, fused, ordered and their rows, in rank order.

A search hands over what its rankers found (prompt ids from the keyword index or the prompt bundle, image ids from
the image bundle) and gets back, from one round trip, the images that pass the filters in their final order, with
what near-duplicate collapsing needs (the perceptual hash) for every candidate and the full rows of those in the
window the caller is about to show. The snapshot (the largest image id) is taken by the same statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from promptdex.records import Image, ImageFilter
from promptdex.store import filter_condition, image_from_row

Conn = psycopg.Connection[Any]


class Source(StrEnum):
    """What a candidate list holds: prompt ids (each stands for its newest images), image ids, or every image."""

    PROMPTS = "prompts"
    IMAGES = "images"
    ALL = "all"


class Sort(StrEnum):
    """The order of a ranked search (the API's `sort`)."""

    RELEVANCE = "relevance"
    NEWEST = "newest"
    OLDEST = "oldest"
    RANDOM = "random"


@dataclass(frozen=True)
class Candidates:
    """One ranked list, best first. PROMPTS and IMAGES lists hold ids; an ALL list holds none."""

    source: Source
    ids: Sequence[int] = ()


@dataclass(frozen=True)
class RankedImage:
    """A candidate in final order: its fused score, its prompt and hash, and its row when inside the window."""

    id: int
    score: float
    prompt_id: int | None
    phash: int | None
    image: Image | None


@dataclass(frozen=True)
class Ranking:
    images: list[RankedImage]
    max_id: int  # the snapshot: no image with a larger id was considered
    kept: list[int]  # how many of each list passed the filters (at most `per_list`)


_COLUMNS = "i.id, i.prompt_id, i.phash, i.created_at"

_ORDER = {
    Sort.RELEVANCE: "f.score DESC, f.id DESC",
    Sort.NEWEST: "f.created_at DESC, f.id DESC",
    Sort.OLDEST: "f.created_at, f.id",
    Sort.RANDOM: "sha256(convert_to(%s || ':' || f.id::text, 'UTF8'))",
}


def _list_cte(name: str, candidates: Candidates, cond: sql.Composable, cond_args: list[Any],
              per_list: int) -> tuple[sql.Composable, list[Any]]:
    snap = sql.SQL("i.id <= (SELECT m FROM snap)")
    ident = sql.Identifier(name)
    if candidates.source is Source.PROMPTS:
        # the newest `per_list` images of each prompt at most (index images_prompt_recent): a popular prompt's
        # thousands of images are never all read
        query = sql.SQL(
            "{n} AS MATERIALIZED (SELECT x.*, row_number() OVER (ORDER BY k.r, x.id DESC) AS r "
            "FROM unnest(%s::bigint[]) WITH ORDINALITY AS k(pid, r) CROSS JOIN LATERAL "
            "(SELECT " + _COLUMNS + " FROM images i WHERE {c} AND i.prompt_id = k.pid AND {s} "
            "ORDER BY i.id DESC LIMIT %s) x ORDER BY k.r, x.id DESC LIMIT %s)"
        ).format(n=ident, c=cond, s=snap)
        return query, [list(candidates.ids), *cond_args, per_list, per_list]
    if candidates.source is Source.IMAGES:
        query = sql.SQL(
            "{n} AS MATERIALIZED (SELECT " + _COLUMNS + ", row_number() OVER (ORDER BY k.r) AS r "
            "FROM unnest(%s::bigint[]) WITH ORDINALITY AS k(id, r) JOIN images i ON i.id = k.id "
            "WHERE {c} AND {s} ORDER BY k.r LIMIT %s)"
        ).format(n=ident, c=cond, s=snap)
        return query, [list(candidates.ids), *cond_args, per_list]
    query = sql.SQL(
        "{n} AS MATERIALIZED (SELECT " + _COLUMNS + ", row_number() OVER () AS r FROM images i "
        "WHERE {c} AND {s} LIMIT %s)"
    ).format(n=ident, c=cond, s=snap)
    return query, [*cond_args, per_list]


def rank_images(
    conn: Conn,
    *,
    lists: Sequence[Candidates],
    filters: ImageFilter | None,
    max_id: int | None,
    per_list: int,
    order: Sort = Sort.RELEVANCE,
    seed: int = 0,
    rows: tuple[int, int] = (0, 0),
    rrf_k: int = 60,
) -> Ranking:
    """Every image the lists hold that passes the filters and the snapshot, in final order, in one statement.

    Each list keeps its first `per_list` survivors (a PROMPTS list: the newest `per_list` images of each prompt,
    in prompt order, `per_list` in all). The lists are fused by reciprocal rank (the sum of 1/(rrf_k + rank), added
    in list order, so the score equals the one computed in Python), then ordered: RELEVANCE by score (ties: larger
    id first), NEWEST/OLDEST by creation time then id, RANDOM by sha256 of "seed:id". `max_id` None takes the
    snapshot now. Full rows come for the candidates at positions rows[0] <= position < rows[1].
    """
    if not lists:
        raise ValueError("rank_images: at least one candidate list is needed")
    cond, cond_args = filter_condition(filters)
    ctes: list[sql.Composable] = [
        sql.SQL("snap AS MATERIALIZED (SELECT coalesce(%s::bigint, (SELECT max(id) FROM images), 0) AS m)")]
    args: list[Any] = [max_id]
    names = [f"l{j}" for j in range(len(lists))]
    for name, candidates in zip(names, lists, strict=True):
        cte, cte_args = _list_cte(name, candidates, cond, cond_args, per_list)
        ctes.append(cte)
        args += cte_args
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {j} AS l, * FROM {n}").format(j=sql.Literal(j), n=sql.Identifier(n))
        for j, n in enumerate(names))
    ctes.append(sql.SQL(
        "fused AS MATERIALIZED (SELECT id, sum(1.0::float8 / (%s::integer + r)::float8 ORDER BY l, r) AS score, "
        "min(prompt_id) AS prompt_id, min(phash) AS phash, min(created_at) AS created_at FROM ({u}) u GROUP BY id)"
    ).format(u=union))
    args.append(rrf_k)
    ctes.append(sql.SQL("ordered AS MATERIALIZED (SELECT f.*, row_number() OVER (ORDER BY "
                        + _ORDER[order] + ") - 1 AS pos FROM fused f)"))
    if order is Sort.RANDOM:
        args.append(str(seed))
    # the full rows of the window only: the others are never read
    ctes.append(sql.SQL(
        "win AS MATERIALIZED (SELECT i.*, coalesce(p.text, '') AS prompt FROM ordered o JOIN images i ON i.id = o.id "
        "LEFT JOIN prompts p ON p.id = i.prompt_id WHERE o.pos >= %s AND o.pos < %s)"))
    args += [rows[0], rows[1]]
    kept = sql.SQL(", ").join(sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(n)) for n in names)
    query = sql.SQL("WITH ") + sql.SQL(", ").join(ctes) + sql.SQL(
        " SELECT s.m AS rank_max_id, ARRAY[{k}] AS rank_kept, o.pos AS rank_pos, o.id AS rank_id, "
        "o.score AS rank_score, o.prompt_id AS rank_prompt_id, o.phash AS rank_phash, w.* "
        "FROM snap s LEFT JOIN ordered o ON true LEFT JOIN win w ON w.id = o.id ORDER BY o.pos"
    ).format(k=kept)
    # the same text for every search of this shape: prepared once per connection (no word frequencies here for a
    # generic plan to miss: the candidate ids are looked up by primary key or by (prompt_id, id))
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(query, args, prepare=True).fetchall()
    first = found[0]
    images = [
        RankedImage(int(r["rank_id"]), float(r["rank_score"]), r["rank_prompt_id"], r["rank_phash"],
                    image_from_row(r) if r["sha256"] is not None else None)
        for r in found if r["rank_id"] is not None
    ]
    return Ranking(images, int(first["rank_max_id"]), [int(n) for n in first["rank_kept"]])
