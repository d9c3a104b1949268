"""An aiohttp application served from its own thread and event loop, as the fakes are, on loopback addresses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from aiohttp import web


class ThreadedApp:
    """Serves `make_app()` on each (host, port) of `addresses` until `stop()`; port 0 takes a free one."""

    def __init__(
        self, make_app: Callable[[], web.Application], *, addresses: Sequence[tuple[str, int]], name: str
    ) -> None:
        self._make_app = make_app
        self._addresses = list(addresses)
        self._name = name
        self.ports: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> list[int]:
        """Start serving; the port of each address, in order."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"The {self._name} server did not start.")
        return self.ports

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        for host, port in self._addresses:
            site = web.TCPSite(self._runner, host, port)
            self._loop.run_until_complete(site.start())
            self.ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)  # type: ignore[union-attr]
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
