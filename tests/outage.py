"""A database that stumbles, for real: PostgreSQL behind a TCP proxy the test cuts, SQLite locked by a writer.

`DatabaseOutage.cut()` makes the database unavailable to Jarvis in this process and `restore()` brings it back.
On PostgreSQL every connection goes through a small proxy on 127.0.0.1; cutting it drops the live connections
and refuses new ones, as a restarting or unreachable server does. On SQLite another connection holds the write
lock (BEGIN EXCLUSIVE) until restored, and Jarvis's busy timeout is shortened so that its writes fail with
"database is locked" within a second rather than thirty.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import SyncToAsync
from django.db import connection, connections

from botapp.database import database_retry

T = TypeVar("T")


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target address, in its own thread, until cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._open = True
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close(self) -> None:
        self._cut()
        self._server.close()
        current = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not current:
                task.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers.difference_update((writer, upstream_writer))

    def _cut(self) -> None:
        self._open = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        done = threading.Event()
        self._loop.call_soon_threadsafe(lambda: (self._cut(), done.set()))
        done.wait(10)

    def restore(self) -> None:
        self._open = True


def _close_all_connections() -> None:
    connections.close_all()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


class DatabaseOutage:
    """Cut and restore the test database for Jarvis in this process (see the module docstring)."""

    def __init__(self) -> None:
        self.settings = connection.settings_dict
        self.is_sqlite = connection.vendor == "sqlite"
        self._proxy: TcpProxy | None = None
        self._locker: sqlite3.Connection | None = None
        self._saved: dict[str, object] = {}

    def __enter__(self) -> DatabaseOutage:
        # Every thread's connection reads this one settings dict when it connects.
        if self.is_sqlite:
            options = self.settings.setdefault("OPTIONS", {})
            self._saved = {"timeout": options.get("timeout")}
            options["timeout"] = 1
        else:
            self._saved = {"HOST": self.settings["HOST"], "PORT": self.settings["PORT"]}
            self._proxy = TcpProxy(self.settings["HOST"] or "127.0.0.1", int(self.settings["PORT"] or 5432))
            self._proxy.__enter__()
            self.settings["HOST"], self.settings["PORT"] = "127.0.0.1", str(self._proxy.port)
        _close_all_connections()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
        if self.is_sqlite:
            self.settings["OPTIONS"]["timeout"] = self._saved["timeout"]
        else:
            self.settings.update(self._saved)
            self._proxy.__exit__()
        _close_all_connections()

    def cut(self) -> None:
        if self.is_sqlite:
            self._locker = sqlite3.connect(self.settings["NAME"], isolation_level=None, timeout=30)
            self._locker.execute("BEGIN EXCLUSIVE")
        else:
            self._proxy.cut()

    def restore(self) -> None:
        if self._locker is not None:
            self._locker.execute("ROLLBACK")
            self._locker.close()
            self._locker = None
        if self._proxy is not None:
            self._proxy.restore()


async def read(function: Callable[[], T]) -> T:
    """A read from the test, in the database thread Jarvis uses, riding out a connection the cut left broken."""
    return await database_retry(function, deadline=30)
