"""Full-text search in the database itself, for any table: SQLite FTS5 or PostgreSQL tsvector, CJK included.

Neither database segments Chinese, and PostgreSQL has no Chinese parser, so Python analyses the text the
same way for both: NFKC, case-folded, diacritics dropped; Latin words stemmed (Snowball English); runs of
Chinese or Japanese characters cut into overlapping bigrams, the usual n-gram approach to CJK retrieval
(no dictionary to ship, no word list to keep up to date). The database indexes and ranks those terms.

An index is a side table keyed by the id of the rows it indexes (`FullTextIndex`), written and deleted
explicitly (`index_add`, `index_remove`) rather than by triggers, so schema changes of the indexed table
(which SQLite makes by copying the table) cannot lose it. Each row also carries a group (an integer the
caller chooses: the document of a chunk, the conversation of a message) that searches filter on cheaply.
To index another table, e.g. messages:

    MESSAGES = FullTextIndex("botapp_message_fts")
    # in a migration:   fulltext.create_operation(MESSAGES)
    # when writing:     fulltext.index_add(MESSAGES, [(message.pk, message.conversation_id, message.content)])
    # when searching:   fulltext.search(MESSAGES, "年假 policy", groups=conversation_ids_of_the_person)

`search` returns (id, score) pairs, best first; `groups` limits it to rows of those groups, `within` (any
queryset of the indexed model, slower: it is read in full) to the rows it selects. Terms found in very
many rows are left out of a query that has rarer ones: they say little about relevance, and would make
every query rank most of the index. A query of common terms only ranks a bounded set of rows.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import log

import snowballstemmer
from django.core.exceptions import EmptyResultSet
from django.db import connection, migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.models import QuerySet

# Hiragana, katakana, CJK extension A, unified ideographs, compatibility ideographs, extensions B and on.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_TOKEN = re.compile(rf"([{_CJK}]+)|([^\W_{_CJK}]+)")
_MAX_WORD = 40
# A term in more rows than this (or than COMMON_SHARE of a small index) is "common": it is dropped from the
# query when the query has rarer terms.
COMMON_ROWS = 1000
COMMON_SHARE = 0.25
# A query of common terms only ranks at most this many of the rows that hold them.
CANDIDATES = 1000
INSERT_BATCH = 500
# matching_sql's newest rows: a term the planner expects in at most this many rows is read from the index in
# full, and its rows sorted; a commoner one by walking the ids from the newest.
RARE_ROWS = 20_000

_stemmer = snowballstemmer.stemmer("english")


@dataclass(frozen=True)
class FullTextIndex:
    """A full-text index over the rows of one table, stored in the side table `name`."""

    name: str


# --- Analysis -----------------------------------------------------------------------------------


@lru_cache(maxsize=100_000)
def _word(word: str) -> str:
    if not word.isascii():
        word = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    return _stemmer.stemWord(word) if word.isalpha() else word


def _terms(text: str, *, query: bool) -> list[str]:
    terms: list[str] = []
    for cjk, word in _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold()):
        if word:
            if len(word) <= _MAX_WORD:
                terms.append(_word(word))
        elif len(cjk) == 1:
            # A lone character is indexed as itself; asked alone, it also finds the bigrams it starts.
            terms.append(cjk + "*" if query else cjk)
        else:
            terms.extend(cjk[i : i + 2] for i in range(len(cjk) - 1))
    return terms


def analyse(text: str) -> str:
    """The terms of `text` as the index stores them, separated by spaces."""
    return " ".join(_terms(text, query=False))


def query_terms(text: str) -> list[str]:
    """The distinct terms of a query, in order; a term ending in "*" is a prefix."""
    return list(dict.fromkeys(_terms(text, query=True)))


# --- Schema -------------------------------------------------------------------------------------


def create_sql(index: FullTextIndex, vendor: str) -> list[str]:
    if vendor == "sqlite":
        # The text is already analysed: unicode61 only splits it at the spaces (CJK bigrams stay whole).
        return [
            f"CREATE VIRTUAL TABLE {index.name} USING fts5(terms, grp UNINDEXED, "
            "tokenize = 'unicode61 remove_diacritics 0')"
        ]
    if vendor == "postgresql":
        return [
            f"CREATE TABLE {index.name} (id bigint PRIMARY KEY, grp bigint NOT NULL, terms tsvector NOT NULL)",
            f"CREATE INDEX {index.name}_terms ON {index.name} USING gin (terms)",
            f"CREATE INDEX {index.name}_grp ON {index.name} (grp)",
        ]
    raise NotImplementedError(f"Full-text search is not implemented for {vendor}.")


def drop_sql(index: FullTextIndex, vendor: str) -> list[str]:
    return [f"DROP TABLE IF EXISTS {index.name}"]


def create_operation(index: FullTextIndex) -> migrations.RunPython:
    """A reversible migration operation that creates the index's side table for the database in use."""

    def forward(apps: object, schema_editor: BaseDatabaseSchemaEditor) -> None:
        for statement in create_sql(index, schema_editor.connection.vendor):
            schema_editor.execute(statement)

    def backward(apps: object, schema_editor: BaseDatabaseSchemaEditor) -> None:
        for statement in drop_sql(index, schema_editor.connection.vendor):
            schema_editor.execute(statement)

    return migrations.RunPython(forward, backward)


# --- Writing ------------------------------------------------------------------------------------


def index_add(index: FullTextIndex, rows: Iterable[tuple[int, int, str]]) -> int:
    """Index (id, group, text) rows; an id indexed before is replaced."""
    batch: list[tuple[int, int, str]] = []
    count = 0
    for row_id, group, text in rows:
        batch.append((row_id, group, analyse(text)))
        if len(batch) >= INSERT_BATCH:
            count += _insert(index, batch)
            batch = []
    if batch:
        count += _insert(index, batch)
    return count


def _insert(index: FullTextIndex, batch: Sequence[tuple[int, int, str]]) -> int:
    # One statement a batch: an id indexed before is replaced in place (a batch never holds an id twice).
    batch = list({row_id: (row_id, group, terms) for row_id, group, terms in batch}.values())
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            sql = f"INSERT OR REPLACE INTO {index.name} (rowid, grp, terms) VALUES (%s, %s, %s)"  # noqa: S608
            cursor.executemany(sql, batch)
        else:
            # Without positions (strip): a chunk's vector stays small enough to be stored uncompressed in
            # the row, and ranking reads it without decompressing (ts_rank needs only the lexemes).
            values = ", ".join(["(%s, %s, strip(to_tsvector('simple', %s)))"] * len(batch))
            params = [value for row in batch for value in row]
            cursor.execute(
                f"INSERT INTO {index.name} (id, grp, terms) VALUES {values} "  # noqa: S608
                "ON CONFLICT (id) DO UPDATE SET grp = EXCLUDED.grp, terms = EXCLUDED.terms",
                params,
            )
    return len(batch)


def _id_column(index: FullTextIndex) -> str:
    return "rowid" if connection.vendor == "sqlite" else "id"


def index_remove(index: FullTextIndex, *, within: QuerySet) -> None:
    """Forget the rows of `within` (call before deleting them)."""
    try:
        sql, params = within.order_by().values("pk").query.sql_with_params()
    except EmptyResultSet:
        return
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {index.name} WHERE {_id_column(index)} IN ({sql})", params)  # noqa: S608


# --- Searching ----------------------------------------------------------------------------------


def _match(term: str, vendor: str) -> str:
    """One term as a query of the backend; terms are analyser output (letters, digits, CJK) plus "*"."""
    prefix = term.endswith("*")
    word = term.rstrip("*")
    if vendor == "sqlite":
        return f'"{word}"' + ("*" if prefix else "")
    return f"'{word}'" + (":*" if prefix else "")


def _rows_with(cursor: object, index: FullTextIndex, term: str) -> int:
    """How many rows hold `term`: counted up to COMMON_ROWS + 1 on SQLite, the planner's estimate on PostgreSQL.

    Counting on PostgreSQL visits a heap row per match (tens of milliseconds for a common term), while the
    planner's estimate comes from the column's statistics of its most common lexemes (kept by ANALYZE,
    which autovacuum runs after large changes): a term it does not list is rare, which is all that matters.
    """
    if connection.vendor == "sqlite":
        sql = f"SELECT count(*) FROM (SELECT 1 FROM {index.name} WHERE {index.name} MATCH %s LIMIT %s)"  # noqa: S608
        cursor.execute(sql, [_match(term, "sqlite"), COMMON_ROWS + 1])
        return cursor.fetchone()[0]
    sql = f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {index.name} WHERE terms @@ to_tsquery('simple', %s)"  # noqa: S608
    cursor.execute(sql, [_match(term, "postgresql")])
    plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def _size(cursor: object, index: FullTextIndex) -> int:
    """The number of rows indexed, estimated from the id range (cheap on both databases)."""
    # FTS5 scans the whole index for min(rowid); its content table has the ids under a primary key.
    table, column = (f"{index.name}_content", "id") if connection.vendor == "sqlite" else (index.name, "id")
    # Two subqueries: SQLite reads min and max from the ends of the primary key only one aggregate at a time.
    cursor.execute(f"SELECT (SELECT min({column}) FROM {table}), (SELECT max({column}) FROM {table})")  # noqa: S608
    low, high = cursor.fetchone()
    return 0 if low is None else high - low + 1


def matching_sql(index: FullTextIndex, text: str, *, newest: int | None = None) -> tuple[str, list] | None:
    """SQL selecting the `id` and `grp` of the rows that hold all the terms of `text` (None: it has none).

    Unranked, for a caller that filters and orders the rows itself (the admin's search boxes: newest first).
    `newest`: only that many rows, those of the highest ids (a common term's rows are not all read).
    """
    terms = query_terms(text)
    if not terms:
        return None
    vendor = connection.vendor
    if vendor == "sqlite":
        expression = " AND ".join(_match(term, vendor) for term in terms)
        sql, id_column = f"SELECT rowid AS id, grp FROM {index.name} WHERE {index.name} MATCH %s", "rowid"  # noqa: S608
    else:
        expression = " & ".join(_match(term, vendor) for term in terms)
        sql, id_column = f"SELECT id, grp FROM {index.name} WHERE terms @@ to_tsquery('simple', %s)", "id"  # noqa: S608
        if newest is not None:
            with connection.cursor() as cursor:
                rows = min(_rows_with(cursor, index, term) for term in terms)
            # PostgreSQL would walk the primary key backwards for the newest rows, testing each, which takes
            # seconds when few rows match; `id + 0` keeps it to the GIN index's matches, sorted. A common
            # term's rows are found quickly by the walk, and are too many to read and sort.
            if rows <= RARE_ROWS:
                id_column = "id + 0"
    if newest is None:
        return sql, [expression]
    return f"{sql} ORDER BY {id_column} DESC LIMIT %s", [expression, newest]


def search(
    index: FullTextIndex,
    text: str,
    *,
    groups: Collection[int] | None = None,
    within: QuerySet | None = None,
    limit: int = 50,
) -> list[tuple[int, float]]:
    """The ids of the rows that best match `text` (any of its terms), best first, with their scores."""
    terms = query_terms(text)
    if not terms or (groups is not None and not groups):
        return []
    vendor = connection.vendor
    with connection.cursor() as cursor:
        counts = {term: _rows_with(cursor, index, term) for term in terms}
        found = {term: n for term, n in counts.items() if n}
        if not found:
            return []
        size = max(_size(cursor, index), max(found.values()), 1)
        common = min(COMMON_ROWS, max(COMMON_SHARE * size, 5))
        rare = {term: n for term, n in found.items() if n <= common}
        scope_sql, scope_params = "", []
        if groups is not None:
            scope_sql = f" AND grp IN ({', '.join(['%s'] * len(groups))})"
            scope_params = [int(group) for group in groups]
        if within is not None:
            try:
                sql, params = within.order_by().values("pk").query.sql_with_params()
            except EmptyResultSet:
                return []
            # On SQLite the unary + keeps FTS5 from taking the scope as its rowid constraint (one MATCH per
            # row in scope, seconds at 100k rows) instead of matching once and then filtering.
            column = "+rowid" if vendor == "sqlite" else "id"
            scope_sql += f" AND {column} IN ({sql})"
            scope_params += list(params)
        query = _Query(index, vendor, size, scope_sql, scope_params, limit)
        if rare:
            return query.run(cursor, rare, joiner="any")
        # Only common terms ("what is the ..."): rows holding all of them, else rows holding any; either way
        # at most CANDIDATES of them are ranked, since ranking most of the index would take seconds.
        return query.run(cursor, found, joiner="all", cap=CANDIDATES) or query.run(
            cursor, found, joiner="any", cap=CANDIDATES
        )


@dataclass
class _Query:
    index: FullTextIndex
    vendor: str
    size: int
    scope_sql: str
    scope_params: list
    limit: int

    def run(
        self, cursor: object, counts: dict[str, int], *, joiner: str, cap: int | None = None
    ) -> list[tuple[int, float]]:
        name = self.index.name
        terms = [_match(term, self.vendor) for term in counts]
        if self.vendor == "sqlite":
            expression = (" OR " if joiner == "any" else " AND ").join(terms)
            match, column = f"{name} MATCH %s", "+rowid"
        else:
            expression = (" | " if joiner == "any" else " & ").join(terms)
            match, column = "terms @@ to_tsquery('simple', %s)", "id"
        where = f"WHERE {match}{self.scope_sql}"
        params = [expression, *self.scope_params]
        if cap is not None and self.vendor == "sqlite":
            # The first `cap` matches in id order, then ranked through a rowid range FTS5 walks directly
            # (a list of ids would cost one MATCH per id).
            cursor.execute(f"SELECT rowid FROM {name} {where} ORDER BY rowid LIMIT %s", [*params, cap])  # noqa: S608
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return []
            where = f"WHERE {match} AND rowid BETWEEN %s AND %s{self.scope_sql}"
            params = [expression, ids[0], ids[-1], *self.scope_params]
        elif cap is not None:
            where += f" AND {column} IN (SELECT {column} FROM {name} {where} LIMIT %s)"  # noqa: S608
            params += [*params, cap]
        params.append(self.limit)
        if self.vendor == "sqlite":
            # FTS5's bm25() weighs each term by its rarity; lower is better.
            cursor.execute(
                f"SELECT rowid, bm25({name}) AS score FROM {name} {where} ORDER BY score LIMIT %s",  # noqa: S608
                params,
            )
            return [(row_id, -score) for row_id, score in cursor.fetchall()]
        # ts_rank knows no term rarity, so each matched term adds its inverse document frequency (BM25's
        # idf), and ts_rank (how often and how close the terms occur) only breaks ties.
        score_sql = " + ".join(["%s * (terms @@ to_tsquery('simple', %s))::int"] * len(terms))
        score_params: list[object] = []
        for term, n in zip(terms, counts.values(), strict=True):
            score_params += [max(log((self.size - n + 0.5) / (n + 0.5) + 1), 0.01), term]
        # A long tsvector is stored compressed, and every use in an expression decompresses it again: the
        # inner query decompresses each matching row's once (`|| ''`), OFFSET 0 keeps it from being merged.
        cursor.execute(
            f"SELECT id, {score_sql} + 0.01 * ts_rank(terms, to_tsquery('simple', %s)) AS score "  # noqa: S608
            f"FROM (SELECT id, terms || ''::tsvector AS terms FROM {name} {where} OFFSET 0) AS found "
            "ORDER BY score DESC LIMIT %s",
            [*score_params, expression, *params],
        )
        return [(row_id, float(score)) for row_id, score in cursor.fetchall()]
