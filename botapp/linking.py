"""Joining a Telegram identity to a web account with a one-time code from /link."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from botapp.models import Conversation, Message, Profile, TelegramIdentity, TelegramLinkCode, UsageRecord

CODE_LIFETIME = timedelta(minutes=10)
# No 0/O or 1/I/L: the code is read off a phone and typed into a browser.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


class LinkError(Exception):
    """The code cannot be used; `str(error)` says why."""


def link_code_create(*, identity: TelegramIdentity) -> TelegramLinkCode:
    """A fresh code for `identity`; earlier unused codes stop working."""
    with transaction.atomic():
        TelegramLinkCode.objects.filter(identity=identity, used_at__isnull=True).delete()
        code = "".join(secrets.choice(ALPHABET) for _ in range(8))
        return TelegramLinkCode.objects.create(identity=identity, code=code, expires_at=timezone.now() + CODE_LIFETIME)


def link_code_redeem(*, code: str, user: AbstractBaseUser) -> TelegramIdentity:
    """Link the code's Telegram identity to `user`: its conversations and spend move to the web account."""
    normalized = code.strip().upper().replace(" ", "").replace("-", "")
    with transaction.atomic():
        link = (
            TelegramLinkCode.objects.select_for_update()
            .select_related("identity__user")
            .filter(code=normalized, used_at__isnull=True)
            .first()
        )
        if link is None or link.expires_at < timezone.now():
            raise LinkError(_("This code is unknown or has expired. Send /link to the bot for a new one."))
        identity = link.identity
        old_user = identity.user
        if old_user.pk == user.pk:
            raise LinkError(_("This Telegram account is already linked to you."))
        if TelegramIdentity.objects.filter(user=user).exists():
            raise LinkError(_("Your account is already linked to another Telegram account."))
        Conversation.objects.filter(user=old_user).update(user=user)
        Message.objects.filter(sender=old_user).update(sender=user)
        # Moving who a ledger row belongs to is not a change to what it cost: the base manager allows it.
        UsageRecord._base_manager.filter(user=old_user).update(user=user)
        identity.user = user
        identity.save(update_fields=["user", "updated_at"])
        Profile.objects.get_or_create(user=user)
        link.used_at = timezone.now()
        link.save(update_fields=["used_at"])
        if not old_user.has_usable_password() and not old_user.is_staff:
            old_user.is_active = False
            old_user.save(update_fields=["is_active"])
    return identity
