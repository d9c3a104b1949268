"""Views of the browser chat page; sending streams the answer as newline-delimited JSON events.

The stream (`application/x-ndjson`), one JSON object per line:
  {"type": "start", "message_id": <answer id>, "question_id": <question id>,
   "conversation": {"id": .., "url": .., "title": ..}}   the turn is stored (conversation: first message only)
  {"type": "delta", "text": "..."}                        as the answer is written
  {"type": "render", "html": "<sanitized>"}               the answer so far as HTML, a few times a second
  {"type": "done", "message_id": ..., "html": "<sanitized>", "input_tokens": .., "output_tokens": ..,
   "cost_usd": "0.000012", "meta": "..."}                 the stored answer, rendered on the server
  {"type": "error", "message": "<sentence>", "html": "<partial answer, sanitized>"}
A client that disconnects (the Stop button) cancels the stream; the funnel then stores the partial answer
as incomplete and bills it. Markdown is rendered here, never in the browser: the same sanitizer covers the
answer while it streams and once it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from decimal import Decimal
from functools import wraps
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from botapp import selectors
from botapp.choices import ChoiceError, conversation_model_set, conversation_persona_set, model_price_label
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
from botapp.linking import LinkError, link_code_redeem
from botapp.models import Channel, Conversation, MessageStatus, Role, TelegramIdentity, UsageKind
from botapp.staff import conversations_export_json, conversations_export_markdown
from botapp.usage import budget_periods, format_usd
from botapp.web.charts import bar_chart
from botapp.web.forms import ConversationCreateForm, ConversationPersonaForm, ConversationRenameForm, LinkCodeForm
from botapp.web.markdown import markdown_to_html
from botapp.web.services import conversation_delete, conversation_rename
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
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One conversation: its history rendered on the server, its settings, and the message box."""
    conversation = _own_conversation(request, pk)
    history = list(selectors.conversation_messages(conversation=conversation))
    first_question = next((m.content for m in history if m.role == Role.USER and m.content), "")
    last_answer = next((m.pk for m in reversed(history) if m.role == Role.ASSISTANT), None)
    for message in history:
        if message.role == Role.ASSISTANT:
            message.html = markdown_to_html(message.content)
            message.meta = answer_meta(
                input_tokens=message.input_tokens, output_tokens=message.output_tokens, cost_usd=message.cost_usd
            )
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
    """Start an empty web conversation with the chosen persona (the page without script)."""
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
                    if isinstance(item, StreamEnd):
                        yield _end_event(item)
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


def _end_event(item: StreamEnd) -> bytes:
    if item.reply is not None:
        return _done_event(item.reply)
    partial = getattr(item.error, "partial", "")
    return _event("error", message=str(item.error), html=str(markdown_to_html(partial)) if partial else "")


def _done_event(reply: Reply) -> bytes:
    cost = reply.usage.cost_usd if reply.usage is not None else None
    tokens = {"input_tokens": reply.message.input_tokens, "output_tokens": reply.message.output_tokens}
    return _event(
        "done",
        message_id=reply.message.pk,
        html=str(markdown_to_html(reply.text)),
        cost_usd=str(cost) if cost is not None else None,
        meta=answer_meta(cost_usd=cost, **tokens),
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


@login_required
@require_POST
@_conversation_writes
async def message_send(request: HttpRequest, pk: int) -> HttpResponse:
    """Store the message, then stream the answer; refusals before the model is called are a JSON error."""
    user = await request.auser()
    conversation = await _own_web_conversation(user, pk)
    turn = await sync_to_async(turn_accept)(conversation=conversation, text=request.POST.get("text", ""), sender=user)
    return _stream(turn)


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
