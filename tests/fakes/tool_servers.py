"""What the tools talk to in tests, all on loopback: a fake SearXNG, a small web site, and a real MCP server.

* `FakeWeb` answers SearXNG's JSON API (`/search?q=...&format=json`, 403 without `format=json` as a SearXNG
  without the JSON format does) and serves a few pages: an article, a 10 MB page, a slow page, a PNG, and a
  redirect to a private address. It listens on 127.0.0.1 and, as a stand-in for a public host, on 127.0.0.2.
* `McpTestServer` is an MCP server built with the official `mcp` SDK (`MCPServer`), served over streamable
  HTTP by uvicorn, with tools that answer, raise, sleep, or return 10 MB; it can require an auth header.

Both run in their own thread and event loop, like the fake OpenAI and Telegram servers.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn
from aiohttp import web
from mcp.server.mcpserver import MCPServer

from tests.fakes.loopback import ThreadedApp

ARTICLE_TITLE = "Jarvis reaches the Moon"
ARTICLE_TEXT = (
    "The assistant named Jarvis landed on the Moon on Tuesday, according to the mission team. "
    "It read every page it was given and kept a record of each one. "
)
BIG_PAGE_BYTES = 10 * 1024 * 1024


def article_html(title: str = ARTICLE_TITLE) -> str:
    paragraphs = "".join(f"<p>{ARTICLE_TEXT * 3} Paragraph {n}.</p>" for n in range(6))
    return (
        f"<html><head><title>{title}</title></head><body><nav>Home | News | Login | Menu item</nav>"
        f"<article><h1>{title}</h1>{paragraphs}</article><footer>Copyright and cookie banner</footer></body></html>"
    )


class FakeWeb:
    """A fake SearXNG and web site on 127.0.0.1 (and 127.0.0.2); use as a context manager."""

    def __init__(self) -> None:
        self.results: dict[str, list[dict[str, str]]] = {}
        self.queries: list[dict[str, str]] = []
        self.hits: list[str] = []
        self.port = 0
        self.public_port = 0
        self._server = ThreadedApp(self.make_app, addresses=[("127.0.0.1", 0), ("127.0.0.2", 0)], name="fake-web")

    @property
    def url(self) -> str:
        """The site (and SearXNG) on 127.0.0.1: a private address."""
        return f"http://127.0.0.1:{self.port}"

    def public_url(self, host: str = "news.example") -> str:
        """The same site as a tests' public host would reach it (the name resolves to 127.0.0.2)."""
        return f"http://{host}:{self.public_port}"

    def reset(self) -> None:
        self.results = {}
        self.queries = []
        self.hits = []

    # --- handlers ---

    async def _search(self, request: web.Request) -> web.Response:
        if request.query.get("format") != "json":
            return web.Response(status=403, text="Forbidden")
        query = request.query.get("q", "")
        self.queries.append(dict(request.query))
        results = self.results.get(query)
        if results is None:
            results = [
                {"title": f"Result {n} for {query}", "url": f"{self.url}/article?n={n}", "content": f"Snippet {n}."}
                for n in range(1, 4)
            ]
        body = {
            "query": query,
            "number_of_results": len(results),
            "results": [{**r, "engine": "fake", "engines": ["fake"], "score": 1.0} for r in results],
            "answers": [],
            "corrections": [],
            "infoboxes": [],
            "suggestions": [],
            "unresponsive_engines": [],
        }
        return web.json_response(body)

    async def _article(self, request: web.Request) -> web.Response:
        self.hits.append(request.path_qs)
        return web.Response(text=article_html(), content_type="text/html")

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        response = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
        await response.prepare(request)
        await response.write(b"<html><head><title>Huge</title></head><body><article>")
        sent = 0
        try:
            while sent < BIG_PAGE_BYTES:
                block = "".join(
                    f"<p>Paragraph {sent + n}: all work and no play makes Jarvis a dull assistant.</p>\n"
                    for n in range(800)
                ).encode()
                await response.write(block)
                sent += len(block)
            await response.write(b"</article></body></html>")
        except ConnectionResetError:
            return response  # the reader stopped at its cap and hung up
        return response

    async def _slow(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        await asyncio.sleep(float(request.query.get("seconds", "30")))
        return web.Response(text=article_html("Slow"), content_type="text/html")

    async def _image(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, content_type="image/png")

    async def _secret(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(text="<html><body><article><p>" + "The internal secret is 42. " * 10 + "</p></article>"
                            "</body></html>", content_type="text/html")  # fmt: skip

    async def _to_private(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        raise web.HTTPFound(f"http://127.0.0.1:{self.port}/secret")

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/search", self._search)
        app.router.add_get("/article", self._article)
        app.router.add_get("/big", self._big)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/image.png", self._image)
        app.router.add_get("/secret", self._secret)
        app.router.add_get("/to-private", self._to_private)
        return app

    # --- lifecycle ---

    def __enter__(self) -> FakeWeb:
        self.port, self.public_port = self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


# --- A real MCP server ----------------------------------------------------------------------------


def weather_server() -> MCPServer:
    """An MCP server with tools that answer, fail, take their time, or return far too much."""
    server = MCPServer("weather")

    @server.tool()
    def forecast(city: str, days: int = 1) -> str:
        """The weather forecast for a city."""
        return f"Forecast for {city}: sunny, 21 °C, for the next {days} day(s)."

    @server.tool()
    def explode() -> str:
        """A tool that always fails."""
        raise RuntimeError("the barometer exploded")

    @server.tool()
    async def ponder(seconds: float = 30.0) -> str:
        """A tool that takes its time."""
        await asyncio.sleep(seconds)
        return "done pondering"

    @server.tool()
    def flood() -> str:
        """A tool that returns 10 MB of text."""
        return "rain " * (2 * 1024 * 1024)

    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class McpTestServer:
    """`weather_server()` over streamable HTTP at `url`; with `required_header`, other requests get 401."""

    def __init__(self, *, required_header: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.required_header = required_header
        self.seen_headers: list[dict[str, str]] = []
        self._app = weather_server().streamable_http_app(stateless_http=True, json_response=True)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
            self.seen_headers.append(headers)
            if self.required_header is not None:
                name, value = self.required_header
                if headers.get(name.lower()) != value:
                    await send({"type": "http.response.start", "status": 401, "headers": []})
                    await send({"type": "http.response.body", "body": b"unauthorized"})
                    return
        await self._app(scope, receive, send)

    def __enter__(self) -> McpTestServer:
        config = uvicorn.Config(
            self._asgi, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="mcp-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("The MCP test server did not start.")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
