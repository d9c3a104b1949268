"""`QueuedRequest`: Bot API calls beyond the connection pool wait their turn instead of failing or thrashing."""

import asyncio

import pytest
from aiohttp import web
from telegram.error import TimedOut
from telegram.request import HTTPXRequest

from botapp.telegram.application import QueuedRequest

CALLS = 12
POOL = 3


@pytest.fixture
async def slow_api():
    """A Bot API stand-in that takes 0.1 s per call and counts the calls in flight at once."""
    state = {"now": 0, "most": 0}

    async def handle(request: web.Request) -> web.Response:
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        await asyncio.sleep(0.1)
        state["now"] -= 1
        return web.json_response({"ok": True, "result": True})

    app = web.Application()
    app.router.add_post("/{method}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", state
    await runner.cleanup()


async def burst(request: HTTPXRequest, url: str) -> list[object]:
    await request.initialize()
    try:
        return await asyncio.gather(
            *(request.post(f"{url}/sendChatAction") for _ in range(CALLS)), return_exceptions=True
        )
    finally:
        await request.shutdown()


async def test_calls_beyond_the_pool_wait_for_a_slot(slow_api):
    """Twelve calls through a pool of three: three at a time, all answered, although the pool timeout is short."""
    url, state = slow_api
    results = await burst(QueuedRequest(connection_pool_size=POOL, pool_timeout=0.05), url)
    assert results == [True] * CALLS
    assert state["most"] == POOL


async def test_the_plain_request_fails_where_the_queued_one_waits(slow_api):
    """The same burst through python-telegram-bot's own request times out waiting for the pool."""
    url, _state = slow_api
    results = await burst(HTTPXRequest(connection_pool_size=POOL, pool_timeout=0.05), url)
    assert any(isinstance(result, TimedOut) for result in results)
