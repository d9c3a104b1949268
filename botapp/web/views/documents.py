"""Files a person attaches to a web conversation: upload, and the progress the page polls while they are read."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from botapp.conversations import ReplyRefused, documents_accept
from botapp.documents.models import Document
from botapp.documents.progress import progress_json
from botapp.documents.services import Upload, upload_refusal
from botapp.models import Channel
from botapp.web.views import own_conversation


@login_required
@require_POST
def document_upload(request: HttpRequest, pk: int) -> HttpResponse:
    """Attach a file to the conversation: stored, queued for indexing; its progress is at `status_url`."""
    conversation = own_conversation(request, pk)
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
    conversation = own_conversation(request, pk)
    document = get_object_or_404(Document.objects.defer("summary"), pk=document_id, conversation=conversation)
    return JsonResponse(progress_json(document))
