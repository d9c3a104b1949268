"""Writes about tools: MCP servers and their tool lists, set-up from the environment, switches, model support."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from botapp.models import McpServer, ModelToolSupport, Persona, Tool, ToolKind
from botapp.redaction import stored_text_redact
from botapp.tools import limits
from botapp.tools.builtins import READ_WEB_PAGE, WEB_SEARCH
from botapp.tools.mcp_client import ServerAddress, mcp_tools_list
from botapp.tools.registry import ToolError, builtin_tools_ensure
from botapp.tools.runner import function_name

logger = logging.getLogger(__name__)

DEFAULT_PERSONA_NAME = "Jarvis"


def model_tools_unsupported_note(*, model: str, error: str) -> None:
    """Remember that `model` refuses tools: its next answers are asked without them (the admin can undo it)."""
    error = stored_text_redact(error)[:2000]
    ModelToolSupport.objects.update_or_create(model=model, defaults={"error": error, "noted_at": timezone.now()})


def mcp_server_address(server: McpServer) -> ServerAddress:
    headers = {server.auth_header_name: server.auth_header_value} if server.auth_header_encrypted else {}
    return ServerAddress(label=server.name, url=server.url, headers=headers)


def mcp_server_refresh(server: McpServer) -> list[Tool]:
    """List the server's tools and bring its Tool rows up to date; returns the tools that are new.

    A tool the server no longer lists is kept (its calls stay on record) but marked unavailable. Raises
    ToolError with a sentence when the server cannot be listed; the sentence is kept on the server too.
    """
    try:
        remote = async_to_sync(mcp_tools_list)(mcp_server_address(server), timeout=limits.timeout())
    except (ToolError, ValueError) as exc:
        server.list_error = stored_text_redact(str(exc))
        server.save(update_fields=["list_error"])
        raise ToolError(str(exc)) from exc
    created: list[Tool] = []
    with transaction.atomic():
        existing = {tool.remote_name: tool for tool in Tool.objects.filter(server=server)}
        taken = set(Tool.objects.exclude(server=server).values_list("name", flat=True))
        for item in remote:
            tool = existing.pop(item.name, None)
            if tool is None:
                name = function_name(f"{server.name}__{item.name}")
                suffix = 2
                while name in taken:
                    name = function_name(f"{server.name}__{item.name}")[:60] + f"_{suffix}"
                    suffix += 1
                tool = Tool(name=name, kind=ToolKind.MCP, server=server, remote_name=item.name)
                created.append(tool)
            taken.add(tool.name)
            tool.title = item.title[:200]
            tool.description = item.description
            tool.input_schema = item.input_schema
            tool.available = True
            tool.save()
        Tool.objects.filter(pk__in=[tool.pk for tool in existing.values()]).update(available=False)
        server.tools_listed_at = timezone.now()
        server.list_error = ""
        server.save(update_fields=["tools_listed_at", "list_error"])
        if server.from_environment:
            tools_enable_for_default_persona(created)
    return created


def mcp_servers_parse(text: str) -> list[tuple[str, str]]:
    """MCP_SERVERS (`name=url,name=url`) as pairs; ValueError with a sentence for an entry that is not one."""
    pairs = []
    for entry in (item.strip() for item in text.split(",")):
        if not entry:
            continue
        name, separator, url = entry.partition("=")
        name, url = name.strip(), url.strip()
        if not separator or not name or not url.startswith(("http://", "https://")):
            raise ValueError(
                f"MCP_SERVERS has an entry {entry!r} that is not name=url (for example weather=http://127.0.0.1:8001/mcp)."
            )
        pairs.append((name, url))
    return pairs


def default_persona() -> Persona | None:
    return Persona.objects.filter(name=DEFAULT_PERSONA_NAME).first()


def tools_enable_for_default_persona(tools: Iterable[Tool]) -> list[Tool]:
    """Enable tools for the default persona, each only once ever: after that the admin's choice stands."""
    persona = default_persona()
    fresh = [tool for tool in tools if not tool.default_persona_done]
    if persona is None or not fresh:
        return []
    persona.tools.add(*fresh)
    Tool.objects.filter(pk__in=[tool.pk for tool in fresh]).update(default_persona_done=True)
    return fresh


@dataclass
class ToolsSetup:
    """What `tools_setup` did, as sentences for `jarvis_setup` to print."""

    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def tools_setup() -> ToolsSetup:
    """At set-up: the built-in tools' rows, web search for the default persona when SEARXNG_URL is set, and the
    servers of MCP_SERVERS registered, listed and their tools enabled for the default persona (once each)."""
    report = ToolsSetup()
    builtin_tools_ensure(Tool)
    if settings.SEARXNG_URL:
        builtins = Tool.objects.filter(name__in=[WEB_SEARCH, READ_WEB_PAGE])
        enabled = tools_enable_for_default_persona(builtins)
        if enabled:
            report.done.append("web search (SearXNG) and page reading enabled for the default persona")
        else:
            report.done.append(f"web search through {settings.SEARXNG_URL}")
    try:
        pairs = mcp_servers_parse(settings.MCP_SERVERS)
    except ValueError as exc:
        report.problems.append(str(exc))
        pairs = []
    for name, url in pairs:
        server, _created = McpServer.objects.update_or_create(
            name=name, defaults={"url": url, "from_environment": True}
        )
        try:
            new = mcp_server_refresh(server)
        except ToolError as exc:
            report.problems.append(
                f"MCP server {name} ({url}) could not be listed: {exc} Its tools are listed when it answers "
                "(admin: MCP servers > List the tools again)."
            )
            continue
        tools_enable_for_default_persona(Tool.objects.filter(server=server))
        report.done.append(f"MCP server {name}: {server.tools.filter(available=True).count()} tool(s), {len(new)} new")
    return report


def tools_set_enabled(tools: QuerySet[Tool], *, enabled: bool) -> int:
    """Switch tools on or off for every persona at once (the personas keep their choice)."""
    return tools.update(enabled=enabled)


def tool_refresh_message(server: McpServer) -> str:
    """List a server's tools again and say what happened, for the admin."""
    try:
        new = mcp_server_refresh(server)
    except ToolError as exc:
        return _("%(server)s: %(error)s") % {"server": server, "error": exc}
    return _("%(server)s lists %(count)d tool(s); %(new)d new.") % {
        "server": server, "count": server.tools.filter(available=True).count(), "new": len(new),
    }  # fmt: skip
