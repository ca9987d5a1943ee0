"""PostgreSQL keyword index: ranked full-text search over distinct prompts, with typo and prefix tolerance.

`prompts.tsv` (a generated tsvector with a GIN index) does the matching and ranking. Typos are fixed from a
vocabulary of prompt words (`prompt_terms`) by trigram similarity: with the pg_trgm extension when it can be
created, else with our own trigram arrays (GIN on text[]), which work on any PostgreSQL. The last query word
also matches as a prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from indexer.keyword.base import (
    Conn,
    ConnectionSource,
    count_pending,
    ensure_state,
    mark_indexed,
    pending_prompts,
    query_words,
    rows,
)

logger = logging.getLogger(__name__)

TS_CONFIG = "english"  # the configuration of prompts.tsv (migration 0002)
SIMILARITY = 0.3  # pg_trgm's default similarity threshold
MAX_ALTERNATIVES = 3
MAX_TERM_LENGTH = 40

_VOCABULARY = (
    "INSERT INTO prompt_terms (term, prompts) "
    "SELECT w, count(*) FROM prompts p, unnest(tsvector_to_array(to_tsvector('simple', p.text))) AS w "
    "WHERE p.id = ANY(%s) AND length(w) BETWEEN 2 AND %s GROUP BY w "
    "ON CONFLICT (term) DO UPDATE SET prompts = prompt_terms.prompts + EXCLUDED.prompts"
)
_OWN_TRIGRAMS = (
    "WITH q AS (SELECT promptdex_trigrams(%(w)s) AS t) "
    "SELECT term FROM (SELECT term, prompts, "
    " cardinality(ARRAY(SELECT unnest(trigrams) INTERSECT SELECT unnest(q.t)))::float8 "
    " / greatest(cardinality(ARRAY(SELECT unnest(trigrams) UNION SELECT unnest(q.t))), 1) AS sim "
    " FROM prompt_terms, q WHERE trigrams && q.t) s "
    "WHERE sim >= %(s)s ORDER BY sim DESC, prompts DESC, term LIMIT %(n)s"
)
_PG_TRGM = (
    "SELECT term FROM prompt_terms WHERE term %% %(w)s AND similarity(term, %(w)s) >= %(s)s "
    "ORDER BY similarity(term, %(w)s) DESC, prompts DESC, term LIMIT %(n)s"
)
# Ranked search in two tiers. First the prompts holding every query word (the AND of the groups), then, only
# when those are fewer than the limit, the prompts holding some of them (the OR). Each tier ranks at most
# CANDIDATES matching prompts, so a query made of words found in half the corpus costs the same as a rare one:
# exact whenever a tier matches no more than CANDIDATES prompts, else the best of the first CANDIDATES matches.
CANDIDATES = 300
DENSE_FACTOR = 8
# The tsqueries are written inline (not in a CTE) so the planner sees them and uses the column's statistics: a
# rare word goes through the GIN index, a word found in half the prompts is found faster by reading prompts in
# order until CANDIDATES match.
_SEARCH = (
    "WITH groups AS MATERIALIZED (SELECT q FROM (SELECT to_tsquery(%(cfg)s::regconfig, g) AS q "
    " FROM unnest(%(groups)s::text[]) g) s WHERE numnode(q) > 0), "
    "cand AS MATERIALIZED (SELECT p.id, p.tsv FROM prompts p "
    " WHERE numnode(to_tsquery(%(cfg)s::regconfig, %(match)s)) > 0 "
    " AND p.tsv @@ to_tsquery(%(cfg)s::regconfig, %(match)s) "
    " AND NOT p.id = ANY(%(seen)s::bigint[]) LIMIT %(cap)s) "
    "SELECT c.id, (SELECT count(*) FROM groups WHERE c.tsv @@ groups.q) AS hits, "
    " ts_rank_cd(c.tsv, to_tsquery(%(cfg)s::regconfig, %(any)s), 33) AS rank "
    "FROM cand c ORDER BY hits DESC, rank DESC, c.id LIMIT %(limit)s"
)


def _tier(conn: Conn, params: dict[str, Any], *, sequential: bool) -> list[dict[str, Any]]:
    """One ranked tier. Never a prepared statement: the plan must be made for these words (a generic plan cannot
    see how common they are). `sequential` when its matches are dense: reading prompts in order finds the cap
    before the GIN index has merged long posting lists (planner settings local to the statement's transaction)."""

    def run() -> list[dict[str, Any]]:
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(_SEARCH, params, prepare=False).fetchall()

    if not sequential or not conn.autocommit:
        return run()
    with conn.transaction():
        conn.execute("SET LOCAL enable_bitmapscan = off")
        conn.execute("SET LOCAL enable_indexscan = off")
        return run()


def _dense(words: list[str], counts: dict[str, int], total: float, cap: int) -> bool:
    """Whether prompts holding every word are so many (DENSE_FACTOR x cap, if the words were independent; words of
    one query go together more often than that) that a sequential read finds `cap` of them before the GIN index
    has merged the words' long posting lists. One-letter words are left out of the estimate."""
    counted = [w for w in words if len(w) >= 2]
    if total <= 0 or not counted or any(w not in counts for w in counted):
        return False
    expected = total
    for word in counted:
        expected *= counts[word] / total
    return expected >= DENSE_FACTOR * cap


def _quote(word: str) -> str:
    """A word as a tsquery operand (our words are \\w+, so they hold no quote or backslash)."""
    return "'" + word.replace("'", "''").replace("\\", "\\\\") + "'"


class PostgresKeywordIndex:
    """The default keyword back end. `connect()` gives a connection (a pool's `connection`, or `db.connect`)."""

    backend = "postgres"

    def __init__(self, connect: ConnectionSource) -> None:
        self._connect = connect
        self._pg_trgm: bool | None = None

    @property
    def state_name(self) -> str:
        return "keyword-postgres"

    def _has_pg_trgm(self, conn: Conn) -> bool:
        if self._pg_trgm is None:
            found = rows(conn, "SELECT count(*) AS n FROM pg_extension WHERE extname = 'pg_trgm'")
            self._pg_trgm = bool(found and found[0]["n"])
        return self._pg_trgm

    def enable_pg_trgm(self, conn: Conn) -> bool:
        """Create pg_trgm and its index on the vocabulary when the server allows; False (no error) when not."""
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                conn.execute("CREATE INDEX IF NOT EXISTS prompt_terms_term_trgm ON prompt_terms "
                             "USING gin (term gin_trgm_ops)")
        except psycopg.Error as exc:
            logger.info("pg_trgm is not available (%s); using promptdex's own trigram table",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self._pg_trgm = False
            return False
        self._pg_trgm = True
        return True

    def update(self, conn: Conn, *, batch: int = 5000, progress: Callable[[int], None] | None = None) -> int:
        """Add the words of every prompt not indexed yet to the vocabulary; each batch commits with its record."""
        ensure_state(conn, self.state_name, self.backend)
        self.enable_pg_trgm(conn)
        done = 0
        while True:
            with conn.transaction():
                todo = pending_prompts(conn, self.state_name, batch)
                if not todo:
                    break
                ids = [i for i, _ in todo]
                conn.execute(_VOCABULARY, (ids, MAX_TERM_LENGTH))
                mark_indexed(conn, self.state_name, ids)
            done += len(ids)
            if progress is not None:
                progress(len(ids))
        return done

    def pending(self, conn: Conn) -> int:
        return count_pending(conn, self.state_name)

    def rebuild(self, conn: Conn) -> None:
        """Forget the vocabulary; the next `update` recounts every prompt."""
        with conn.transaction():
            conn.execute("DELETE FROM prompt_terms")
            conn.execute("DELETE FROM index_bundles WHERE name = %s", (self.state_name,))

    def _alternatives(self, conn: Conn, word: str) -> list[str]:
        """Vocabulary words close to a word that is not in the vocabulary (typos)."""
        if len(word) < 3:
            return []
        sql = _PG_TRGM if self._has_pg_trgm(conn) else _OWN_TRIGRAMS
        return [str(r["term"]) for r in rows(conn, sql, {"w": word, "s": SIMILARITY, "n": MAX_ALTERNATIVES})]

    def _vocabulary(self, conn: Conn, words: list[str]) -> tuple[dict[str, int], float]:
        """How many prompts hold each word (the vocabulary's counts) and about how many prompts there are."""
        known = [w for w in words if len(w) >= 2]
        if not known:
            return {}, 0.0
        found = rows(conn, "SELECT term, prompts, (SELECT reltuples FROM pg_class WHERE oid = 'prompts'::regclass) "
                           "AS total FROM prompt_terms WHERE term = ANY(%s)", (known,))
        return {str(r["term"]): int(r["prompts"]) for r in found}, float(found[0]["total"]) if found else 0.0

    def _groups(self, conn: Conn, words: list[str], counts: dict[str, int]) -> list[str]:
        groups = []
        for i, word in enumerate(words):
            # the last word may be unfinished: a prefix, from 3 letters (a 1-letter prefix matches half the words)
            operands = [_quote(word) + (":*" if i == len(words) - 1 and len(word) >= 3 else "")]
            if word not in counts:
                operands += [_quote(alt) for alt in self._alternatives(conn, word)]
            groups.append(" | ".join(operands))
        return groups

    def build_query(self, conn: Conn, query: str) -> list[str]:
        """One tsquery text per query word: the word, its typo alternatives, and a prefix match for the last."""
        words = query_words(query)
        return self._groups(conn, words, self._vocabulary(conn, words)[0])

    def search(self, query: str, limit: int = 50) -> list[tuple[int, float]]:
        """Prompt ids and scores, best first. Score = query words matched + a rank in [0, 1) (ts_rank_cd)."""
        if limit < 1:
            return []
        words = query_words(query)
        with self._connect() as conn:
            counts, total = self._vocabulary(conn, words)
            groups = self._groups(conn, words, counts)
            if not groups:
                return []
            params = {"cfg": TS_CONFIG, "groups": groups, "limit": limit, "cap": max(CANDIDATES, limit),
                      "any": " | ".join(f"({g})" for g in groups), "seen": []}
            tier = {**params, "match": " & ".join(f"({g})" for g in groups)}
            found = _tier(conn, tier, sequential=_dense(words, counts, total, max(CANDIDATES, limit)))
            if len(found) < limit and len(groups) > 1:  # too few hold every word: add those holding some
                seen = [int(r["id"]) for r in found]
                common = max((counts.get(w, 0) for w in words), default=0) >= DENSE_FACTOR * CANDIDATES
                found += _tier(conn, {**params, "match": params["any"], "seen": seen, "limit": limit - len(found)},
                               sequential=common)
        return [(int(r["id"]), float(r["hits"]) + float(r["rank"])) for r in found]

    def suggest(self, prefix: str, limit: int = 10) -> list[str]:
        """Vocabulary words starting with `prefix`, most used first."""
        words = query_words(prefix)
        if not words or limit < 1:
            return []
        pattern = words[-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._connect() as conn:
            found = rows(conn, "SELECT term FROM prompt_terms WHERE term LIKE %s ORDER BY prompts DESC, term "
                               "LIMIT %s", (pattern, limit))
        return [str(r["term"]) for r in found]

