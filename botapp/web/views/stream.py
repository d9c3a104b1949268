"""Sending a message, and its answer streamed back as newline-delimited JSON events.

The stream (`application/x-ndjson`), one JSON object per line:
  {"type": "start", "message_id": <answer id>, "question_id": <question id>,
   "conversation": {"id": .., "url": .., "title": ..}}   the turn is stored (conversation: first message only)
  {"type": "delta", "text": "..."}                        as the answer is written
  {"type": "render", "html": "<sanitized>"}               the answer so far as HTML, a few times a second
  {"type": "tool", "id": <tool call id>, "state": "running" | "done", "status": "running" | "ok" | "error" | ...,
   "label": "Searching the web: …", "duration_ms": .., "error": "...", "sources": [{"url", "title"}]}
                                                          when a tool call starts and ends
  {"type": "done", "message_id": ..., "html": "<sanitized>", "input_tokens": .., "output_tokens": ..,
   "cost_usd": "0.000012", "meta": "...", "sources": [{"url", "title"}]}
                                                          the stored answer, rendered on the server
  {"type": "error", "message": "<sentence>", "html": "<partial answer, sanitized>"}
A client that disconnects (the Stop button) cancels the stream; the funnel then stores the partial answer
as incomplete and bills it. Markdown is rendered here, never in the browser: the same sanitizer covers the
answer while it streams and once it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from botapp import selectors
from botapp.choices import ChoiceError, conversation_model_set
from botapp.conversations import (
    Reply,
    ReplyRefused,
    StreamEnd,
    Turn,
    conversation_start,
    turn_accept,
    turn_answer_stream,
    turn_edit,
    turn_retry,
    validate_text,
)
from botapp.documents.context import sources_html
from botapp.models import Channel, MediaFile
from botapp.tools.drawing import answer_pictures, drew_pictures
from botapp.tools.runner import ToolEvent
from botapp.web.display import answer_meta, picture_payload
from botapp.web.markdown import markdown_to_html
from botapp.web.services import profile_time_zone_set
from botapp.web.titles import display_title
from botapp.web.views import conversation_writes, own_web_conversation

# The answer so far is rendered at most this often while it streams, and never more often than this many
# times its own rendering time (a long answer with much code takes tens of milliseconds to render).
RENDER_INTERVAL = 0.15
RENDER_COST_FACTOR = 10


@login_required
@require_POST
@conversation_writes
async def message_send(request: HttpRequest, pk: int) -> HttpResponse:
    """Store the message, then stream the answer; refusals before the model is called are a JSON error."""
    user = await request.auser()
    conversation = await own_web_conversation(user, pk)
    await _time_zone_note(request, user)
    turn = await sync_to_async(turn_accept)(conversation=conversation, text=request.POST.get("text", ""), sender=user)
    return _stream(turn)


@login_required
@require_POST
@conversation_writes
async def conversation_start_send(request: HttpRequest) -> HttpResponse:
    """The first message from the home page: start the conversation (default persona unless chosen), then answer."""
    user = await request.auser()
    text = request.POST.get("text", "")
    await _time_zone_note(request, user)
    turn = await sync_to_async(_start_with_message)(
        user=user, text=text, persona_id=request.POST.get("persona", ""), model=request.POST.get("model", "")
    )
    conversation = turn.conversation
    start = {
        "conversation": {
            "id": conversation.pk,
            "url": reverse("web:conversation", args=[conversation.pk]),
            "title": display_title("", text),
        }
    }
    return _stream(turn, start=start)


@login_required
@require_POST
@conversation_writes
async def answer_regenerate(request: HttpRequest, pk: int) -> HttpResponse:
    """Answer the last question again; the answer it replaces stays on record as superseded."""
    user = await request.auser()
    conversation = await own_web_conversation(user, pk)
    turn = await sync_to_async(turn_retry)(conversation=conversation)
    return _stream(turn)


@login_required
@require_POST
@conversation_writes
async def message_edit(request: HttpRequest, pk: int, message_id: int) -> HttpResponse:
    """Ask a question again in other words: it and what followed are superseded, the new wording answered."""
    user = await request.auser()
    conversation = await own_web_conversation(user, pk)
    turn = await sync_to_async(turn_edit)(
        conversation=conversation, message_id=message_id, text=request.POST.get("text", ""), sender=user
    )
    return _stream(turn)


async def _time_zone_note(request: HttpRequest, user: AbstractBaseUser) -> None:
    """The browser's time zone: what "now" means for this person (the date and time tool). Checked once a session."""
    time_zone = request.POST.get("tz", "")
    if time_zone and time_zone != await request.session.aget("time_zone"):
        await sync_to_async(profile_time_zone_set)(user=user, time_zone=time_zone)
        await request.session.aset("time_zone", time_zone)


def _start_with_message(*, user: AbstractBaseUser, text: str, persona_id: str, model: str) -> Turn:
    """A new web conversation and its first turn, stored together: a refused message leaves no empty conversation."""
    validate_text(text)
    persona = selectors.personas_offered().filter(pk=persona_id).first() if persona_id.isdigit() else None
    with transaction.atomic():
        conversation = conversation_start(user=user, channel=Channel.WEB, persona=persona)
        if model:
            try:
                conversation_model_set(conversation=conversation, model=model)
            except ChoiceError as exc:
                raise ReplyRefused(str(exc)) from exc
        return turn_accept(conversation=conversation, text=text, sender=user)


# --- The stream ---------------------------------------------------------------------------------


def _stream(turn: Turn, *, start: dict[str, Any] | None = None) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        _answer_events(turn, start=start), content_type="application/x-ndjson; charset=utf-8"
    )
    # Proxies must pass each line on at once rather than collect the whole answer.
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response


def _event(kind: str, **data: Any) -> bytes:
    return (json.dumps({"type": kind, **data}, ensure_ascii=False) + "\n").encode()


async def _answer_events(turn: Turn, *, start: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
    """The answer as NDJSON events; if the client goes away, Django cancels this and the answer stops."""
    yield _event("start", message_id=turn.reply.pk, question_id=turn.user_message.pk, **(start or {}))
    loop = asyncio.get_running_loop()
    text = rendered = ""
    render_at = 0.0
    # aclosing: however this generator ends (cancelled, closed), the answer's own cleanup runs right away.
    async with aclosing(turn_answer_stream(turn)) as stream:
        upcoming: asyncio.Future[str | StreamEnd] | None = None
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(anext(stream))
                # Text not shown as HTML yet is rendered when its time comes, even if the model pauses.
                wait = None if text == rendered else max(render_at - loop.time(), 0.0)
                done, _pending = await asyncio.wait({upcoming}, timeout=wait)
                if done:
                    item = upcoming.result()
                    upcoming = None
                    if isinstance(item, ToolEvent):
                        yield _tool_event(item)
                        continue
                    if isinstance(item, StreamEnd):
                        yield await _end_event(item)
                        return
                    text += item
                    yield _event("delta", text=item)
                if text != rendered and loop.time() >= render_at:
                    started = time.perf_counter()
                    html = str(markdown_to_html(text))
                    cost = time.perf_counter() - started
                    rendered, render_at = text, loop.time() + max(RENDER_INTERVAL, cost * RENDER_COST_FACTOR)
                    yield _event("render", html=html)
        finally:
            if upcoming is not None and not upcoming.done():
                upcoming.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await upcoming


async def _end_event(item: StreamEnd) -> bytes:
    if item.reply is not None:
        pictures = []
        if drew_pictures(item.reply.tool_calls):
            pictures = await sync_to_async(answer_pictures)(item.reply.message.pk)
        return _done_event(item.reply, pictures)
    partial = item.error.partial
    return _event("error", message=str(item.error), html=str(markdown_to_html(partial)) if partial else "")


def _tool_event(event: ToolEvent) -> bytes:
    return _event(
        "tool",
        id=event.record_id,
        round=event.round,
        state=event.state,
        status=event.status,
        label=event.label,
        duration_ms=event.duration_ms,
        error=event.error,
        sources=[source.as_dict() for source in event.sources],
    )


def _done_event(reply: Reply, pictures: list[MediaFile]) -> bytes:
    cost = reply.cost_usd
    tokens = {"input_tokens": reply.message.input_tokens, "output_tokens": reply.message.output_tokens}
    return _event(
        "done",
        message_id=reply.message.pk,
        html=str(markdown_to_html(reply.text) + sources_html(reply.documents, reply.text)),
        cost_usd=str(cost) if cost is not None else None,
        meta=answer_meta(cost_usd=cost, **tokens),
        sources=reply.sources,
        pictures=[picture_payload(picture) for picture in pictures],
        **tokens,
    )
