"""Tool calls on record: stored before they run, finished with their outcome, read back for context and display."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from django.utils.translation import gettext as _

from botapp import llm
from botapp.models import ToolCall, ToolCallStatus
from botapp.redaction import stored_text_redact
from botapp.tools.registry import Source
from botapp.tools.runner import Outcome, Toolbox


def tool_calls_open(
    *,
    message_id: int,
    conversation_id: int,
    user_id: int | None,
    round_number: int,
    calls: Sequence[llm.ToolCall],
    toolbox: Toolbox | None,
) -> list[ToolCall]:
    """Write a round's calls down as running (in the caller's transaction), in the order the model asked."""
    rows = [
        ToolCall(
            message_id=message_id,
            conversation_id=conversation_id,
            user_id=user_id,
            round=round_number,
            position=position,
            call_id=call.id[:100],
            tool_id=(toolbox.tools[call.name].tool_id if toolbox and call.name in toolbox.tools else None),
            tool_name=call.name[:128],
            arguments=call.arguments,
        )
        for position, call in enumerate(calls)
    ]
    ToolCall.objects.bulk_create(rows)
    if any(row.pk is None for row in rows):  # a database without RETURNING for bulk inserts
        saved = {
            (r.round, r.position): r.pk for r in ToolCall.objects.filter(message_id=message_id, round=round_number)
        }
        for row in rows:
            row.pk = saved[(row.round, row.position)]
    return rows


def tool_calls_close(rows: Sequence[ToolCall], outcomes: Sequence[Outcome], *, model: str) -> int:
    """Store each call's outcome; returns the tokens the round takes in context (calls, results, framing)."""
    tokens = llm.TOKENS_PER_MESSAGE
    for row, outcome in zip(rows, outcomes, strict=True):
        row.status = outcome.status
        row.result = outcome.content
        row.result_chars = outcome.result_chars or len(outcome.content)
        row.error = stored_text_redact(outcome.error)
        row.sources = [source.as_dict() for source in outcome.sources]
        if outcome.read:
            row.sources = [{**source, "read": True} for source in row.sources]
        row.duration_ms = outcome.duration_ms
        row.token_count = (
            llm.count_tokens(row.tool_name, model=model)
            + llm.count_tokens(row.arguments, model=model)
            + llm.count_tokens(row.result, model=model)
            + 2 * llm.TOKENS_PER_MESSAGE
        )
        tokens += row.token_count
    fields = ["status", "result", "result_chars", "error", "sources", "duration_ms", "token_count"]
    ToolCall.objects.bulk_update(rows, fields)
    return tokens


def tool_calls_refuse(rows: Sequence[ToolCall], *, reason: str) -> None:
    """Mark calls that were not run (the person is over budget or blocked), with the sentence why."""
    ids = [row.pk for row in rows]
    ToolCall.objects.filter(pk__in=ids).update(
        status=ToolCallStatus.REFUSED, error=reason, result=_("Error: %(error)s") % {"error": reason}
    )


def tool_calls_interrupt(*, message_id: int, reason: str) -> int:
    """Calls of an answer still marked running (stopped, or a crash): they end with `reason`."""
    return ToolCall.objects.filter(message_id=message_id, status=ToolCallStatus.RUNNING).update(
        status=ToolCallStatus.ERROR, error=reason, result=_("Error: %(error)s") % {"error": reason}
    )


def tool_calls_of(message_ids: Sequence[int]) -> QuerySet[ToolCall]:
    """The calls of some answers, in the order they were made."""
    return ToolCall.objects.filter(message_id__in=list(message_ids)).order_by("message_id", "round", "position")


def sources_of(calls: Sequence[ToolCall], text: str) -> list[dict[str, Any]]:
    """The sources an answer used: pages it read, and search results its text names. No duplicates, in order."""
    seen: set[str] = set()
    found = []
    for call in calls:
        if call.status != ToolCallStatus.OK:
            continue
        for source in call.sources or ():
            url = source.get("url", "")
            if not url.startswith(("http://", "https://")) or url in seen:
                continue
            if source.get("read") or url in text:
                seen.add(url)
                found.append(Source(url=url, title=source.get("title", "")).as_dict())
    return found


def tool_call_label(call: ToolCall) -> str:
    """The finished step's label, as the status line said it while it ran ("Searched the web: …")."""
    from botapp.tools.registry import builtin_tools

    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    arguments = arguments if isinstance(arguments, dict) else {}
    builtin = builtin_tools().get(call.tool_name)
    if builtin is not None:
        return builtin.label(arguments, True)
    server, separator, remote = call.tool_name.partition("__")
    if separator:
        return _("Used %(server)s: %(tool)s") % {"server": server, "tool": remote}
    return call.tool_name


def tool_call_steps(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """An answer's calls as the web page shows them: one collapsible step each."""
    return [
        {
            "id": call.pk,
            "label": tool_call_label(call),
            "status": call.status,
            "duration_ms": call.duration_ms,
            "error": call.error,
            "sources": [s for s in call.sources or () if str(s.get("url", "")).startswith(("http://", "https://"))],
        }
        for call in calls
    ]
