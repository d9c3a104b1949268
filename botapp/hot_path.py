"""The few fixed-shape statements every chat message runs, written once instead of built per message.

Issue 16's decision: on the message path a handful of statements bypass QuerySet building and compilation,
which cost more than the database itself (an ORM UPDATE ~0.3 ms of Python, a cursor call ~0.02 ms). Each is
plain SQL over Django's connection, so transactions, the test database and both backends (SQLite 3.35+ and
PostgreSQL) work as for the ORM; names come from the models' `_meta` and values go through the fields'
own `get_db_prep_save`, so what is stored is what the ORM would store. New rows (`insert`) and an answer's
fields (`update`) are written the same way, with the fields' own `pre_save` (defaults, `auto_now`), and go
through the ORM when the model has save receivers. Reads (`instances` for model instances, `rows` for plain
values) are QuerySets compiled once per connection and run again with new values. Everything else stays on
the ORM.

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
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model, QuerySet, signals
from django.db.models.fields import Field
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


# --- New rows --------------------------------------------------------------------------------------


def _through_orm(model: type[Model], values: Sequence[Any]) -> bool:
    """Whether a write must go through `save()`: receivers listen to the model's saves, or a value is an
    expression only the ORM's compiler can turn into SQL."""
    return (
        signals.pre_save.has_listeners(model)
        or signals.post_save.has_listeners(model)
        or any(hasattr(value, "resolve_expression") for value in values)
    )


@cache
def _insert_sql(model: type[Model], vendor: str, rows: int) -> tuple[str, tuple[Field[Any, Any], ...]]:
    """INSERT of `rows` rows of `model` (every concrete column but an automatic primary key), returning the keys."""
    meta = model._meta
    quote = connection.ops.quote_name
    automatic = meta.pk.db_returning
    fields = tuple(field for field in meta.local_concrete_fields if not (field.primary_key and automatic))
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    columns = ", ".join(quote(field.column) for field in fields)
    sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES {', '.join([row] * rows)}"
    return sql + f" RETURNING {quote(meta.pk.column)}", fields


def insert(*objs: Model) -> None:
    """Store new instances of one model in one statement, as `save()` would store each: field defaults and
    `auto_now(_add)` applied by the fields' own `pre_save`, values through `get_db_prep_save`, the new keys set
    on the instances. A model with `pre_save`/`post_save` receivers, or a value that is an expression, goes
    through the ORM instead, so nothing a receiver expects is skipped. A model's own `save()` is not called.
    """
    model = type(objs[0])
    sql, fields = _insert_sql(model, connection.vendor, len(objs))
    values = [[field.pre_save(obj, add=True) for field in fields] for obj in objs]
    if _through_orm(model, [value for row in values for value in row]):
        for obj in objs:
            obj.save(force_insert=True)
        return
    params = [
        field.get_db_prep_save(value, connection) for row in values for field, value in zip(fields, row, strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        keys = [row[0] for row in cursor.fetchall()]
    pk = model._meta.pk
    for obj, key in zip(objs, keys, strict=True):
        setattr(obj, pk.attname, pk.to_python(key))
        obj._state.adding, obj._state.db = False, connection.alias


@cache
def _update_sql(model: type[Model], vendor: str, names: tuple[str, ...]) -> tuple[str, tuple[Field[Any, Any], ...]]:
    meta = model._meta
    quote = connection.ops.quote_name
    fields = tuple(meta.get_field(name) for name in names)
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    return f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s", fields


def update(obj: Model, names: Sequence[str]) -> None:
    """Write the fields `names` of a stored instance, as `save(update_fields=names)` would (`auto_now` applied by
    the fields' `pre_save`), with the SQL built once; through the ORM when the model has save receivers or a
    value is an expression. A model's own `save()` is not called: the caller does what it would."""
    model = type(obj)
    sql, fields = _update_sql(model, connection.vendor, tuple(names))
    values = [field.pre_save(obj, add=False) for field in fields]
    if _through_orm(model, values):
        obj.save(update_fields=list(names))
        return
    params = [field.get_db_prep_save(value, connection) for field, value in zip(fields, values, strict=True)]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, obj.pk])


# --- Reads compiled once --------------------------------------------------------------------------

M = TypeVar("M", bound=Model)
# Values no real row has, put in the QuerySet compiled once to find where each value goes in its parameters.
_SENTINEL = -7_357_000_000_000
_SENTINEL_TIME = datetime(1001, 1, 1, tzinfo=UTC)


def _stand_in(index: int, value: Any) -> Any:
    if isinstance(value, datetime):
        return _SENTINEL_TIME + timedelta(seconds=index)
    if isinstance(value, str):
        return f"hot-path stand-in {index} {_SENTINEL}"
    if isinstance(value, int) and not isinstance(value, bool):
        return _SENTINEL - index
    raise TypeError(f"a compiled read takes integers, text and datetimes, not {type(value).__name__}")


def _as_is(value: Any) -> Any:
    return value


@dataclass
class _Compiled:
    compiler: SQLCompiler
    sql: str
    params: tuple[Any, ...]
    # Where each value goes, and how the compiler turned such a value into a parameter (datetimes, on SQLite).
    slots: dict[str, list[tuple[int, Callable[[Any], Any]]]]


def _compiled(key: str, build: Callable[..., QuerySet[Any]], values: dict[str, Any]) -> _Compiled:
    # Kept per connection (one per thread): a compiler is bound to the connection it was made for.
    wrapper = connections[DEFAULT_DB_ALIAS]
    cached: dict[str, _Compiled] = wrapper.__dict__.setdefault("_jarvis_hot_path", {})
    found = cached.get(key)
    if found is None:
        stand_ins = {name: _stand_in(index, value) for index, (name, value) in enumerate(values.items())}
        compiler = build(**stand_ins).query.get_compiler(using=DEFAULT_DB_ALIAS)
        sql, params = compiler.as_sql()
        slots: dict[str, list[tuple[int, Callable[[Any], Any]]]] = {}
        for name, stand_in in stand_ins.items():
            adapters = [_as_is]
            if isinstance(stand_in, datetime):
                adapters.append(wrapper.ops.adapt_datetimefield_value)
            slots[name] = [
                (position, adapt)
                for position, param in enumerate(params)
                for adapt in adapters
                if param == adapt(stand_in)
            ]
        if not all(slots.values()):
            raise ValueError(f"{key}: a value does not appear in the compiled query's parameters")
        found = cached[key] = _Compiled(compiler, sql, tuple(params), slots)
    return found


def _params(compiled: _Compiled, values: dict[str, Any]) -> list[Any]:
    params = list(compiled.params)
    for name, positions in compiled.slots.items():
        for position, adapt in positions:
            params[position] = adapt(values[name])
    return params


def rows(key: str, build: Callable[..., QuerySet[Any]], **values: Any) -> list[tuple[Any, ...]]:
    """The rows of `build(**values)` (a `values_list` QuerySet) as the database returns them, compiled once like
    `instances`. No field's converter runs: only for columns stored as Python reads them (integers, text), or
    that the caller decodes itself.
    """
    compiled = _compiled(key, build, values)
    with connection.cursor() as cursor:
        cursor.execute(compiled.sql, _params(compiled, values))
        return cursor.fetchall()


def instances(key: str, build: Callable[..., QuerySet[M]], **values: Any) -> list[M]:
    """The rows of `build(**values)` as model instances (related rows and annotations included), like iterating
    the QuerySet, but built and compiled once per connection: `build` is called with stand-in values (integers,
    text, datetimes) of the same types. A key names one shape: values of another count need another key.
    """
    compiled = _compiled(key, build, values)
    params = _params(compiled, values)
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
