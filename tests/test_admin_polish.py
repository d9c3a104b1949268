"""The admin as a new admin meets it: its own name, budgets in the people list, invitations, broadcasts and prices
people may choose in plain sight, transcripts rendered."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from django_q.conf import Conf

from botapp.crypto import token_digest
from botapp.models import BotUser, Broadcast, Invitation, Message, ModelPrice, Profile, Role, TelegramIdentity
from tests.admin_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    admin_telegram_server_fixture,
    fake_telegram_fixture,
    staff_client_fixture,
)
from tests.factories import BotFactory, ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_the_admin_is_called_jarvis(staff_client) -> None:
    """Every admin page says Jarvis, not "Django administration", and links invitations and broadcasts."""
    page = staff_client.get(reverse("admin:index")).content.decode()
    assert "Django administration" not in page and "Jarvis administration" in page
    assert reverse("admin:botapp_invitation_add") in page and reverse("admin:botapp_broadcast_add") in page


def test_people_list_shows_each_budget_and_the_add_form_no_empty_profile(staff_client) -> None:
    """The people list has a budget column; the add form asks for name and password only (no "Profile: #1"), and
    the person gets their access and budget row on creation."""
    UserFactory(username="thrifty")
    Profile.objects.filter(user__username="thrifty").delete()
    Profile.objects.create(user=UserFactory(username="capped"), daily_budget_usd=Decimal("0.001"),
                           monthly_budget_usd=Decimal("20"))  # fmt: skip
    Profile.objects.create(user=UserFactory(username="free"), unlimited_budget=True)
    listing = staff_client.get(reverse("admin:auth_user_changelist")).content.decode()
    assert "<th" in listing and "budget" in listing.lower()
    assert "$0.001 a day · $20.00 a month" in listing and "unlimited" in listing
    add = staff_client.get(reverse("admin:auth_user_add")).content.decode()
    assert "#1" not in add and "Access and budget" not in add
    staff_client.post(
        reverse("admin:auth_user_add"),
        {"username": "newcomer", "password1": "x-long-passphrase-9", "password2": "x-long-passphrase-9",
         "usable_password": "true"},
    )  # fmt: skip
    newcomer = Profile.objects.get(user__username="newcomer")
    change = staff_client.get(reverse("admin:auth_user_change", args=[newcomer.user_id])).content.decode()
    assert "Access and budget" in change and "#1" not in change


def test_an_admin_invites_by_link_shown_once(staff_client, settings) -> None:
    """Adding an invitation shows its link once (only a digest is stored); the list says whether it was used."""
    settings.SITE_URL = "https://jarvis.example"
    expires = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    add = staff_client.get(reverse("admin:botapp_invitation_add")).content.decode()
    assert 'name="expires_at_0"' in add
    response = staff_client.post(
        reverse("admin:botapp_invitation_add"),
        {"note": "Linus", "email": "linus@example.com", "expires_at_0": expires.date().isoformat(),
         "expires_at_1": expires.time().isoformat()},
    )  # fmt: skip
    assert response.status_code == 302
    [message] = [str(m) for m in get_messages(response.wsgi_request) if "shown only now" in str(m)]
    url = message.rsplit(": ", 1)[1]
    assert url.startswith("https://jarvis.example/accounts/invite/")
    invitation = Invitation.objects.get()
    assert invitation.token_digest == token_digest(url.rstrip("/").rsplit("/", 1)[1])
    assert invitation.created_by == staff_client.user
    staff_client.get(reverse("admin:botapp_invitation_changelist"))  # the page after adding shows it, once
    listing = staff_client.get(reverse("admin:botapp_invitation_changelist")).content.decode()
    assert "Linus" in listing and ">open<" in listing and url not in listing


def test_broadcasts_are_written_from_their_own_page(staff_client, fake_telegram, settings, monkeypatch,
                                                    django_capture_on_commit_callbacks) -> None:  # fmt: skip
    """The Broadcasts list has an add button: choose the bot, write the text, and it is queued and delivered."""
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    monkeypatch.setattr(Conf, "SYNC", True)
    bot = BotFactory(name="helper", token=ADMIN_TOKEN)
    BotUser.objects.create(bot=bot, identity=TelegramIdentity.objects.create(user=UserFactory(), telegram_id=9001))
    listing = staff_client.get(reverse("admin:botapp_broadcast_changelist")).content.decode()
    assert reverse("admin:botapp_broadcast_add") in listing
    empty = staff_client.post(reverse("admin:botapp_broadcast_add"), {"bot": bot.pk, "text": "  "})
    assert empty.status_code == 200 and not Broadcast.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(reverse("admin:botapp_broadcast_add"), {"bot": bot.pk, "text": "Hello all"})
    assert response["Location"] == reverse("admin:botapp_broadcast_changelist")
    broadcast = Broadcast.objects.get()
    assert (broadcast.text, broadcast.created_by, broadcast.state) == ("Hello all", staff_client.user, "done")
    assert [m.text for m in fake_telegram.messages(ADMIN_TOKEN, 9001)] == ["Hello all"]


def test_prices_mark_the_models_people_may_choose_and_personas_the_default(staff_client) -> None:
    """Model prices have an "offered to people" switch on the list; personas show which is the default."""
    listing = staff_client.get(reverse("admin:botapp_modelprice_changelist")).content.decode()
    assert "offered to people" in listing and 'name="form-0-offered"' in listing
    personas = staff_client.get(reverse("admin:botapp_persona_changelist")).content.decode()
    assert "default" in personas
    assert not ModelPrice.objects.filter(offered=True).exists()


def test_transcripts_render_the_answers_markdown_safely(staff_client) -> None:
    """An answer's Markdown is shown rendered (and sanitized) in the conversation's transcript."""
    conversation = ConversationFactory(user=UserFactory(), title="Code")
    Message.objects.create(conversation=conversation, role=Role.USER, content="**not rendered** for questions")
    Message.objects.create(conversation=conversation, role=Role.ASSISTANT,
                           content="Use **this**:\n\n```python\nprint(1)\n```\n<script>alert(1)</script>")  # fmt: skip
    page = staff_client.get(reverse("admin:botapp_conversation_change", args=[conversation.pk])).content.decode()
    assert "<strong>this</strong>" in page and '<code class="language-python">' in page
    assert "**not rendered** for questions" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
