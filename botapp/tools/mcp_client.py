"""The MCP client: list a server's tools and call one, over streamable HTTP with the official `mcp` SDK.

Each listing or call opens its own short session: a server that restarted, or one of several web and bot
processes, never holds a stale session, and a loopback round trip costs milliseconds. Every failure becomes
a ToolError with a sentence; nothing waits longer than the timeout given.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
from django.utils.translation import gettext as _

from botapp.tools.registry import ToolError, ToolResult

if TYPE_CHECKING:
    from mcp import Client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteTool:
    """A tool as an MCP server lists it."""

    name: str
    title: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ServerAddress:
    """Where an MCP server is and how to authenticate; `label` names it in sentences."""

    label: str
    url: str
    headers: dict[str, str]


@asynccontextmanager
async def _connected(server: ServerAddress, timeout: float) -> AsyncIterator[Client]:
    # Imported here: the SDK takes seconds to import, and most processes never talk to an MCP server.
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    # The callers' own deadline (asyncio.timeout) is the one that fires; these only bound what it would miss.
    timeout += 5
    async with (
        httpx2.AsyncClient(headers=server.headers, timeout=httpx2.Timeout(timeout), trust_env=False) as http,
        Client(streamable_http_client(server.url, http_client=http), read_timeout_seconds=timeout) as client,
    ):
        yield client


def _unreachable(server: ServerAddress, exc: BaseException) -> ToolError:
    logger.warning("MCP server %s failed: %s", server.label, exc.__class__.__name__)
    return ToolError(_("The tool server “%(server)s” cannot be reached right now.") % {"server": server.label})


def _too_slow(server: ServerAddress, timeout: float) -> ToolError:
    return ToolError(
        _("The tool server “%(server)s” did not answer within %(seconds)g seconds.")
        % {"server": server.label, "seconds": timeout}
    )


async def mcp_tools_list(server: ServerAddress, *, timeout: float) -> list[RemoteTool]:
    """Every tool the server lists (all pages)."""
    tools: list[RemoteTool] = []
    try:
        async with asyncio.timeout(timeout), _connected(server, timeout) as client:
            cursor: str | None = None
            for _page in range(50):
                page = await client.list_tools(cursor=cursor)
                tools += [
                    RemoteTool(
                        name=tool.name,
                        title=tool.title or "",
                        description=tool.description or "",
                        input_schema=dict(tool.input_schema or {}),
                    )
                    for tool in page.tools
                ]
                cursor = page.next_cursor
                if not cursor:
                    break
    except TimeoutError as exc:
        raise _too_slow(server, timeout) from exc
    except Exception as exc:
        raise _unreachable(server, exc) from exc
    return tools


def _result_text(result: Any) -> str:
    parts: list[str] = []
    for block in result.content or ():
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and getattr(block.resource, "text", None):
            parts.append(block.resource.text)
        elif kind == "resource_link":
            parts.append(f"{block.name}: {block.uri}")
        else:
            parts.append(_("[%(kind)s content left out]") % {"kind": kind or "other"})
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts).strip()


async def mcp_tool_call(server: ServerAddress, *, name: str, arguments: dict[str, Any], timeout: float) -> ToolResult:
    """Call one tool; a result the server flags as an error raises ToolError with the server's words."""
    try:
        async with asyncio.timeout(timeout), _connected(server, timeout) as client:
            result = await client.call_tool(name, arguments)
    except TimeoutError as exc:
        raise _too_slow(server, timeout) from exc
    except Exception as exc:
        raise _unreachable(server, exc) from exc
    text = _result_text(result)
    if result.is_error:
        raise ToolError(
            _("The tool server “%(server)s” reported an error: %(error)s")
            % {"server": server.label, "error": text[:1000] or _("no details")}
        )
    return ToolResult(text=text or _("(The tool returned nothing.)"))
