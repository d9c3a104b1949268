"""Pictures (/image, the Draw button) and read-out answers, each answered with one JSON object; the files served.

The files are served by `media_file`, to the owner of their conversation, whoever asked for them, and staff.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Coroutine
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.contrib.auth.decorators import login_required
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from botapp import media
from botapp.conversations import ReplyError, ReplyRefused, reply_speak, turn_accept, turn_draw
from botapp.models import MediaFile, MediaKind, Message, MessageStatus, Role
from botapp.web.display import picture_meta, picture_payload
from botapp.web.security import MEDIA_CONTENT_SECURITY_POLICY
from botapp.web.views import conversation_writes, json_error, own_web_conversation

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


@login_required
@require_POST
@conversation_writes
async def image_send(request: HttpRequest, pk: int) -> HttpResponse:
    """Draw a picture ("/image PROMPT" or the Draw button), or change one of the conversation's (`edit_of`)."""
    user = await request.auser()
    conversation = await own_web_conversation(user, pk)
    text = request.POST.get("text", "").strip()
    prompt = media.image_command(text)
    if prompt is None:
        prompt, text = text, f"/image {text}"
    if not prompt:
        return json_error(_("Say what to draw, for example: a lighthouse at dawn, in watercolour."))
    source = None
    edit_of = request.POST.get("edit_of", "")
    if edit_of:
        picture = await MediaFile.objects.filter(
            pk=int(edit_of) if edit_of.isdigit() else 0, conversation=conversation, kind=MediaKind.IMAGE
        ).afirst()
        if picture is None:
            return json_error(_("That picture is no longer in this conversation. Reload the page."))
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
async def message_speech(request: HttpRequest, pk: int) -> HttpResponse:
    """Read one of the person's answers out (the first time, charged as speech) and say where the audio is."""
    user = await request.auser()
    message = (
        await Message.objects.select_related("conversation__persona", "conversation__bot")
        .filter(pk=pk, conversation__user=user, role=Role.ASSISTANT)
        .afirst()
    )
    if message is None:
        return json_error(_("No such answer."), 404)
    if message.status not in (MessageStatus.COMPLETE, MessageStatus.INCOMPLETE) or not message.content.strip():
        return json_error(_("This answer has no words to read out."))
    try:
        spoken = await _finish_even_if_gone(reply_speak(message=message, requested_by=user))
    except ReplyError as error:
        return json_error(str(error), 502 if not isinstance(error, ReplyRefused) else 400)
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
        data = media.media_bytes(item)
    except FileNotFoundError as exc:
        raise Http404(_("No such file.")) from exc
    response = _ranged(request, data, content_type=item.content_type)
    suffix = item.file.name.rsplit(".", 1)[-1] if "." in item.file.name else "bin"
    response["Content-Disposition"] = f'inline; filename="jarvis-{item.kind}-{item.pk}.{suffix}"'
    # Private: a shared cache must never hand one person's picture to another.
    response["Cache-Control"] = "private, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = MEDIA_CONTENT_SECURITY_POLICY
    return response
