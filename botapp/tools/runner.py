"""Which tools an answer offers, and running the calls the model asks for: in parallel, within limits.

Nothing here writes to the database; the funnel stores the calls before they run and their outcomes after.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Exists
from django.utils.translation import gettext as _

from botapp import llm
from botapp.models import ModelToolSupport, Persona, Tool, ToolCallStatus, ToolKind
from botapp.tools import limits
from botapp.tools.mcp_client import ServerAddress, mcp_tool_call
from botapp.tools.registry import BuiltinTool, Source, ToolContext, ToolError, ToolResult, builtin_tools

logger = logging.getLogger(__name__)

# What OpenAI accepts as a function name.
_FUNCTION_NAME = re.compile(r"[^a-zA-Z0-9_-]")


def function_name(text: str) -> str:
    """`text` as a valid function name: letters, digits, _ and -, at most 64 characters."""
    return _FUNCTION_NAME.sub("_", text)[:64] or "tool"


@dataclass(frozen=True)
class OfferedTool:
    """A tool offered to the model in one answer, and how to run it."""

    name: str
    tool_id: int
    description: str
    parameters: dict[str, Any]
    builtin: BuiltinTool | None = None
    server: ServerAddress | None = None
    remote_name: str = ""

    def label(self, arguments: dict[str, Any], *, done: bool) -> str:
        """The status line people see for a call of this tool."""
        if self.builtin is not None:
            return self.builtin.label(arguments, done)
        values = {"server": self.server.label if self.server else "", "tool": self.remote_name}
        return (_("Used %(server)s: %(tool)s") if done else _("Using %(server)s: %(tool)s…")) % values

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        if self.builtin is not None:
            return await self.builtin.run(arguments, context)
        assert self.server is not None
        return await mcp_tool_call(self.server, name=self.remote_name, arguments=arguments, timeout=limits.timeout())


@dataclass
class Toolbox:
    """The tools one answer may use, by the name the model calls them."""

    tools: dict[str, OfferedTool]

    def specs(self) -> list[dict[str, Any]]:
        return [
            llm.tool_spec(name=tool.name, description=tool.description, parameters=tool.parameters)
            for tool in self.tools.values()
        ]


def _server_address(tool: Tool) -> ServerAddress | None:
    server = tool.server
    if server is None or not server.enabled:
        return None
    headers = {}
    if server.auth_header_encrypted and server.auth_header_name:
        try:
            headers[server.auth_header_name] = server.auth_header_value
        except ValueError:
            logger.warning("The auth header of MCP server %s cannot be decrypted: its tools are left out", server)
            return None
    return ServerAddress(label=server.name, url=server.url, headers=headers)


def toolbox_for(*, persona: Persona | None, model: str) -> Toolbox | None:
    """The tools `persona` enables that can run now, for `model`; None when there are none (one query)."""
    if persona is None or limits.max_rounds() == 0:
        return None
    rows = list(
        Tool.objects.filter(personas=persona, enabled=True, available=True)
        .select_related("server")
        .annotate(model_refuses=Exists(ModelToolSupport.objects.filter(model=model)))
        .order_by("kind", "name")
    )
    if not rows or rows[0].model_refuses:
        return None
    builtins = builtin_tools()
    offered: dict[str, OfferedTool] = {}
    for row in rows:
        if row.kind == ToolKind.BUILTIN:
            builtin = builtins.get(row.name)
            if builtin is None or not builtin.available():
                continue
            offered[row.name] = OfferedTool(
                name=row.name, tool_id=row.pk, description=row.description, parameters=row.input_schema,
                builtin=builtin,
            )  # fmt: skip
        else:
            address = _server_address(row)
            if address is None:
                continue
            offered[row.name] = OfferedTool(
                name=row.name, tool_id=row.pk, description=row.description or row.title,
                parameters=row.input_schema, server=address, remote_name=row.remote_name,
            )  # fmt: skip
    return Toolbox(offered) if offered else None


# --- Running calls ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one call: its status, what the model is given, and what people are shown."""

    status: str
    content: str
    error: str = ""
    sources: tuple[Source, ...] = ()
    read: bool = False
    duration_ms: int = 0
    result_chars: int = 0


@dataclass(frozen=True)
class ToolEvent:
    """A call starting or ending, for the status line in Telegram and the steps on the web page."""

    record_id: int
    round: int
    position: int
    name: str
    label: str
    state: str  # "running" or "done"
    status: str
    duration_ms: int | None = None
    error: str = ""
    sources: tuple[Source, ...] = field(default=())


ToolEventCallback = Callable[[ToolEvent], Awaitable[None]]


def arguments_parse(text: str) -> dict[str, Any]:
    """The model's JSON arguments as a dict; ToolError with a sentence when they are not."""
    if len(text) > limits.MAX_ARGUMENT_CHARS:
        raise ToolError(_("The arguments are too long (%(n)d characters).") % {"n": len(text)})
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ToolError(_("The arguments are not valid JSON.")) from exc
    if not isinstance(value, dict):
        raise ToolError(_("The arguments must be a JSON object."))
    return value


def _failed(status: str, error: str, started: float) -> Outcome:
    return Outcome(
        status=status,
        content=_("Error: %(error)s") % {"error": error},
        error=error,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


async def call_run(call: llm.ToolCall, *, toolbox: Toolbox, context: ToolContext) -> Outcome:
    """Run one call within the time limit; every failure becomes an outcome with a sentence, never an exception."""
    started = time.monotonic()
    offered = toolbox.tools.get(call.name)
    if offered is None:
        return _failed(
            ToolCallStatus.REFUSED, _("There is no tool named “%(name)s”.") % {"name": call.name[:64]}, started
        )
    try:
        arguments = arguments_parse(call.arguments)
    except ToolError as exc:
        return _failed(ToolCallStatus.REFUSED, str(exc), started)
    try:
        async with asyncio.timeout(limits.timeout()):
            result = await offered.run(arguments, context)
    except TimeoutError:
        error = _("The tool “%(name)s” took longer than %(seconds)g seconds and was stopped.") % {
            "name": call.name, "seconds": limits.timeout(),
        }  # fmt: skip
        return _failed(ToolCallStatus.TIMEOUT, error, started)
    except ToolError as exc:
        return _failed(ToolCallStatus.ERROR, str(exc), started)
    except Exception:
        logger.exception("Tool %s failed", call.name)
        return _failed(
            ToolCallStatus.ERROR, _("The tool “%(name)s” failed unexpectedly.") % {"name": call.name}, started
        )
    return Outcome(
        status=ToolCallStatus.OK,
        content=limits.cap(result.text),
        sources=result.sources,
        read=result.read,
        duration_ms=int((time.monotonic() - started) * 1000),
        result_chars=len(result.text),
    )


async def calls_run(
    calls: Sequence[llm.ToolCall],
    *,
    record_ids: Sequence[int],
    round_number: int,
    toolbox: Toolbox,
    context: ToolContext,
    on_event: ToolEventCallback | None = None,
) -> list[Outcome]:
    """Run a round's calls side by side; beyond MAX_CALLS_PER_ROUND they are refused. Outcomes in call order."""

    async def tell(event: ToolEvent) -> None:
        if on_event is None:
            return
        try:
            await on_event(event)
        except Exception:
            # Showing progress must never stop the work it shows.
            logger.warning("Could not show the progress of tool call %s", event.record_id, exc_info=True)

    async def one(position: int, call: llm.ToolCall) -> Outcome:
        offered = toolbox.tools.get(call.name)
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = {}
        arguments = arguments if isinstance(arguments, dict) else {}

        def label(done: bool) -> str:
            return offered.label(arguments, done=done) if offered is not None else call.name[:64]

        event = {"record_id": record_ids[position], "round": round_number, "position": position, "name": call.name}
        await tell(ToolEvent(**event, label=label(False), state="running", status=ToolCallStatus.RUNNING))
        if position >= limits.MAX_CALLS_PER_ROUND:
            error = _("Too many tool calls at once: at most %(n)d per round.") % {"n": limits.MAX_CALLS_PER_ROUND}
            outcome = _failed(ToolCallStatus.REFUSED, error, time.monotonic())
        else:
            outcome = await call_run(call, toolbox=toolbox, context=context)
        await tell(
            ToolEvent(
                **event, label=label(True), state="done", status=outcome.status, duration_ms=outcome.duration_ms,
                error=outcome.error, sources=outcome.sources,
            )
        )  # fmt: skip
        return outcome

    return list(await asyncio.gather(*(one(position, call) for position, call in enumerate(calls))))
