"""Views of the browser chat page; sending streams the answer as newline-delimited JSON events.

The stream (`application/x-ndjson`), one JSON object per line:
  {"type": "start", "message_id": <answer id>, "question_id": <question id>}
  {"type": "delta", "text": "..."}                        as the answer is written
  {"type": "tool", "id": <tool call id>, "state": "running" | "done", "status": "running" | "ok" | "error" | ...,
   "label": "Searching the web: …", "duration_ms": .., "error": "...", "sources": [{"url", "title"}]}
                                                          when a tool call starts and ends
  {"type": "done", "message_id": ..., "html": "<sanitized>", "input_tokens": .., "output_tokens": ..,
   "cost_usd": "0.000012", "meta": "...", "sources": [{"url", "title"}]}
                                                          the stored answer, rendered on the server
  {"type": "error", "message": "<sentence>", "html": "<partial answer, sanitized>"}
A client that disconnects (the Stop button) cancels the stream; the funnel then stores the partial answer
as incomplete and bills it.

Pictures (`image_send`, "/image PROMPT" or the Draw button) and read-out answers (`message_speech`, the play
button) answer with one JSON object; the files themselves are served by `media_file`, to their owner and staff.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from decimal import Decimal
from functools import wraps
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from botapp import media, selectors
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
from botapp.tools.drawing import answer_pictures, drew_pictures
from botapp.tools.records import sources_of, tool_call_steps
from botapp.tools.runner import ToolEvent
from botapp.usage import budget_periods
from botapp.web.charts import bar_chart
from botapp.web.forms import ConversationCreateForm, ConversationPersonaForm, ConversationRenameForm, LinkCodeForm
from botapp.web.markdown import markdown_to_html
from botapp.web.services import (
    conversation_delete,
    conversation_persona_change,
    conversation_rename,
    profile_time_zone_set,
)

logger = logging.getLogger(__name__)

# Defence in depth behind the sanitizer: no inline script or style runs even if markup slipped through.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
USAGE_RANGES = (7, 30, 90)

View = Callable[..., HttpResponse]


def with_csp(view: View) -> View:
    """Send the page with the Content-Security-Policy above."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    return wrapped


# --- Formatting ---------------------------------------------------------------------------------


def format_usd(value: Decimal | float | None) -> str:
    """Dollars with as many decimals as small amounts need: $1.25, $0.0125, $0.000125."""
    value = Decimal(str(value or 0))
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    if value >= Decimal("0.01"):
        return f"${value:.4f}"
    return f"${value:.6f}"


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


def _chat_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {
        "nav": "chat",
        "conversations": selectors.conversation_list(user=request.user),
        "create_form": ConversationCreateForm(),
        **extra,
    }


@with_csp
@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The conversation list and a form to start a new one."""
    return render(request, "botapp/chat.html", _chat_context(request))


@with_csp
@login_required
@require_GET
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One conversation: its history rendered on the server, its settings, and the message box."""
    conversation = _own_conversation(request, pk)
    history = list(selectors.conversation_messages(conversation=conversation).prefetch_related("media__usage"))
    first_question = next((m.content for m in history if m.role == Role.USER and m.content), "")
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
    context = _chat_context(
        request,
        conversation=conversation,
        title=conversation.title or first_question[:80] or _("New conversation"),
        untitled=not (conversation.title or first_question),
        history=history,
        persona_form=ConversationPersonaForm(initial={"persona": conversation.persona_id}),
        can_send=conversation.channel == Channel.WEB,
        max_chars=settings.MAX_MESSAGE_CHARS,
        max_document_bytes=settings.MAX_DOCUMENT_BYTES,
        statuses=MessageStatus,
    )
    return render(request, "botapp/chat.html", context)


@login_required
@require_POST
def conversation_create(request: HttpRequest) -> HttpResponse:
    """Start a web conversation with the chosen persona."""
    form = ConversationCreateForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose one of the offered personas to start a conversation."))
        return redirect("web:home")
    conversation = conversation_start(user=request.user, channel=Channel.WEB, persona=form.cleaned_data["persona"])
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


@login_required
@require_POST
def conversation_persona_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Answer as another persona from the next message on."""
    conversation = _own_conversation(request, pk)
    form = ConversationPersonaForm(request.POST)
    if form.is_valid():
        conversation_persona_change(conversation=conversation, persona=form.cleaned_data["persona"])
        messages.success(
            request, _("Jarvis now answers as %(persona)s in this conversation.") % {"persona": conversation.persona}
        )
    else:
        messages.error(request, _("Choose one of the offered personas."))
    return redirect("web:conversation", pk=conversation.pk)


@login_required
@require_POST
def conversation_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete the conversation; what it cost stays in the ledger."""
    conversation = _own_conversation(request, pk)
    conversation_delete(conversation=conversation)
    messages.success(request, _("The conversation was deleted."))
    return redirect("web:home")


# --- Sending and streaming ----------------------------------------------------------------------


def _event(kind: str, **data: Any) -> bytes:
    return (json.dumps({"type": kind, **data}, ensure_ascii=False) + "\n").encode()


async def _answer_events(turn: Turn) -> AsyncIterator[bytes]:
    """The answer as NDJSON events; if the client goes away, Django cancels this and the answer stops."""
    yield _event("start", message_id=turn.reply.pk, question_id=turn.user_message.pk)
    # aclosing: however this generator ends (cancelled, closed), the answer's own cleanup runs right away.
    async with aclosing(turn_answer_stream(turn)) as stream:
        async for item in stream:
            if isinstance(item, ToolEvent):
                yield _tool_event(item)
            elif not isinstance(item, StreamEnd):
                yield _event("delta", text=item)
            elif item.reply is not None:
                pictures = []
                if drew_pictures(item.reply.tool_calls):
                    pictures = await sync_to_async(answer_pictures)(item.reply.message.pk)
                yield _done_event(item.reply, pictures)
            else:
                partial = getattr(item.error, "partial", "")
                yield _event("error", message=str(item.error), html=str(markdown_to_html(partial)) if partial else "")


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


async def _own_conversation_async(user: AbstractBaseUser, pk: int) -> Conversation:
    try:
        return await Conversation.objects.select_related("persona", "bot", "user").aget(pk=pk, user=user)
    except Conversation.DoesNotExist as exc:
        raise Http404(_("No such conversation.")) from exc


@login_required
@require_POST
async def message_send(request: HttpRequest, pk: int) -> HttpResponse:
    """Store the message, then stream the answer; refusals before the model is called are a JSON error."""
    user = await request.auser()
    conversation = await _own_conversation_async(user, pk)
    if conversation.channel != Channel.WEB:
        return JsonResponse(
            {"type": "error", "message": _("This conversation happens in Telegram: continue it there.")}, status=409
        )
    text = request.POST.get("text", "")
    time_zone = request.POST.get("tz", "")
    if time_zone and time_zone != await request.session.aget("time_zone"):
        # The browser's time zone: what "now" means for this person (the date and time tool). Checked once a session.
        await sync_to_async(profile_time_zone_set)(user=user, time_zone=time_zone)
        await request.session.aset("time_zone", time_zone)
    try:
        turn = await sync_to_async(turn_accept)(conversation=conversation, text=text, sender=user)
    except ReplyRefused as refusal:
        logger.info("Message to conversation %s refused before storing: %s", conversation.pk, refusal)
        return JsonResponse({"type": "error", "message": str(refusal)}, status=400)
    response = StreamingHttpResponse(_answer_events(turn), content_type="application/x-ndjson; charset=utf-8")
    # Proxies must pass each line on at once rather than collect the whole answer.
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response


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
async def image_send(request: HttpRequest, pk: int) -> HttpResponse:
    """Draw a picture ("/image PROMPT" or the Draw button), or change one of the conversation's (`edit_of`)."""
    user = await request.auser()
    conversation = await _own_conversation_async(user, pk)
    if conversation.channel != Channel.WEB:
        return _json_error(_("This conversation happens in Telegram: continue it there."), 409)
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
    try:
        turn = await sync_to_async(turn_accept)(conversation=conversation, text=text, sender=user)
    except ReplyRefused as refusal:
        return _json_error(str(refusal))
    ids = {"question_id": turn.user_message.pk, "message_id": turn.reply.pk}
    try:
        drawn = await _finish_even_if_gone(turn_draw(turn, prompt=prompt, source=source))
    except ReplyError as error:
        return JsonResponse({"type": "error", "message": str(error), **ids})
    meta = picture_meta(drawn.usage.cost_usd)
    return JsonResponse({"type": "done", "picture": picture_payload(drawn.media), "meta": meta, **ids})


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
