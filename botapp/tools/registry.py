"""The built-in tools Jarvis knows: how one is declared and registered, and their rows in the database."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# Modules whose import registers built-in tools. A new capability adds its module here.
BUILTIN_MODULES = ["botapp.tools.builtins", "botapp.tools.drawing"]


class ToolError(Exception):
    """A tool could not do what it was asked; `str(error)` is a sentence for the model and the person."""


@dataclass(frozen=True)
class Source:
    """A web address a result came from, shown as a link."""

    url: str
    title: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"url": self.url, "title": self.title}


@dataclass(frozen=True)
class ToolResult:
    """What a tool gives back: text for the model, and the sources it came from."""

    text: str
    sources: tuple[Source, ...] = ()
    # Sources the answer is built on even if it does not name them (a page read, as opposed to a search hit).
    read: bool = False


@dataclass(frozen=True)
class ToolContext:
    """Who a tool runs for: enough to bill, attribute or localise what it does."""

    user_id: int | None
    conversation_id: int
    message_id: int
    channel: str
    bot_id: int | None
    time_zone: str
    allow_private_urls: bool
    # The answer's model call round that asked (UsageRecord.round of a row the tool bills to the answer).
    round_number: int = 1


@dataclass(frozen=True)
class BuiltinTool:
    """A tool implemented in Jarvis.

    `run(arguments, context)` does the work and returns a ToolResult, or raises ToolError with a sentence;
    `label(arguments, done)` is the status line people see ("Searching the web: …"); `available()` says
    whether its configuration lets it run at all (web search needs SEARXNG_URL).
    """

    name: str
    title: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]
    label: Callable[[dict[str, Any], bool], str]
    available: Callable[[], bool] = field(default=lambda: True)


_registry: dict[str, BuiltinTool] = {}
_loaded = False


def register(tool: BuiltinTool) -> BuiltinTool:
    """Make a built-in tool known (at import time of a module in BUILTIN_MODULES); returns it."""
    _registry[tool.name] = tool
    return tool


def builtin_tools() -> dict[str, BuiltinTool]:
    """Every registered built-in tool by name."""
    global _loaded
    if not _loaded:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True
    return dict(_registry)


def builtin_tools_ensure(tool_model: Any) -> list[Any]:
    """A row for every built-in tool (takes the model class, real or historical); returns the rows created."""
    created = []
    for tool in builtin_tools().values():
        row, was_created = tool_model.objects.update_or_create(
            name=tool.name,
            defaults={"kind": "builtin", "title": tool.title, "description": tool.description,
                      "input_schema": tool.parameters},
        )  # fmt: skip
        if was_created:
            created.append(row)
    return created
