"""Writes behind the browser page's controls: rename, change persona, delete, and the person's time zone."""

from __future__ import annotations

import zoneinfo

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from botapp.models import Conversation, Persona
from botapp.usage import profile_for


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    """Give the conversation a title (cut to the field's length); an empty one falls back to the first question."""
    conversation.title = title.strip()[: Conversation._meta.get_field("title").max_length]
    conversation.save(update_fields=["title"])
    return conversation


def conversation_persona_change(*, conversation: Conversation, persona: Persona) -> Conversation:
    """Later answers use `persona`; what was already said stays as it was."""
    conversation.persona = persona
    conversation.save(update_fields=["persona"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete the conversation and its messages; the usage ledger keeps its rows (and the money spent)."""
    with transaction.atomic():
        conversation.delete()


def profile_time_zone_set(*, user: AbstractBaseUser, time_zone: str) -> bool:
    """Remember the person's time zone as the browser reports it; an unknown name is ignored. True if it changed."""
    time_zone = time_zone.strip()[:64]
    try:
        zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    profile = profile_for(user)
    if profile.time_zone == time_zone:
        return False
    profile.time_zone = time_zone
    profile.save(update_fields=["time_zone"])
    return True
