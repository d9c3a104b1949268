"""The chat page: a conversation and the list beside it, its title, persona and model, renaming, deleting, export."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from botapp import search, selectors
from botapp.choices import ChoiceError, conversation_model_set, conversation_persona_set, model_price_label
from botapp.conversations import conversation_start
from botapp.documents.context import sources_html
from botapp.documents.context import sources_of as document_sources_of
from botapp.documents.progress import documents_of, progress_json
from botapp.models import Channel, Conversation, MessageStatus, Role
from botapp.staff import conversations_export_json, conversations_export_markdown
from botapp.tools.records import sources_of, tool_call_steps
from botapp.web.display import answer_meta, documents_in, with_media
from botapp.web.forms import ConversationCreateForm, ConversationPersonaForm, ConversationRenameForm
from botapp.web.markdown import markdown_to_html
from botapp.web.security import with_csp
from botapp.web.services import conversation_delete, conversation_rename
from botapp.web.titles import display_title
from botapp.web.views import json_error, own_conversation, wants_json

# What the search box takes: enough for a sentence.
SEARCH_MAX_CHARS = 200


def _model_options(conversation: Conversation | None) -> list[dict[str, str]]:
    """The model menu: the persona's own model first, then each model offered with its price."""
    offered = selectors.models_offered()
    if not offered:
        return []
    persona = conversation.persona if conversation is not None else selectors.persona_default()
    persona_model = selectors.persona_model(persona)
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
    conversation = own_conversation(request, pk)
    history = list(selectors.conversation_messages(conversation=conversation).prefetch_related("media__usage"))
    first_question = next((m.content for m in history if m.role == Role.USER and m.content), "")
    last_answer = next((m.pk for m in reversed(history) if m.role == Role.ASSISTANT), None)
    documents_sent = document_sources_of([m.pk for m in history if m.role == Role.ASSISTANT])
    files = {d.pk: d for d in documents_of([a["document_id"] for m in history for a in documents_in(m)])}
    for message in history:
        message.files = [
            progress_json(files[a["document_id"]]) for a in documents_in(message) if a["document_id"] in files
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
            with_media(message)
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
    conversation = own_conversation(request, pk)
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
        if wants_json(request):
            return json_error(_("Choose one of the offered personas to start a conversation."))
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
                return json_error(str(exc))
    if wants_json(request):
        url = reverse("web:conversation", args=[conversation.pk])
        return JsonResponse({"conversation": {"id": conversation.pk, "url": url, "title": display_title("", "")}})
    return redirect("web:conversation", pk=conversation.pk)


@login_required
@require_POST
def conversation_rename_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename; an empty title falls back to the first question."""
    conversation = own_conversation(request, pk)
    form = ConversationRenameForm(request.POST)
    if form.is_valid():
        conversation_rename(conversation=conversation, title=form.cleaned_data["title"])
    else:
        messages.error(request, _("The title is too long: at most 200 characters."))
    return redirect("web:conversation", pk=conversation.pk)


def _choice_answer(request: HttpRequest, conversation: Conversation, sentence: str, *, ok: bool) -> HttpResponse:
    """A persona or model change answered as JSON to the page's script, or as a message after a redirect."""
    if wants_json(request):
        return JsonResponse({"message": sentence}, status=200 if ok else 400)
    (messages.success if ok else messages.error)(request, sentence)
    return redirect("web:conversation", pk=conversation.pk)


@login_required
@require_POST
def conversation_persona_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Answer as another persona from the next message on."""
    conversation = own_conversation(request, pk)
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
    conversation = own_conversation(request, pk)
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
    conversation = own_conversation(request, pk)
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
    conversation = own_conversation(request, pk)
    if fmt not in EXPORTS:
        raise Http404(_("No such export format."))
    export, content_type = EXPORTS[fmt]
    response = HttpResponse(export(ids=[conversation.pk]), content_type=content_type)
    name = slugify(conversation.title, allow_unicode=True) or f"conversation-{conversation.pk}"
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name, safe='')}.{fmt}"
    return response


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on every site; it is the page's own icon."""
    return HttpResponseRedirect(static("jarvis/favicon.svg"))
