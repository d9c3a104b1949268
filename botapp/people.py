"""People: Django users, their Telegram identities and their profiles."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from botapp import hot_path
from botapp.models import Bot, BotUser, Profile, TelegramIdentity
from botapp.storable import storable_text


def language_for(code: str | None) -> str:
    """The interface language for a language code: Simplified Chinese for any Chinese, else English."""
    return "zh-hans" if (code or "").lower().startswith("zh") else "en"


def person_language(*, user_id: int) -> str:
    """The language Jarvis speaks to a person in: their Telegram app's, else their profile's, else English."""
    code = TelegramIdentity.objects.filter(user_id=user_id).values_list("language_code", flat=True).first()
    if code is None:
        code = Profile.objects.filter(user_id=user_id).values_list("language_code", flat=True).first()
    return language_for(code)


def _names(
    username: str | None, first_name: str | None, last_name: str | None, language_code: str | None
) -> dict[str, str]:
    return {
        "username": storable_text(username or "")[:64],
        "first_name": storable_text(first_name or "")[:128],
        "last_name": storable_text(last_name or "")[:128],
        "language_code": storable_text(language_code or "")[:16],
    }


def telegram_identity_sync(
    *,
    telegram_id: int,
    username: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    language_code: str | None = None,
    identities: QuerySet[TelegramIdentity] | None = None,
    member_of: Bot | None = None,
    found: TelegramIdentity | object | None = ...,
) -> TelegramIdentity:
    """The Telegram identity (with its `user`), created with a user and a profile on first contact.

    Names are refreshed when they change. `identities` may add to the read (annotations, related rows).
    A person created here for `member_of` joins that bot in the same transaction (`member_id` is set).
    `found`: the identity (or None) the caller has just read, so it is not read again.
    """
    queryset = identities if identities is not None else TelegramIdentity.objects.all()
    if found is ...:
        found = queryset.select_related("user").filter(telegram_id=telegram_id).first()
    identity = found
    fields = _names(username, first_name, last_name, language_code)
    if identity is not None:
        changed = [name for name, value in fields.items() if getattr(identity, name) != value]
        if changed:
            for name in changed:
                setattr(identity, name, fields[name])
            identity.save(update_fields=[*changed, "updated_at"])
        return identity
    User = get_user_model()  # noqa: N806
    try:
        with transaction.atomic():
            # Unusable, as set_unusable_password() makes it, from one call to the system's random source
            # instead of forty (a third of a millisecond on every new person).
            password = UNUSABLE_PASSWORD_PREFIX + secrets.token_urlsafe(30)
            user = User(username=f"tg{telegram_id}", first_name=fields["first_name"][:150], password=password)
            hot_path.insert(user)
            identity = TelegramIdentity(user=user, telegram_id=telegram_id, **fields)
            hot_path.insert(identity)
            hot_path.insert(Profile(user=user, language_code=fields["language_code"]))
            if member_of is not None:
                member = BotUser(bot=member_of, identity=identity)
                hot_path.insert(member)
                identity.member_id, identity.member_blocked_at = member.pk, None
    except IntegrityError:
        # Two updates from a new person at once: the other one created the identity first.
        return queryset.select_related("user").get(telegram_id=telegram_id)
    return identity
