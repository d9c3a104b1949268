"""The few fixed-shape statements every chat message runs, written once instead of built per message.

Issue 16's decision: on the message path a handful of statements bypass QuerySet building and compilation,
which cost more than the database itself (an ORM UPDATE ~0.3 ms of Python, a cursor call ~0.02 ms). Each is
plain SQL over Django's connection, so transactions, the test database and both backends (SQLite 3.35+ and
PostgreSQL) work as for the ORM; names come from the models' `_meta` and values go through the fields'
own `get_db_prep_save`, so what is stored is what the ORM would store. Reads that return model instances
(`instances`) are QuerySets compiled once per connection and run again with new values. Everything else
stays on the ORM.

A Telegram text message makes four trips to the database thread: the poll's batch written down (dedupe),
everything before the model (person, question, lease, context), the answer with its ledger row, and the
answer's Telegram ids with the update finished. The last two stay apart because the answer is stored and
billed before it is sent, and the update is finished only once it is sent; merging them would move one of
those guarantees.
"""

# Identifiers in the SQL below come from the models' _meta and are quoted; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.sql.compiler import SQLCompiler
from django.db.models.sql.constants import MULTI

from botapp.models import Conversation, Message, ProcessedUpdate


def _prep(model: type[Model], field: str, value: Any) -> Any:
    return model._meta.get_field(field).get_db_prep_save(value, connection)


@cache
def _names(model: type[Model], vendor: str) -> dict[str, str]:
    """The quoted table (`_table`) and column names of `model` (keyed by field name) on this vendor."""
    quote = connection.ops.quote_name
    names = {field.name: quote(field.column) for field in model._meta.concrete_fields}
    names["_table"] = quote(model._meta.db_table)
    return names


def _q(model: type[Model]) -> dict[str, str]:
    return _names(model, connection.vendor)


@cache
def _sql(name: str, vendor: str) -> str:
    c, u, m = _q(Conversation), _q(ProcessedUpdate), _q(Message)
    statements = {
        # New updates are written down; conflicts are redeliveries. RETURNING lists the new ones only.
        "updates_record": (
            f"INSERT INTO {u['_table']} ({u['bot']}, {u['update_id']}, {u['payload']}, {u['state']},"
            f" {u['created_at']}) VALUES {{values}} ON CONFLICT ({u['bot']}, {u['update_id']}) DO NOTHING"
            f" RETURNING {u['update_id']}"
        ),
        "update_done": (f"UPDATE {u['_table']} SET {u['state']} = %s WHERE {u['bot']} = %s AND {u['update_id']} = %s"),
        "reply_ids": f"UPDATE {m['_table']} SET {m['telegram_reply_ids']} = %s WHERE {m['id']} = %s",
        # The lease, taken when free or run out.
        "lease_take": (
            f"UPDATE {c['_table']} SET {c['answering_until']} = %s, {c['answering_token']} = %s"
            f" WHERE {c['id']} = %s AND ({c['answering_until']} IS NULL OR {c['answering_until']} < %s)"
        ),
        "lease_release": (
            f"UPDATE {c['_table']} SET {c['answering_until']} = NULL, {c['answering_token']} = ''"
            f" WHERE {c['id']} = %s AND {c['answering_token']} = %s"
        ),
        # An answer stored: the conversation's last activity, and the lease let go if it is still the holder's.
        "answered": (
            f"UPDATE {c['_table']} SET {c['updated_at']} = %s,"
            f" {c['answering_until']} = CASE WHEN {c['answering_token']} = %s THEN NULL"
            f" ELSE {c['answering_until']} END,"
            f" {c['answering_token']} = CASE WHEN {c['answering_token']} = %s THEN ''"
            f" ELSE {c['answering_token']} END"
            f" WHERE {c['id']} = %s"
        ),
        # A question stored: the conversation's last activity, and its lease taken in the same write when free.
        "stored_and_lease": (
            f"UPDATE {c['_table']} SET {c['updated_at']} = %s,"
            f" {c['answering_token']} = CASE WHEN {c['answering_until']} IS NULL OR {c['answering_until']} < %s"
            f" THEN %s ELSE {c['answering_token']} END,"
            f" {c['answering_until']} = CASE WHEN {c['answering_until']} IS NULL OR {c['answering_until']} < %s"
            f" THEN %s ELSE {c['answering_until']} END"
            f" WHERE {c['id']} = %s RETURNING {c['answering_token']}"
        ),
        "touch": f"UPDATE {c['_table']} SET {c['updated_at']} = %s WHERE {c['id']} = %s",
    }
    return statements[name]


def _execute(name: str, params: Sequence[Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(_sql(name, connection.vendor), params)
        return cursor.rowcount


def updates_record(*, bot_id: int, updates: Sequence[tuple[int, Any]], now: datetime) -> set[int]:
    """Write the updates down in one statement; the ids of those seen for the first time."""
    if not updates:
        return set()
    row = "(%s, %s, %s, %s, %s)"
    sql = _sql("updates_record", connection.vendor).replace("{values}", ", ".join([row] * len(updates)))
    state = ProcessedUpdate.State.RECEIVED.value
    created = _prep(ProcessedUpdate, "created_at", now)
    params: list[Any] = []
    for update_id, payload in updates:
        params += [bot_id, update_id, _prep(ProcessedUpdate, "payload", payload), state, created]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def update_done(*, bot_id: int, update_id: int) -> None:
    _execute("update_done", [ProcessedUpdate.State.DONE.value, bot_id, update_id])


def reply_ids_store(*, message_id: int, telegram_ids: list[int]) -> None:
    _execute("reply_ids", [_prep(Message, "telegram_reply_ids", list(telegram_ids)), message_id])


def lease_take(*, conversation_id: int, token: str, now: datetime, until: datetime) -> bool:
    """Take a conversation's lease when nobody holds it (or the holder's ran out); True when taken."""
    at, until_value = _prep(Conversation, "answering_until", now), _prep(Conversation, "answering_until", until)
    return _execute("lease_take", [until_value, token, conversation_id, at]) == 1


def question_stored(*, conversation_id: int, at: datetime, token: str, until: datetime) -> bool:
    """A question was stored at `at`: the conversation's last activity; its lease taken when free (True)."""
    at_value = _prep(Conversation, "updated_at", at)
    params = [at_value, at_value, token, at_value, _prep(Conversation, "answering_until", until), conversation_id]
    with connection.cursor() as cursor:
        cursor.execute(_sql("stored_and_lease", connection.vendor), params)
        row = cursor.fetchone()
    return row is not None and row[0] == token


def lease_release(*, conversation_id: int, token: str) -> None:
    """Let the lease go, if `token` still holds it."""
    _execute("lease_release", [conversation_id, token])


def conversation_answered(*, conversation_id: int, at: datetime, token: str) -> None:
    """The conversation's last activity is `at`; its lease is let go if `token` holds it (no token: kept)."""
    if not token:
        _execute("touch", [_prep(Conversation, "updated_at", at), conversation_id])
        return
    _execute("answered", [_prep(Conversation, "updated_at", at), token, token, conversation_id])


# --- Reads compiled once --------------------------------------------------------------------------

M = TypeVar("M", bound=Model)
# Values no real row has, put in the QuerySet compiled once to find where each value goes in its parameters.
_SENTINEL = -7_357_000_000_000


@dataclass
class _Compiled:
    compiler: SQLCompiler
    sql: str
    params: tuple[Any, ...]
    slots: dict[str, list[int]]


def _compiled(key: str, build: Callable[..., QuerySet[Any]], names: tuple[str, ...]) -> _Compiled:
    # Kept per connection (one per thread): a compiler is bound to the connection it was made for.
    wrapper = connections[DEFAULT_DB_ALIAS]
    cached: dict[str, _Compiled] = wrapper.__dict__.setdefault("_jarvis_hot_path", {})
    found = cached.get(key)
    if found is None:
        sentinels = {name: _SENTINEL - index for index, name in enumerate(names)}
        compiler = build(**sentinels).query.get_compiler(using=DEFAULT_DB_ALIAS)
        sql, params = compiler.as_sql()
        slots = {name: [i for i, param in enumerate(params) if param == value] for name, value in sentinels.items()}
        if not all(slots.values()):
            raise ValueError(f"{key}: a value does not appear in the compiled query's parameters")
        found = cached[key] = _Compiled(compiler, sql, tuple(params), slots)
    return found


def instances(key: str, build: Callable[..., QuerySet[M]], **values: int) -> list[M]:
    """The rows of `build(**values)` as model instances (related rows and annotations included), like iterating
    the QuerySet, but built and compiled once per connection: `build` is called with stand-in integers.
    """
    compiled = _compiled(key, build, tuple(values))
    params = list(compiled.params)
    for name, positions in compiled.slots.items():
        for position in positions:
            params[position] = values[name]
    compiler = compiled.compiler
    compiler.as_sql = lambda *args, **kwargs: (compiled.sql, tuple(params))  # type: ignore[method-assign]
    results = compiler.execute_sql(MULTI)
    # As django.db.models.query.ModelIterable does with a compiler it ran.
    select, klass_info, annotations = compiler.select, compiler.klass_info, compiler.annotation_col_map
    model = klass_info["model"]
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    init_list = [column[0].target.attname for column in select[start:end]]
    populators = get_related_populators(klass_info, select, compiler.using)
    rows = []
    for row in compiler.results_iter(results):
        obj = model.from_db(compiler.using, init_list, row[start:end])
        for populator in populators:
            populator.populate(row, obj)
        for name, position in (annotations or {}).items():
            setattr(obj, name, row[position])
        rows.append(obj)
    return rows
