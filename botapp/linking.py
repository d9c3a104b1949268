"""Telegram and the web page: a one-time code from /link joins accounts; a one-time link from /web signs in."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from botapp.crypto import one_time_token, token_digest
from botapp.models import (
    Conversation,
    Message,
    Profile,
    TelegramIdentity,
    TelegramLinkCode,
    UsageRecord,
    WebSignInLink,
)
from botapp.site import site_url

CODE_LIFETIME = timedelta(minutes=10)
SIGN_IN_LINK_LIFETIME = timedelta(minutes=10)
# No 0/O or 1/I/L: the code is read off a phone and typed into a browser.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


class LinkError(Exception):
    """The code or link cannot be used; `str(error)` says why and what to do."""


# --- /link: a code typed into the web page ------------------------------------------------------


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
        identity_move(identity=link.identity, user=user)
        link.used_at = timezone.now()
        link.save(update_fields=["used_at"])
    return link.identity


def identity_move(*, identity: TelegramIdentity, user: AbstractBaseUser) -> TelegramIdentity:
    """Join `identity` to the web account `user`: its conversations and spend move along (in a transaction)."""
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
    if not old_user.has_usable_password() and not old_user.is_staff:
        old_user.is_active = False
        old_user.save(update_fields=["is_active"])
    return identity


# --- /web: a link that signs the Telegram person in on the web page ------------------------------


def web_sign_in_link_create(*, identity: TelegramIdentity) -> str:
    """A one-time sign-in link (its URL) for `identity`, valid for ten minutes; earlier unused ones stop working.

    Only the token's digest is stored: the URL exists once, in the message sent to the person.
    """
    token = one_time_token()
    with transaction.atomic():
        WebSignInLink.objects.filter(identity=identity, used_at__isnull=True).delete()
        WebSignInLink.objects.create(
            identity=identity, token_digest=token_digest(token), expires_at=timezone.now() + SIGN_IN_LINK_LIFETIME
        )
    return site_url(reverse("web:telegram_sign_in", args=[token]))


def _usable_link(token: str, *, lock: bool = False) -> WebSignInLink:
    links = WebSignInLink.objects.select_related("identity__user__jarvis_profile")
    if lock:
        # Only the link row is locked (the profile is an outer join, which PostgreSQL cannot lock).
        links = links.select_for_update(of=("self",))
    link = links.filter(token_digest=token_digest(token), used_at__isnull=True).first()
    if link is None or link.expires_at < timezone.now():
        raise LinkError(_("This sign-in link has expired or was already used. Send /web to the bot for a new one."))
    user = link.identity.user
    profile = getattr(user, "jarvis_profile", None)
    if not user.is_active or (profile is not None and profile.is_blocked):
        raise LinkError(_("This account may not use Jarvis. If you think this is a mistake, ask an admin."))
    if user.is_staff:
        raise LinkError(_("This account has admin rights: sign in with its username and password instead."))
    return link


def web_sign_in_link_check(*, token: str) -> TelegramIdentity:
    """The identity a sign-in link is for, without using it up (link previews open links too)."""
    return _usable_link(token).identity


def web_sign_in_link_redeem(*, token: str, link_to: AbstractBaseUser | None = None) -> AbstractBaseUser:
    """Use the link up and return the account to sign in: the identity's own, or `link_to` joined to it."""
    with transaction.atomic():
        link = _usable_link(token, lock=True)
        identity = link.identity
        if link_to is not None:
            identity_move(identity=identity, user=link_to)
        link.used_at = timezone.now()
        link.save(update_fields=["used_at"])
        Profile.objects.get_or_create(user=identity.user)
    return identity.user
