"""Riding out a database that is briefly unavailable: retries with back-off, and fresh connections after a loss.

PostgreSQL restarting or unreachable, or SQLite locked past its busy timeout, shows as `OperationalError`
or `InterfaceError`; these are worth waiting out. Every other database error (a constraint, bad data) is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection, connections, transaction

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

UNAVAILABLE = (OperationalError, InterfaceError)
FIRST_WAIT = 0.25
LONGEST_WAIT = 5.0


def is_unavailable(error: BaseException) -> bool:
    """True for errors that mean the database could not be reached or used right now."""
    return isinstance(error, UNAVAILABLE)


def connection_refresh() -> None:
    """Drop this thread's connection if the failure broke it, so that the next query connects afresh."""
    if connection.in_atomic_block:
        return
    try:
        connection.close_if_unusable_or_obsolete()
    except UNAVAILABLE:
        connection.close()


def connections_keep() -> None:
    """For a long-running process (the bot): keep database connections open, checked before reuse.

    With CONN_MAX_AGE=0, every `close_old_connections()` closes the connection, and django-q2 calls it twice
    each time a job is queued (once per answer): two new PostgreSQL connections per message. Connections
    that broke are replaced through the health check and `connection_refresh`.
    """
    for alias in connections:
        connections.settings[alias]["CONN_MAX_AGE"] = None
        connections.settings[alias]["CONN_HEALTH_CHECKS"] = True
    connections.close_all()


def database_ping() -> None:
    """Raise unless the database takes a write transaction now (SQLite: the write lock is free)."""
    connection_refresh()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def database_retry(
    function: Callable[P, T], *args: P.args, deadline: float | None = None, **kwargs: P.kwargs
) -> T:
    """`function(*args, **kwargs)` in the database thread, tried again while the database is unavailable.

    Waits grow from a quarter second to five; `deadline` (seconds) bounds the whole, None waits as long as it
    takes. The last error is raised when the deadline passes.
    """
    call = sync_to_async(function)
    started = time.monotonic()
    wait = FIRST_WAIT
    failures = 0
    while True:
        try:
            result = await call(*args, **kwargs)
        except UNAVAILABLE as exc:
            failures += 1
            if failures == 1:
                logger.warning("The database is unavailable (%s); trying again until it is back", exc)
            await sync_to_async(connection_refresh)()
            if deadline is not None and time.monotonic() - started + wait > deadline:
                raise
            await asyncio.sleep(wait)
            wait = min(wait * 2, LONGEST_WAIT)
            continue
        if failures:
            logger.warning("The database is back after %d failed attempt(s)", failures)
        return result


async def database_wait(*, deadline: float | None = None) -> None:
    """Return once the database takes a write transaction again."""
    await database_retry(database_ping, deadline=deadline)
