"""Views of the browser chat page, by area, and what they share: whose conversation it is, and JSON errors.

`conversations` (the page, its list and settings), `stream` (sending, answers streamed as NDJSON), `media`
(pictures, read-out answers, the files), `documents` (files to read) and `usage`; the routes are in
botapp.web.urls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _

from botapp.conversations import ReplyRefused
from botapp.models import Channel, Conversation

logger = logging.getLogger(__name__)


def wants_json(request: HttpRequest) -> bool:
    """Whether the page's script asked (it wants JSON), rather than a form without script."""
    return "application/json" in request.headers.get("Accept", "")


def json_error(message: str, status: int = 400, **extra: Any) -> JsonResponse:
    """A sentence the page shows above the message box."""
    return JsonResponse({"type": "error", "message": message, **extra}, status=status)


def own_conversation(request: HttpRequest, pk: int) -> Conversation:
    """The signed-in person's conversation; anyone else's is a 404, as if it did not exist."""
    return get_object_or_404(Conversation.objects.select_related("persona", "bot"), pk=pk, user=request.user)


class ReadOnly(ReplyRefused):
    """A Telegram conversation shown on the web page: answers would not reach Telegram."""


async def own_web_conversation(user: AbstractBaseUser, pk: int) -> Conversation:
    """The person's web conversation to write to; a Telegram one is refused (answers would not reach Telegram)."""
    try:
        conversation = await Conversation.objects.select_related("persona", "bot", "user").aget(pk=pk, user=user)
    except Conversation.DoesNotExist as exc:
        raise Http404(_("No such conversation.")) from exc
    if conversation.channel != Channel.WEB:
        raise ReadOnly(_("This conversation happens in Telegram: continue it there."))
    return conversation


def conversation_writes(view: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a refusal before anything was stored into a JSON error the page shows above the message box."""

    @wraps(view)
    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except ReplyRefused as refusal:
            logger.info("Request to %s refused before storing: %s", request.path, refusal)
            status = 409 if isinstance(refusal, ReadOnly) else 400
            return JsonResponse({"type": "error", "message": str(refusal)}, status=status)

    return wrapped
