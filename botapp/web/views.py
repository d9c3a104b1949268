"""Views of the browser chat page; sending streams the answer as newline-delimited JSON events.

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

Pictures (`image_send`, "/image PROMPT" or the Draw button) and read-out answers (`message_speech`, the play
button) answer with one JSON object; the files themselves are served by `media_file`, to their owner and staff.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from decimal import Decimal
from functools import wraps
from typing import Any
from urllib.parse import quote

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections, transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from botapp import media, search, selectors
from botapp.choices import ChoiceError, conversation_model_set, conversation_persona_set, model_price_label
from botapp.conversations import (
    Reply,
    ReplyError,
    ReplyRefused,
    StreamEnd,
    Turn,
    conversation_start,
    documents_accept,
    reply_speak,
    turn_accept,
    turn_answer_stream,
    turn_draw,
    turn_edit,
    turn_retry,
    validate_text,
)
from botapp.documents.context import sources_html
from botapp.documents.context import sources_of as document_sources_of
from botapp.documents.models import Document
from botapp.documents.progress import documents_of, progress_json
from botapp.documents.services import Upload, upload_refusal
from botapp.linking import LinkError, link_code_redeem
from botapp.models import (
    Channel,
    Conversation,
    MediaFile,
    MediaKind,
    Message,
    MessageStatus,
    Role,
    TelegramIdentity,
    UsageKind,
)
from botapp.staff import conversations_export_json, conversations_export_markdown
from botapp.tools.drawing import answer_pictures, drew_pictures
from botapp.tools.records import sources_of, tool_call_steps
from botapp.tools.runner import ToolEvent
from botapp.usage import budget_periods, format_usd
from botapp.web.charts import bar_chart
from botapp.web.forms import ConversationCreateForm, ConversationPersonaForm, ConversationRenameForm, LinkCodeForm
from botapp.web.markdown import markdown_to_html
from botapp.web.services import conversation_delete, conversation_rename, profile_time_zone_set
from botapp.web.titles import display_title

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_SECURITY_POLICY", "format_usd", "with_csp"]

# Defence in depth behind the sanitizer: no inline script or style runs even if markup slipped through.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
USAGE_RANGES = (7, 30, 90)
# The answer so far is rendered at most this often while it streams, and never more often than this many
# times its own rendering time (a long answer with much code takes tens of milliseconds to render).
RENDER_INTERVAL = 0.15
RENDER_COST_FACTOR = 10
# What the search box takes: enough for a sentence.
SEARCH_MAX_CHARS = 200

View = Callable[..., HttpResponse]


def with_csp(view: View) -> View:
    """Send the page with the Content-Security-Policy above."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    return wrapped


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


# --- Formatting ---------------------------------------------------------------------------------


def format_tokens(value: float) -> str:
    """Token counts for a chart axis: 950, 12k, 1.5M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:g}"


def answer_meta(*, input_tokens: int, output_tokens: int, cost_usd: Decimal | None) -> str:
    """The small line under an answer: its tokens and what it cost."""
    return _("%(input)s tokens in · %(output)s out · %(cost)s") % {
        "input": input_tokens,
        "output": output_tokens,
        "cost": format_usd(cost_usd),
    }


# --- Conversations ------------------------------------------------------------------------------


def _own_conversation(request: HttpRequest, pk: int) -> Conversation:
    """The signed-in person's conversation; anyone else's is a 404, as if it did not exist."""
    return get_object_or_404(Conversation.objects.select_related("persona", "bot"), pk=pk, user=request.user)


def _model_options(conversation: Conversation | None) -> list[dict[str, str]]:
    """The model menu: the persona's own model first, then each model offered with its price."""
    offered = selectors.models_offered()
    if not offered:
        return []
    persona = conversation.persona if conversation is not None else selectors.persona_default()
    persona_model = (persona.model if persona else "") or settings.OPENAI_MODEL
    chosen = conversation.model if conversation is not None else ""
    names = {price.model for price in offered}
    options = [
        {
            "value": "",
            "label": _("Persona's model (%(model)s)") % {"model": persona_model},
            "selected": chosen not in names,
        }
    ]
    options += [
        {
            "value": price.model,
            "label": f"{price.model} · {model_price_label(price)}",
            "selected": chosen == price.model,
        }
        for price in offered
    ]
    return options


def _chat_context(request: HttpRequest, conversation: Conversation | None = None, **extra: Any) -> dict[str, Any]:
    personas = list(selectors.personas_offered())
    default = selectors.persona_default()
    current = conversation.persona_id if conversation is not None else (default.pk if default else None)
    return {
        "nav": "chat",
        "conversations": selectors.conversation_list(user=request.user),
        "conversation": conversation,
        "personas": personas,
        "current_persona": current,
        "model_options": _model_options(conversation),
        "max_chars": settings.MAX_MESSAGE_CHARS,
        "max_document_bytes": settings.MAX_DOCUMENT_BYTES,
        "statuses": MessageStatus,
        **extra,
    }


@with_csp
@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """A new conversation: an empty, focused message box; the first message starts it. The list beside it."""
    context = _chat_context(request, title=_("New conversation"), history=[], can_send=True)
    return render(request, "botapp/chat.html", context)


@with_csp
@login_required
@require_GET
def conversation_search(request: HttpRequest) -> HttpResponse:
    """The person's own conversations that say what they looked for, newest first, in place of the list."""
    query = " ".join(request.GET.get("q", "").split())[:SEARCH_MAX_CHARS]
    if not query:
        return redirect("web:home")
    found = search.conversations_matching(user=request.user, query=query)
    context = _chat_context(
        request, title=_("New conversation"), history=[], can_send=True, search_query=query, found=found
    )
    return render(request, "botapp/chat.html", context)


@with_csp
@login_required
@require_GET
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One conversation: its history rendered on the server, its settings, and the message box."""
    conversation = _own_conversation(request, pk)
    history = list(selectors.conversation_messages(conversation=conversation).prefetch_related("media__usage"))
    first_question = next((m.content for m in history if m.role == Role.USER and m.content), "")
    last_answer = next((m.pk for m in reversed(history) if m.role == Role.ASSISTANT), None)
    documents_sent = document_sources_of([m.pk for m in history if m.role == Role.ASSISTANT])
    files = {d.pk: d for d in documents_of([a["document_id"] for m in history for a in _documents_in(m)])}
    for message in history:
        message.files = [
            progress_json(files[a["document_id"]]) for a in _documents_in(message) if a["document_id"] in files
        ]
        if message.role == Role.ASSISTANT:
            calls = list(message.tool_calls.all())
            message.steps = tool_call_steps(calls)
            message.sources = sources_of(calls, message.content)
            message.html = markdown_to_html(message.content) + sources_html(
                documents_sent.get(message.pk, []), message.content
            )
            message.meta = answer_meta(
                input_tokens=message.input_tokens, output_tokens=message.output_tokens, cost_usd=message.cost_usd
            )
            _with_media(message)
            message.is_last_answer = message.pk == last_answer
    context = _chat_context(
        request,
        conversation,
        title=display_title(conversation.title, first_question),
        untitled=not conversation.title,
        history=history,
        can_send=conversation.channel == Channel.WEB,
    )
    return render(request, "botapp/chat.html", context)


@login_required
@require_GET
def conversation_title(request: HttpRequest, pk: int) -> JsonResponse:
    """The conversation's title as the list shows it; `titled` once the title job (or the person) named it."""
    conversation = _own_conversation(request, pk)
    first_question = selectors.conversation_first_question(conversation=conversation)
    return JsonResponse(
        {"title": display_title(conversation.title, first_question), "titled": bool(conversation.title)}
    )


@login_required
@require_POST
def conversation_create(request: HttpRequest) -> HttpResponse:
    """Start an empty web conversation: for the page's script when a document or picture comes first (JSON), or
    the page without script (a redirect). The persona chosen, else the default; the model chosen, if offered."""
    form = ConversationCreateForm(request.POST)
    if not form.is_valid():
        if _wants_json(request):
            return _json_error(_("Choose one of the offered personas to start a conversation."))
        messages.error(request, _("Choose one of the offered personas to start a conversation."))
        return redirect("web:home")
    with transaction.atomic():
        conversation = conversation_start(user=request.user, channel=Channel.WEB, persona=form.cleaned_data["persona"])
        model = request.POST.get("model", "")
        if model:
            try:
                conversation_model_set(conversation=conversation, model=model)
            except ChoiceError as exc:
                transaction.set_rollback(True)
                return _json_error(str(exc))
    if _wants_json(request):
        url = reverse("web:conversation", args=[conversation.pk])
        return JsonResponse({"conversation": {"id": conversation.pk, "url": url, "title": display_title("", "")}})
    return redirect("web:conversation", pk=conversation.pk)


@login_required
@require_POST
def conversation_rename_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename; an empty title falls back to the first question."""
    conversation = _own_conversation(request, pk)
    form = ConversationRenameForm(request.POST)
    if form.is_valid():
        conversation_rename(conversation=conversation, title=form.cleaned_data["title"])
    else:
        messages.error(request, _("The title is too long: at most 200 characters."))
    return redirect("web:conversation", pk=conversation.pk)


def _choice_answer(request: HttpRequest, conversation: Conversation, sentence: str, *, ok: bool) -> HttpResponse:
    """A persona or model change answered as JSON to the page's script, or as a message after a redirect."""
    if _wants_json(request):
        return JsonResponse({"message": sentence}, status=200 if ok else 400)
    (messages.success if ok else messages.error)(request, sentence)
    return redirect("web:conversation", pk=conversation.pk)


@login_required
@require_POST
def conversation_persona_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Answer as another persona from the next message on."""
    conversation = _own_conversation(request, pk)
    form = ConversationPersonaForm(request.POST)
    if not form.is_valid():
        return _choice_answer(request, conversation, _("Choose one of the offered personas."), ok=False)
    conversation_persona_set(conversation=conversation, persona=form.cleaned_data["persona"])
    sentence = _("Jarvis now answers as %(persona)s in this conversation.") % {"persona": conversation.persona}
    return _choice_answer(request, conversation, sentence, ok=True)


@login_required
@require_POST
def conversation_model_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Answer with another of the offered models from the next message on (empty: the persona's model)."""
    conversation = _own_conversation(request, pk)
    try:
        conversation_model_set(conversation=conversation, model=request.POST.get("model", ""))
    except ChoiceError as exc:
        return _choice_answer(request, conversation, str(exc), ok=False)
    if conversation.model:
        sentence = _("The next answers come from %(model)s.") % {"model": conversation.model}
    else:
        sentence = _("The next answers come from the persona's model.")
    return _choice_answer(request, conversation, sentence, ok=True)


@login_required
@require_POST
def conversation_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete the conversation; what it cost stays in the ledger."""
    conversation = _own_conversation(request, pk)
    conversation_delete(conversation=conversation)
    messages.success(request, _("The conversation was deleted."))
    return redirect("web:home")


EXPORTS = {
    "md": (conversations_export_markdown, "text/markdown; charset=utf-8"),
    "json": (conversations_export_json, "application/json; charset=utf-8"),
}


@login_required
@require_GET
def conversation_export(request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
    """Download one's own conversation as Markdown or JSON (the admin's exporters, for one conversation)."""
    conversation = _own_conversation(request, pk)
    if fmt not in EXPORTS:
        raise Http404(_("No such export format."))
    export, content_type = EXPORTS[fmt]
    response = HttpResponse(export(ids=[conversation.pk]), content_type=content_type)
    name = slugify(conversation.title, allow_unicode=True) or f"conversation-{conversation.pk}"
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name, safe='')}.{fmt}"
    return response


# --- Sending and streaming ----------------------------------------------------------------------


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
    partial = getattr(item.error, "partial", "")
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


def _stream(turn: Turn, *, start: dict[str, Any] | None = None) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        _answer_events(turn, start=start), content_type="application/x-ndjson; charset=utf-8"
    )
    # Proxies must pass each line on at once rather than collect the whole answer.
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response


class _ReadOnly(ReplyRefused):
    """A Telegram conversation shown on the web page: answers would not reach Telegram."""


async def _own_web_conversation(user: AbstractBaseUser, pk: int) -> Conversation:
    """The person's web conversation to write to; a Telegram one is refused (answers would not reach Telegram)."""
    try:
        conversation = await Conversation.objects.select_related("persona", "bot", "user").aget(pk=pk, user=user)
    except Conversation.DoesNotExist as exc:
        raise Http404(_("No such conversation.")) from exc
    if conversation.channel != Channel.WEB:
        raise _ReadOnly(_("This conversation happens in Telegram: continue it there."))
    return conversation


def _conversation_writes(view: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a refusal before anything was stored into a JSON error the page shows above the message box."""

    @wraps(view)
    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except ReplyRefused as refusal:
            logger.info("Request to %s refused before storing: %s", request.path, refusal)
            status = 409 if isinstance(refusal, _ReadOnly) else 400
            return JsonResponse({"type": "error", "message": str(refusal)}, status=status)

    return wrapped


# --- Documents ----------------------------------------------------------------------------------


def _documents_in(message: Any) -> list[dict[str, Any]]:
    return [a for a in message.attachments or () if a.get("type") == "document"]


@login_required
@require_POST
def document_upload(request: HttpRequest, pk: int) -> HttpResponse:
    """Attach a file to the conversation: stored, queued for indexing; its progress is at `status_url`."""
    conversation = _own_conversation(request, pk)
    if conversation.channel != Channel.WEB:
        return JsonResponse({"message": _("This conversation happens in Telegram: send the file there.")}, status=409)
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"message": _("Choose a file to attach.")}, status=400)
    refusal = upload_refusal(file_name=upload.name, size=upload.size, mime_type=upload.content_type or "")
    if refusal:
        return JsonResponse({"message": refusal}, status=400)
    try:
        accepted = documents_accept(
            conversation=conversation,
            uploads=[Upload(file_name=upload.name, data=upload.read(), mime_type=upload.content_type or "")],
            sender=request.user,
        )
    except ReplyRefused as refusal:
        return JsonResponse({"message": str(refusal)}, status=400)
    document = accepted.documents[0]
    return JsonResponse(
        {
            "message_id": accepted.message.pk,
            "document": progress_json(document),
            "status_url": reverse("web:document", args=[conversation.pk, document.pk]),
        },
        status=201,
    )


@login_required
@require_GET
def document_status(request: HttpRequest, pk: int, document_id: int) -> HttpResponse:
    """How far a file of the conversation is (the page polls this while it is being read)."""
    conversation = _own_conversation(request, pk)
    document = get_object_or_404(Document.objects.defer("summary"), pk=document_id, conversation=conversation)
    return JsonResponse(progress_json(document))


# --- Pictures and speech ------------------------------------------------------------------------

# Work a person has started and will pay for goes on when their browser goes away; these hold it meanwhile.
_unfinished: set[asyncio.Task[Any]] = set()


async def _finish_even_if_gone(work: Coroutine[Any, Any, Any]) -> Any:
    """Await `work` so that it completes and is stored even if the client disconnects (which cancels the view).

    It runs as a task of its own, in a fresh context with a database thread of its own: the request's context
    ties database calls to a thread (through a sync middleware) that stops with the request. Only the language
    is carried over.
    """
    language = translation.get_language()

    async def in_language() -> Any:
        async with ThreadSensitiveContext():
            try:
                with translation.override(language):
                    return await work
            finally:
                await sync_to_async(connections.close_all)()

    task = asyncio.get_running_loop().create_task(in_language(), context=contextvars.Context())
    _unfinished.add(task)
    task.add_done_callback(_unfinished.discard)
    return await asyncio.shield(task)


def _with_media(message: Message) -> None:
    """Attach an answer's picture and recording (prefetched) for the template."""
    files = list(message.media.all())
    message.pictures = [item for item in files if item.kind == MediaKind.IMAGE]
    message.recording = next((item for item in files if item.kind == MediaKind.SPEECH), None)
    # An /image answer is its picture (its text is the caption); pictures a tool drew go with the answer's text.
    message.is_picture = any(
        item.usage is not None and item.usage.message_id == message.pk for item in message.pictures
    )
    if message.is_picture:
        cost = sum((item.usage.cost_usd for item in message.pictures if item.usage is not None), Decimal("0"))
        message.meta = picture_meta(cost)


def picture_meta(cost: Decimal) -> str:
    """The small line under a picture: what it cost."""
    return _("Picture · %(cost)s") % {"cost": format_usd(cost)}


def picture_payload(item: MediaFile) -> dict[str, Any]:
    """How the page shows a picture: where it is, its size, and what it was made from."""
    return {
        "id": item.pk,
        "url": media.media_url(item),
        "width": item.width,
        "height": item.height,
        "caption": item.prompt,
    }


def _json_error(message: str, status: int = 400, **extra: Any) -> JsonResponse:
    return JsonResponse({"type": "error", "message": message, **extra}, status=status)


@login_required
@require_POST
@_conversation_writes
async def image_send(request: HttpRequest, pk: int) -> HttpResponse:
    """Draw a picture ("/image PROMPT" or the Draw button), or change one of the conversation's (`edit_of`)."""
    user = await request.auser()
    conversation = await _own_web_conversation(user, pk)
    text = request.POST.get("text", "").strip()
    prompt = media.image_command(text)
    if prompt is None:
        prompt, text = text, f"/image {text}"
    if not prompt:
        return _json_error(_("Say what to draw, for example: a lighthouse at dawn, in watercolour."))
    source = None
    edit_of = request.POST.get("edit_of", "")
    if edit_of:
        picture = await MediaFile.objects.filter(
            pk=int(edit_of) if edit_of.isdigit() else 0, conversation=conversation, kind=MediaKind.IMAGE
        ).afirst()
        if picture is None:
            return _json_error(_("That picture is no longer in this conversation. Reload the page."))
        source = await sync_to_async(media.image_source_from_media)(picture)
    turn = await sync_to_async(turn_accept)(conversation=conversation, text=text, sender=user)
    ids = {"question_id": turn.user_message.pk, "message_id": turn.reply.pk}
    try:
        drawn = await _finish_even_if_gone(turn_draw(turn, prompt=prompt, source=source))
    except ReplyError as error:
        return JsonResponse({"type": "error", "message": str(error), **ids})
    meta = picture_meta(drawn.usage.cost_usd)
    return JsonResponse({"type": "done", "picture": picture_payload(drawn.media), "meta": meta, **ids})


@login_required
@require_POST
@_conversation_writes
async def message_send(request: HttpRequest, pk: int) -> HttpResponse:
    """Store the message, then stream the answer; refusals before the model is called are a JSON error."""
    user = await request.auser()
    conversation = await _own_web_conversation(user, pk)
    await _time_zone_note(request, user)
    turn = await sync_to_async(turn_accept)(conversation=conversation, text=request.POST.get("text", ""), sender=user)
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


@login_required
@require_POST
@_conversation_writes
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
@_conversation_writes
async def answer_regenerate(request: HttpRequest, pk: int) -> HttpResponse:
    """Answer the last question again; the answer it replaces stays on record as superseded."""
    user = await request.auser()
    conversation = await _own_web_conversation(user, pk)
    turn = await sync_to_async(turn_retry)(conversation=conversation)
    return _stream(turn)


@login_required
@require_POST
@_conversation_writes
async def message_edit(request: HttpRequest, pk: int, message_id: int) -> HttpResponse:
    """Ask a question again in other words: it and what followed are superseded, the new wording answered."""
    user = await request.auser()
    conversation = await _own_web_conversation(user, pk)
    turn = await sync_to_async(turn_edit)(
        conversation=conversation, message_id=message_id, text=request.POST.get("text", ""), sender=user
    )
    return _stream(turn)


@login_required
@require_POST
async def message_speech(request: HttpRequest, pk: int) -> HttpResponse:
    """Read one of the person's answers out (the first time, charged as speech) and say where the audio is."""
    user = await request.auser()
    message = (
        await Message.objects.select_related("conversation__persona", "conversation__bot")
        .filter(pk=pk, conversation__user=user, role=Role.ASSISTANT)
        .afirst()
    )
    if message is None:
        return _json_error(_("No such answer."), 404)
    if message.status not in (MessageStatus.COMPLETE, MessageStatus.INCOMPLETE) or not message.content.strip():
        return _json_error(_("This answer has no words to read out."))
    try:
        spoken = await _finish_even_if_gone(reply_speak(message=message, requested_by=user))
    except ReplyError as error:
        return _json_error(str(error), 502 if not isinstance(error, ReplyRefused) else 400)
    cost = spoken.usage.cost_usd if spoken.usage is not None else None
    return JsonResponse(
        {"type": "done", "url": media.media_url(spoken.media), "cost_usd": str(cost) if cost is not None else None}
    )


_BYTE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _ranged(request: HttpRequest, data: bytes, *, content_type: str) -> HttpResponse:
    """The file, or the one byte range asked for: browsers need ranges to seek in audio and to know its length."""
    match = _BYTE_RANGE.match(request.headers.get("Range", "").strip())
    if match is None or not data or match.groups() == ("", ""):
        response = HttpResponse(data, content_type=content_type)
    else:
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        else:
            start, end = max(len(data) - int(last), 0), len(data) - 1
        if start > end:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{len(data)}"
            return response
        response = HttpResponse(data[start : end + 1], content_type=content_type, status=206)
        response["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    response["Accept-Ranges"] = "bytes"
    return response


@login_required
@require_GET
def media_file(request: HttpRequest, pk: int) -> HttpResponse:
    """A picture or recording, for the owner of its conversation, whoever asked for it, and staff; else 404."""
    item = get_object_or_404(MediaFile.objects.select_related("conversation"), pk=pk)
    allowed = (
        request.user.is_staff or item.conversation.user_id == request.user.pk or item.requested_by_id == request.user.pk
    )
    if not allowed:
        raise Http404(_("No such file."))
    try:
        with item.file.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise Http404(_("No such file.")) from exc
    response = _ranged(request, data, content_type=item.content_type)
    suffix = item.file.name.rsplit(".", 1)[-1] if "." in item.file.name else "bin"
    response["Content-Disposition"] = f'inline; filename="jarvis-{item.kind}-{item.pk}.{suffix}"'
    # Private: a shared cache must never hand one person's picture to another.
    response["Cache-Control"] = "private, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


# --- Usage --------------------------------------------------------------------------------------


@with_csp
@login_required
@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    """Tokens and cost per day as charts, per model as a table, and what is left of the budget."""
    try:
        days = int(request.GET.get("days", 30))
    except ValueError:
        days = 30
    if days not in USAGE_RANGES:
        days = 30
    daily = selectors.usage_by_day(user=request.user, days=days)
    labels = [day.day.strftime("%m-%d") for day in daily]
    cost_chart = bar_chart(
        labels=labels,
        series=[[day.cost_usd for day in daily]],
        series_names=[_("Cost")],
        format_value=format_usd,
    )
    token_chart = bar_chart(
        labels=labels,
        series=[[day.input_tokens for day in daily], [day.output_tokens for day in daily]],
        series_names=[_("Input tokens"), _("Output tokens")],
        format_value=format_tokens,
    )
    by_model = selectors.usage_by_model(user=request.user, since=daily[0].day)
    kinds = dict(UsageKind.choices)
    for row in by_model:
        row["cost"] = format_usd(row["cost_usd"])
        row["kind_label"] = kinds.get(row["kind"], row["kind"])
    names = {"daily": _("Today"), "monthly": _("This month")}
    budgets = [
        {
            "name": names[period.name],
            "limit": format_usd(period.limit) if period.limit is not None else None,
            "limit_value": period.limit,
            "spent": format_usd(period.spent),
            "spent_value": min(period.spent, period.limit) if period.limit is not None else period.spent,
            "remaining": format_usd(period.remaining) if period.remaining is not None else None,
            "resets": timezone.localtime(period.resets),
            "exhausted": period.exhausted,
        }
        for period in budget_periods(user=request.user)
    ]
    for budget in budgets:
        if budget["limit_value"]:
            # <meter> turns its bar from good to bad colours as the budget is spent.
            budget["meter_low"] = budget["limit_value"] / 2
            budget["meter_high"] = budget["limit_value"] * Decimal("0.9")
    context = {
        "nav": "usage",
        "days": days,
        "ranges": USAGE_RANGES,
        "daily": [
            {"day": day.day, "input": day.input_tokens, "output": day.output_tokens, "cost": format_usd(day.cost_usd)}
            for day in reversed(daily)
            if day.tokens or day.cost_usd
        ],
        "total_cost": format_usd(sum((day.cost_usd for day in daily), Decimal("0"))),
        "total_tokens": f"{sum(day.tokens for day in daily):,}",
        "cost_chart": cost_chart,
        "token_chart": token_chart,
        "by_model": by_model,
        "budgets": budgets,
    }
    return render(request, "botapp/usage.html", context)


# --- Linking Telegram ---------------------------------------------------------------------------


@with_csp
@login_required
def link_telegram(request: HttpRequest) -> HttpResponse:
    """Enter the one-time code that /link in Telegram gives, to see Telegram conversations here too."""
    form = LinkCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            identity = link_code_redeem(code=form.cleaned_data["code"], user=request.user)
        except LinkError as exc:
            form.add_error("code", str(exc))
        else:
            messages.success(
                request,
                _("Your Telegram account %(account)s is linked: its conversations are now in your list.")
                % {"account": identity},
            )
            return redirect("web:home")
    identity = TelegramIdentity.objects.filter(user=request.user).first()
    return render(request, "botapp/link.html", {"nav": "link", "form": form, "identity": identity})


# --- Odds and ends ------------------------------------------------------------------------------


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on every site; it is the page's own icon."""
    return HttpResponseRedirect(static("jarvis/favicon.svg"))
