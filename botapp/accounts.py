"""Web accounts without an admin in the loop: invitations by link, self sign-up (when allowed), account details."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from botapp.crypto import one_time_token, token_digest
from botapp.models import Invitation, Profile
from botapp.site import site_url

# How long an invitation works unless the admin sets another date.
INVITATION_LIFETIME = timedelta(days=7)


class AccountError(Exception):
    """The account cannot be created this way; `str(error)` says why and what to do."""


def invitation_issue(*, invitation: Invitation, created_by: AbstractBaseUser | None) -> str:
    """Store a new invitation with a fresh secret and return its link (shown once: only a digest is kept)."""
    token = one_time_token()
    invitation.token_digest = token_digest(token)
    invitation.created_by = created_by
    invitation.save()
    return site_url(reverse("web:invitation", args=[token]))


def invitation_for(*, token: str, lock: bool = False) -> Invitation:
    """The open invitation behind a link, or AccountError saying why it cannot be used."""
    invitations = Invitation.objects.select_for_update() if lock else Invitation.objects.all()
    invitation = invitations.filter(token_digest=token_digest(token)).first()
    if invitation is None:
        raise AccountError(_("This invitation link is not valid. Ask the person who sent it for a new one."))
    if invitation.used_at is not None:
        raise AccountError(_("This invitation was already used. Sign in with the account it created."))
    if invitation.expires_at < timezone.now():
        raise AccountError(_("This invitation has expired. Ask the person who sent it for a new one."))
    return invitation


def account_create(*, username: str, email: str, password: str) -> AbstractBaseUser:
    """A person's web account with its profile (the password already validated by the form)."""
    user = get_user_model().objects.create_user(username=username, email=email, password=password)
    Profile.objects.create(user=user)
    return user


def invitation_accept(*, token: str, username: str, email: str, password: str) -> AbstractBaseUser:
    """Create the invited person's account and use the invitation up, both or neither."""
    with transaction.atomic():
        invitation = invitation_for(token=token, lock=True)
        user = account_create(username=username, email=email, password=password)
        invitation.used_at = timezone.now()
        invitation.used_by = user
        invitation.save(update_fields=["used_at", "used_by"])
    return user


def invitation_state(invitation: Invitation, *, now: datetime | None = None) -> str:
    """ "used", "expired" or "open"."""
    if invitation.used_at is not None:
        return "used"
    if invitation.expires_at < (now or timezone.now()):
        return "expired"
    return "open"
