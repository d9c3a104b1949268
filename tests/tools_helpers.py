"""Helpers for the tool tests: personas with tools, the test MCP server registered, the fake's prices."""

from __future__ import annotations

from decimal import Decimal

from botapp.models import McpServer, Persona, Tool
from botapp.tools.services import mcp_server_refresh
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.tool_servers import McpTestServer

BUILTINS = ["web_search", "read_web_page", "current_datetime"]
GPT_4O_MINI = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}


def persona_with_tools(*names: str, persona: Persona | None = None) -> Persona:
    """The default persona (or `persona`) with exactly these tools enabled."""
    persona = persona or Persona.objects.get(name="Jarvis")
    persona.tools.set(Tool.objects.filter(name__in=names))
    return persona


def mcp_server_add(server: McpTestServer, *, name: str = "weather") -> McpServer:
    """Register the test MCP server with its auth header, and list its tools."""
    row = McpServer(name=name, url=server.url, auth_header_name="Authorization")
    row.auth_header_value = "Bearer weather-secret"
    row.save()
    mcp_server_refresh(row)
    return row


def fake_reported_cost(fake: FakeOpenAI) -> Decimal:
    """What the fake's reported usage over every chat request costs at gpt-4o-mini's list price."""
    total = Decimal("0")
    for served in fake.chat_requests():
        if served.usage is None:
            continue
        cached = served.usage["prompt_tokens_details"]["cached_tokens"]
        total += (
            (served.usage["prompt_tokens"] - cached) * GPT_4O_MINI["input"]
            + cached * GPT_4O_MINI["cached"]
            + served.usage["completion_tokens"] * GPT_4O_MINI["output"]
        ) / Decimal(1_000_000)
    return total
