"""PostgreSQL keyword index: ranked full-text search over distinct prompts, with typo and prefix tolerance.

`prompts.tsv` (a generated tsvector with a GIN index) does the matching and ranking. Typos are fixed from a
vocabulary of prompt words (`prompt_terms`) by trigram similarity: with the pg_trgm extension when it can be
created, else with our own trigram arrays (GIN on text[]), which work on any PostgreSQL. The last query word
also matches as a prefix.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
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
# Both tiers are one statement (the second is skipped by the server when the first is full), which also returns
# the vocabulary's version, so a search is one round trip once its words' counts are cached.
CANDIDATES = 300
DENSE_FACTOR = 40
CORRELATION = 2.5
MAX_CACHED_WORDS = 100_000
# The tsqueries are written inline (not in a CTE) so the planner sees them and uses the column's statistics: a
# rare word goes through the GIN index, a word found in half the prompts is found faster by reading prompts in
# order until CANDIDATES match ({match1} and {match2} are `_MATCH` or `_MATCH_IN_ORDER`).
_SEARCH = (
    "WITH groups AS MATERIALIZED (SELECT q FROM (SELECT to_tsquery(%(cfg)s::regconfig, g) AS q "
    " FROM unnest(%(groups)s::text[]) g) s WHERE numnode(q) > 0), "
    "c1 AS MATERIALIZED (SELECT p.id, p.tsv FROM prompts p "
    " WHERE numnode(to_tsquery(%(cfg)s::regconfig, %(all)s)) > 0 AND {match1} LIMIT %(cap)s), "
    "t1 AS MATERIALIZED (SELECT c.id, (SELECT count(*) FROM groups WHERE c.tsv @@ groups.q) AS hits, "
    " ts_rank_cd(c.tsv, to_tsquery(%(cfg)s::regconfig, %(any)s), 33) AS rank "
    " FROM c1 c ORDER BY hits DESC, rank DESC, c.id LIMIT %(limit)s), "
    "c2 AS MATERIALIZED (SELECT p.id, p.tsv FROM prompts p "
    " WHERE %(two)s AND (SELECT count(*) FROM t1) < %(limit)s "
    " AND numnode(to_tsquery(%(cfg)s::regconfig, %(any)s)) > 0 AND {match2} "
    " AND p.id NOT IN (SELECT id FROM t1) LIMIT %(cap)s), "
    "t2 AS MATERIALIZED (SELECT c.id, (SELECT count(*) FROM groups WHERE c.tsv @@ groups.q) AS hits, "
    " ts_rank_cd(c.tsv, to_tsquery(%(cfg)s::regconfig, %(any)s), 33) AS rank "
    " FROM c2 c ORDER BY hits DESC, rank DESC, c.id LIMIT greatest(%(limit)s - (SELECT count(*) FROM t1), 0)) "
    "SELECT v.version, r.id, r.hits, r.rank FROM (SELECT " + "{version}" + " AS version) v LEFT JOIN "
    " (SELECT 1 AS tier, * FROM t1 UNION ALL SELECT 2 AS tier, * FROM t2) r ON true "
    "ORDER BY r.tier, r.hits DESC, r.rank DESC, r.id"
)
_MATCH = "p.tsv @@ to_tsquery(%(cfg)s::regconfig, %({q})s)"
# the same test as an expression no index can answer: the planner reads prompts in order (the GIN index would
# first merge the words' long posting lists)
_MATCH_IN_ORDER = "(p.tsv @@ to_tsquery(%(cfg)s::regconfig, %({q})s)) IS TRUE"
# The vocabulary's version: its state row changes in every transaction that changes prompt_terms (`update` records
# what it indexed there, `rebuild` deletes it).
_VERSION = "(SELECT b.updated_at::text || '/' || b.count::text FROM index_bundles b WHERE b.name = %(state)s)"
_COUNTS = (
    "SELECT w.term, t.prompts, (SELECT reltuples FROM pg_class WHERE oid = 'prompts'::regclass) AS total, "
    + _VERSION + " AS version FROM unnest(%(words)s::text[]) AS w(term) LEFT JOIN prompt_terms t ON t.term = w.term"
)


def _dense(words: list[str], counts: dict[str, int], total: float, cap: int) -> bool:
    """Whether prompts holding every word are so many (DENSE_FACTOR x cap) that a sequential read finds `cap` of
    them before the GIN index has collected them all (about 0.4 us a matching row, against 0.6 us a row read in
    order: even at 1M images the index wins below a few percent of the prompts). One word's count is exact; for
    several, words of one query go together far more often than independence says ("sharp focus"), so the
    estimate is the geometric mean of the independent one and the rarest word's count, times CORRELATION.
    Measured on the benchmark's 300,000 prompts. One-letter words are left out of the estimate."""
    counted = [w for w in words if len(w) >= 2]
    if total <= 0 or not counted or any(w not in counts for w in counted):
        return False
    independent = total
    for word in counted:
        independent *= counts[word] / total
    rarest = min(counts[w] for w in counted)
    expected = rarest if len(counted) == 1 else (independent * rarest) ** 0.5 * CORRELATION
    return expected >= DENSE_FACTOR * cap


def _quote(word: str) -> str:
    """A word as a tsquery operand (our words are \\w+, so they hold no quote or backslash)."""
    return "'" + word.replace("'", "''").replace("\\", "\\\\") + "'"


_UNKNOWN = object()  # the version of a cache that holds nothing yet


@dataclass(frozen=True)
class _Words:
    """What the vocabulary says about a query's words: prompt counts of those it holds, typo alternatives of
    those it does not, about how many prompts there are, and the vocabulary version that was read."""

    version: object
    total: float
    counts: dict[str, int]
    alternatives: dict[str, tuple[str, ...]]


class _WordCache:
    """The vocabulary's facts about words, kept in-process for one version of the vocabulary (least recently used
    words dropped past `size`); a search that sees another version empties it."""

    def __init__(self, size: int = MAX_CACHED_WORDS) -> None:
        self.size = size
        self.version: object = _UNKNOWN
        self.total = 0.0
        self._entries: OrderedDict[str, tuple[int | None, tuple[str, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, words: list[str]) -> tuple[object, float, dict[str, tuple[int | None, tuple[str, ...]]]]:
        with self._lock:
            found = {}
            for word in words:
                entry = self._entries.get(word)
                if entry is not None:
                    self._entries.move_to_end(word)
                    found[word] = entry
            return self.version, self.total, found

    def put(self, version: object, total: float, entries: dict[str, tuple[int | None, tuple[str, ...]]]) -> None:
        with self._lock:
            if version != self.version:
                self._entries.clear()
                self.version = version
            self.total = total
            self._entries.update(entries)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self.version = _UNKNOWN


class PostgresKeywordIndex:
    """The default keyword back end. `connect()` gives a connection (a pool's `connection`, or `db.connect`)."""

    backend = "postgres"

    def __init__(self, connect: ConnectionSource) -> None:
        self._connect = connect
        self._pg_trgm: bool | None = None
        self._words = _WordCache()

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
        self._words.reset()  # other processes see the new version in their next search
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
        self._words.reset()

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
        found = rows(conn, _COUNTS, {"words": known, "state": self.state_name})
        counts = {str(r["term"]): int(r["prompts"]) for r in found if r["prompts"] is not None}
        return counts, float(found[0]["total"]) if found else 0.0

    def _lookup(self, conn: Conn, words: list[str]) -> _Words:
        """The vocabulary's facts about the words: from the cache, the words it lacks read in one statement (and
        the typo alternatives of those the vocabulary lacks). A vocabulary changed since the cache was filled
        empties it, and every word is read again."""
        known = list(dict.fromkeys(w for w in words if len(w) >= 2))
        version, total, entries = self._words.get(known)
        missing = [w for w in known if w not in entries]
        if missing:
            found = rows(conn, _COUNTS, {"words": missing, "state": self.state_name})
            read_version, total = found[0]["version"], float(found[0]["total"])
            if read_version != version and entries:  # the cached words are of another vocabulary: read them too
                self._words.reset()
                return self._lookup(conn, words)
            new = {str(r["term"]): (None if r["prompts"] is None else int(r["prompts"]),
                                    () if r["prompts"] is not None else tuple(self._alternatives(conn, r["term"])))
                   for r in found}
            self._words.put(read_version, total, new)
            entries.update(new)
            version = read_version
        counts = {w: n for w, (n, _) in entries.items() if n is not None}
        return _Words(version, total, counts, {w: alts for w, (n, alts) in entries.items() if n is None})

    def _groups(self, conn: Conn, words: list[str], counts: dict[str, int],
                alternatives: dict[str, tuple[str, ...]] | None = None) -> list[str]:
        groups = []
        for i, word in enumerate(words):
            # the last word may be unfinished: a prefix, from 3 letters (a 1-letter prefix matches half the words)
            operands = [_quote(word) + (":*" if i == len(words) - 1 and len(word) >= 3 else "")]
            if word not in counts:
                alts = alternatives.get(word, ()) if alternatives is not None else self._alternatives(conn, word)
                operands += [_quote(alt) for alt in alts]
            groups.append(" | ".join(operands))
        return groups

    def build_query(self, conn: Conn, query: str) -> list[str]:
        """One tsquery text per query word: the word, its typo alternatives, and a prefix match for the last."""
        words = query_words(query)
        return self._groups(conn, words, self._vocabulary(conn, words)[0])

    def _ranked(self, conn: Conn, words: list[str], groups: list[str], facts: _Words,
                limit: int) -> tuple[list[dict[str, Any]], object]:
        """Both tiers in one statement, and the vocabulary version it saw. Never a prepared statement: the plan
        must be made for these words (a generic plan cannot see how common they are). A tier reads prompts in order
        when its matches are dense: that finds the cap before the GIN index has merged long posting lists."""
        cap = max(CANDIDATES, limit)
        # the second tier matches at least as many prompts as its most common word
        common = max((facts.counts.get(w, 0) for w in words), default=0) >= DENSE_FACTOR * CANDIDATES
        query = _SEARCH.format(
            match1=(_MATCH_IN_ORDER if _dense(words, facts.counts, facts.total, cap) else _MATCH).format(q="all"),
            match2=(_MATCH_IN_ORDER if common else _MATCH).format(q="any"), version=_VERSION)
        params = {"cfg": TS_CONFIG, "groups": groups, "limit": limit, "cap": cap, "state": self.state_name,
                  "all": " & ".join(f"({g})" for g in groups), "any": " | ".join(f"({g})" for g in groups),
                  "two": len(groups) > 1}
        with conn.cursor(row_factory=dict_row) as cur:
            found = cur.execute(query, params, prepare=False).fetchall()
        return [r for r in found if r["id"] is not None], found[0]["version"]

    def search(self, query: str, limit: int = 50) -> list[tuple[int, float]]:
        """Prompt ids and scores, best first. Score = query words matched + a rank in [0, 1) (ts_rank_cd)."""
        if limit < 1:
            return []
        words = query_words(query)
        if not words:
            return []
        with self._connect() as conn:
            facts = self._lookup(conn, words)
            groups = self._groups(conn, words, facts.counts, facts.alternatives)
            found, version = self._ranked(conn, words, groups, facts, limit)
            if version != facts.version and (facts.counts or facts.alternatives):
                # the vocabulary changed since those facts were read: read them again
                self._words.reset()
                facts = self._lookup(conn, words)
                groups = self._groups(conn, words, facts.counts, facts.alternatives)
                found, _ = self._ranked(conn, words, groups, facts, limit)
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

