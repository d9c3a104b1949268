"""Fixtures for the tool tests (a pytest plugin): the fake SearXNG and web site, and a real MCP server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.tool_servers import FakeWeb, McpTestServer


@pytest.fixture(scope="session")
def web_server() -> Iterator[FakeWeb]:
    with FakeWeb() as server:
        yield server


@pytest.fixture
def fake_web(web_server: FakeWeb, settings) -> Iterator[FakeWeb]:
    """The fake SearXNG and site, emptied, with SEARXNG_URL pointing at it and short tool timeouts."""
    web_server.reset()
    settings.SEARXNG_URL = web_server.url
    settings.TOOLS_TIMEOUT = 5.0
    settings.TOOLS_MAX_ROUNDS = 5
    settings.TOOLS_ALLOW_PRIVATE_URLS = False
    yield web_server
    web_server.reset()


@pytest.fixture(scope="session")
def mcp_server() -> Iterator[McpTestServer]:
    with McpTestServer(required_header=("Authorization", "Bearer weather-secret")) as server:
        yield server
