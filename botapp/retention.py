"""Retention: messages older than RETENTION_DAYS deleted or anonymised, with what was built from them.

The usage ledger stays whatever happens here: it holds who spent what, never what was said.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from botapp.documents.services import documents_expire
from botapp.models import Conversation, MediaFile, Message, ProcessedUpdate
from botapp.search import messages_forget

logger = logging.getLogger(__name__)

RETENTION_PLACEHOLDER = "[removed by the retention policy]"
RETENTION_BATCH = 500


def _in_batches(queryset_ids: list[int]) -> list[list[int]]:
    return [queryset_ids[i : i + RETENTION_BATCH] for i in range(0, len(queryset_ids), RETENTION_BATCH)]


def retention_apply() -> str:
    """Delete or anonymise messages older than RETENTION_DAYS (off when 0); the usage ledger stays.

    `delete` removes old messages and conversations with nothing newer; `anonymise` keeps the rows (who,
    when, tokens) but blanks what was said. Either way titles and summaries built from removed text go,
    generated pictures and recordings of old messages are deleted with their files, and stored Telegram
    updates (which hold message text) older than the cut-off are deleted.
    """
    days = settings.RETENTION_DAYS
    if not days:
        return "Retention is off (RETENTION_DAYS is 0): nothing removed."
    mode = settings.RETENTION_MODE
    if mode not in ("delete", "anonymise"):
        raise ValueError(f"RETENTION_MODE is {mode!r}; set it to delete or anonymise.")
    cutoff = timezone.now() - timedelta(days=days)
    old = Message.objects.filter(created_at__lt=cutoff)
    # Summaries that were written from an old message are rebuilt from what remains.
    stale_summaries = list(
        Conversation.objects.filter(
            summary_until_id__isnull=False,
            messages__created_at__lt=cutoff,
            messages__id__lte=F("summary_until_id"),
        )
        .values_list("id", flat=True)
        .distinct()
    )
    with transaction.atomic():
        Conversation.objects.filter(id__in=stale_summaries).update(summary="", summary_until_id=None)
    # Pictures and recordings of old messages go in either mode: each row takes its file with it (botapp.media).
    old_media = MediaFile.objects.filter(Q(created_at__lt=cutoff) | Q(message__created_at__lt=cutoff))
    files = 0
    for batch in _in_batches(list(old_media.values_list("id", flat=True))):
        with transaction.atomic():
            files += MediaFile.objects.filter(id__in=batch).delete()[1].get("botapp.MediaFile", 0)
    # Files people sent in chats go the same way, with their chunks and index (knowledge bases stay).
    documents = documents_expire(before=cutoff)
    updates = 0
    for batch in _in_batches(list(ProcessedUpdate.objects.filter(created_at__lt=cutoff).values_list("id", flat=True))):
        with transaction.atomic():
            updates += ProcessedUpdate.objects.filter(id__in=batch).delete()[0]
    conversations = messages = 0
    if mode == "delete":
        old_conversations = list(Conversation.objects.filter(updated_at__lt=cutoff).values_list("id", flat=True))
        for batch in _in_batches(old_conversations):
            with transaction.atomic():
                deleted = Conversation.objects.filter(id__in=batch).delete()[1]
            conversations += deleted.get("botapp.Conversation", 0)
            messages += deleted.get("botapp.Message", 0)
        for batch in _in_batches(list(old.values_list("id", flat=True))):
            with transaction.atomic():
                messages_forget(within=Message.objects.filter(id__in=batch))
                messages += Message.objects.filter(id__in=batch).delete()[0]
    else:
        pending = old.exclude(content=RETENTION_PLACEHOLDER)
        for batch in _in_batches(list(pending.values_list("id", flat=True))):
            with transaction.atomic():
                messages_forget(within=Message.objects.filter(id__in=batch))
                messages += Message.objects.filter(id__in=batch).update(
                    content=RETENTION_PLACEHOLDER, attachments=[], error="", sender=None, token_count=0
                )
        with transaction.atomic():
            conversations = (
                Conversation.objects.filter(updated_at__lt=cutoff)
                .exclude(title="", summary="")
                .update(title="", summary="", summary_until_id=None)
            )
    verb = "deleted" if mode == "delete" else "anonymised"
    logger.info(
        "Retention (%s days, %s): %d message(s), %d conversation(s), %d stored update(s), %d generated file(s)",
        days,
        mode,
        messages,
        conversations,
        updates,
        files,
    )
    return (
        f"Retention ({days} days): {messages} message(s) and {conversations} conversation(s) {verb}, "
        f"{updates} stored Telegram update(s) and {files} generated file(s) deleted; {documents} document(s) sent in "
        "chats deleted."
    )
