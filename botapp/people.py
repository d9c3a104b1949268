"""People: Django users, their Telegram identities and their profiles."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from botapp.models import Profile, TelegramIdentity


def telegram_user_sync(
    *,
    telegram_id: int,
    username: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    language_code: str | None = None,
) -> AbstractBaseUser:
    """The `User` behind a Telegram account, created on first contact; names are refreshed when they change."""
    identity = TelegramIdentity.objects.select_related("user").filter(telegram_id=telegram_id).first()
    fields = {
        "username": username or "",
        "first_name": (first_name or "")[:128],
        "last_name": (last_name or "")[:128],
        "language_code": language_code or "",
    }
    if identity is not None:
        changed = [name for name, value in fields.items() if getattr(identity, name) != value]
        if changed:
            for name in changed:
                setattr(identity, name, fields[name])
            identity.save(update_fields=[*changed, "updated_at"])
        return identity.user
    User = get_user_model()  # noqa: N806
    try:
        with transaction.atomic():
            user = User(username=f"tg{telegram_id}", first_name=fields["first_name"][:150])
            user.set_unusable_password()
            user.save()
            TelegramIdentity.objects.create(user=user, telegram_id=telegram_id, **fields)
            Profile.objects.create(user=user, language_code=fields["language_code"])
    except IntegrityError:
        # Two updates from a new person at once: the other one created the identity first.
        return TelegramIdentity.objects.select_related("user").get(telegram_id=telegram_id).user
    return user
