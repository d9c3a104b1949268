"""Writes for documents: a file in, queued for indexing; re-indexing; removal; knowledge base uploads."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F
from django.utils.translation import gettext as _
from django_q.tasks import async_task

from botapp.documents import extract
from botapp.documents.models import Document, DocumentFile, DocumentState, KnowledgeBase
from botapp.models import Channel, Conversation, Message

logger = logging.getLogger(__name__)

# Telegram's Bot API serves files up to 20 MB through getFile.
TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024
# Indexing a long file takes a while: longer than django-q2's default timeout for a job.
INGEST_TIMEOUT_SECONDS = 1800


class UploadRefused(Exception):
    """A file that cannot be taken; `str(error)` is the sentence for the person."""


@dataclass(frozen=True)
class Upload:
    """A file as it arrived: its name, declared type and bytes."""

    file_name: str
    data: bytes
    mime_type: str = ""


def megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f}"


def upload_refusal(*, file_name: str, size: int | None, mime_type: str = "", telegram: bool = False) -> str:
    """A sentence when a file cannot be taken, known before downloading it; "" when it may come in."""
    if telegram and size and size > TELEGRAM_DOWNLOAD_LIMIT:
        return _(
            "“%(name)s” is %(size)s MB; Telegram lets bots download files up to 20 MB. Send a smaller file, or "
            "upload it on the web page."
        ) % {"name": file_name, "size": megabytes(size)}
    if size and size > settings.MAX_DOCUMENT_BYTES:
        return _("“%(name)s” is %(size)s MB; Jarvis accepts documents up to %(limit)s MB. Send a smaller file.") % {
            "name": file_name,
            "size": megabytes(size),
            "limit": megabytes(settings.MAX_DOCUMENT_BYTES),
        }
    if size == 0:
        return _("“%(name)s” is empty. Send a file with something in it.") % {"name": file_name}
    if extract.kind_of(file_name=file_name, mime_type=mime_type) is None and mime_type.startswith(
        ("image/", "audio/", "video/", "application/zip", "application/x-")
    ):
        return extract.unsupported_sentence(file_name)
    return ""


def ingestion_enqueue(document_id: int) -> None:
    """Queue indexing once the document's rows are committed (the worker must find them)."""
    options = {"task_name": f"index document {document_id}", "timeout": INGEST_TIMEOUT_SECONDS}
    transaction.on_commit(
        partial(async_task, "botapp.tasks.document_ingest", document_id, q_options=options), robust=True
    )


def _document_create(upload: Upload, **fields: object) -> Document:
    document = Document.objects.create(
        file_name=upload.file_name[:255] or "document",
        mime_type=upload.mime_type[:100],
        size_bytes=len(upload.data),
        **fields,
    )
    DocumentFile.objects.create(document=document, data=upload.data)
    ingestion_enqueue(document.pk)
    return document


def conversation_documents_create(
    *, conversation: Conversation, message: Message, uploads: Iterable[Upload], uploaded_by: AbstractBaseUser
) -> list[Document]:
    """The documents a message carried, queued for indexing; called inside the funnel's transaction."""
    for upload in uploads:
        refusal = upload_refusal(file_name=upload.file_name, size=len(upload.data), mime_type=upload.mime_type)
        if refusal:
            raise UploadRefused(refusal)
    return [
        _document_create(
            upload,
            conversation=conversation,
            message=message,
            uploaded_by=uploaded_by,
            channel=conversation.channel,
            bot=conversation.bot,
        )
        for upload in uploads
    ]


def knowledge_base_files_add(
    *, knowledge_base: KnowledgeBase, uploads: Iterable[Upload], uploaded_by: AbstractBaseUser | None
) -> tuple[list[Document], list[str]]:
    """Add files to a knowledge base and queue their indexing; the sentences for files refused."""
    added, refused = [], []
    with transaction.atomic():
        for upload in uploads:
            sentence = upload_refusal(file_name=upload.file_name, size=len(upload.data), mime_type=upload.mime_type)
            if sentence:
                refused.append(sentence)
                continue
            added.append(
                _document_create(upload, knowledge_base=knowledge_base, uploaded_by=uploaded_by, channel=Channel.SYSTEM)
            )
    return added, refused


def documents_reindex(*, documents: Iterable[Document]) -> int:
    """Index the files again from their stored bytes (after a failure, a budget reset or a new model)."""
    ids = [document.pk for document in documents]
    with transaction.atomic():
        # The version moves on: a run still indexing the old way stops at its next step.
        Document.objects.filter(pk__in=ids).update(
            state=DocumentState.QUEUED, progress_done=0, progress_total=0, reason="", version=F("version") + 1
        )
        for document_id in ids:
            ingestion_enqueue(document_id)
    return len(ids)


def documents_expire(*, before: datetime) -> int:
    """Delete the files sent in conversations before `before`, with their chunks and index (retention)."""
    deleted = 0
    old = list(Document.objects.filter(conversation__isnull=False, created_at__lt=before).values_list("pk", flat=True))
    for start in range(0, len(old), 100):
        with transaction.atomic():
            # One by one through the ORM, so that each takes its full-text rows with it (a pre_delete signal).
            for document in Document.objects.filter(pk__in=old[start : start + 100]).only("pk"):
                document.delete()
                deleted += 1
    return deleted
