"""Writes behind the browser page's conversation controls: rename and delete."""

from __future__ import annotations

from django.db import transaction

from botapp.models import Conversation


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    """Give the conversation a title (cut to the field's length); an empty one falls back to the first question."""
    conversation.title = title.strip()[: Conversation._meta.get_field("title").max_length]
    conversation.save(update_fields=["title"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete the conversation and its messages; the usage ledger keeps its rows (and the money spent)."""
    with transaction.atomic():
        conversation.delete()
