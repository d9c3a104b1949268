"""The Bots admin: masked tokens, the getMe token check and the broadcast action, against the fake Bot API."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django_q.conf import Conf

from botapp.models import Bot, BotUser, Broadcast, TelegramIdentity
from tests.admin_support import (  # noqa: F401  (fixtures)
    ADMIN_BOT_USERNAME,
    ADMIN_TOKEN,
    admin_telegram_server_fixture,
    assert_login_page,
    fake_telegram_fixture,
    fast_passwords_fixture,
    member_client_fixture,
    staff_client_fixture,
)
from tests.factories import BotFactory, UserFactory

pytestmark = pytest.mark.usefixtures("fast_passwords")
CHANGELIST = "admin:botapp_bot_changelist"


def messages_of(response: object) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_adding_a_bot_stores_the_token_encrypted_and_shows_only_its_mask(staff_client, db) -> None:
    """The token goes in through a write-only field, is stored encrypted, and no page shows it in full."""
    form = {"name": "newbot", "new_token": ADMIN_TOKEN, "enabled": "on", "access_policy": "allowlist"}
    form["allowed_users"] = "@alice, 12345"
    response = staff_client.post(reverse("admin:botapp_bot_add"), form)
    assert response.status_code == 302
    bot = Bot.objects.get(name="newbot")
    assert bot.token == ADMIN_TOKEN
    assert ADMIN_TOKEN not in bot.token_encrypted
    assert bot.allows(telegram_id=12345, username=None) and not bot.allows(telegram_id=1, username="bob")
    for url in (reverse(CHANGELIST), reverse("admin:botapp_bot_change", args=[bot.pk])):
        page = staff_client.get(url).content.decode()
        assert ADMIN_TOKEN not in page
        assert bot.token_hint in page
    form.pop("new_token")
    form["name"] = "renamed"
    assert staff_client.post(reverse("admin:botapp_bot_change", args=[bot.pk]), form).status_code == 302
    bot.refresh_from_db()
    assert (bot.name, bot.token) == ("renamed", ADMIN_TOKEN)


def test_a_new_bot_needs_a_token(staff_client, db) -> None:
    """Adding a bot without a token is refused with a sentence saying where to get one."""
    response = staff_client.post(reverse("admin:botapp_bot_add"), {"name": "tokenless", "access_policy": "open"})
    assert response.status_code == 200
    assert "A new bot needs its token from @BotFather." in response.content.decode()
    assert not Bot.objects.filter(name="tokenless").exists()


def test_check_token_reports_the_bots_username(staff_client, fake_telegram) -> None:
    """getMe through python-telegram-bot: the username is reported and stored."""
    bot = BotFactory(name="helper", token=ADMIN_TOKEN)
    response = staff_client.post(
        reverse(CHANGELIST), {"action": "check_token", "_selected_action": [bot.pk]}, follow=True
    )
    assert f"Telegram says it is @{ADMIN_BOT_USERNAME}" in " ".join(messages_of(response))
    assert ADMIN_TOKEN not in response.content.decode()
    bot.refresh_from_db()
    assert bot.telegram_username == ADMIN_BOT_USERNAME
    assert [call.token for call in fake_telegram.calls("getMe")] == [ADMIN_TOKEN]


def test_check_token_reports_a_rejected_token(staff_client, fake_telegram) -> None:
    """A token Telegram does not accept is reported as an error sentence, without the token."""
    token = "111222:AAnotKnownToTelegramAtAll-000000000"
    bot = BotFactory(name="stranger", token=token)
    response = staff_client.post(
        reverse(CHANGELIST), {"action": "check_token", "_selected_action": [bot.pk]}, follow=True
    )
    text = " ".join(messages_of(response))
    assert "Telegram rejected the token of bot “stranger”" in text
    assert token not in response.content.decode()
    bot.refresh_from_db()
    assert bot.telegram_username == ""


def test_check_token_reports_an_unreachable_api(staff_client, db, settings) -> None:
    """With the Bot API unreachable, the admin is told so and asked to try later."""
    settings.TELEGRAM_API_BASE_URL = "http://127.0.0.1:9"
    bot = BotFactory(name="helper", token=ADMIN_TOKEN)
    response = staff_client.post(
        reverse(CHANGELIST), {"action": "check_token", "_selected_action": [bot.pk]}, follow=True
    )
    text = " ".join(messages_of(response))
    assert "Could not reach the Bot API at http://127.0.0.1:9" in text
    assert ADMIN_TOKEN not in response.content.decode()


def test_broadcast_action_asks_for_the_text_then_queues_it(
    staff_client, fake_telegram, settings, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    """The action shows a form; sending it creates a Broadcast that django-q2 (sync) delivers to the bot's users."""
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    monkeypatch.setattr(Conf, "SYNC", True)
    bot = BotFactory(name="helper", token=ADMIN_TOKEN)
    for chat_id in (8001, 8002):
        identity = TelegramIdentity.objects.create(user=UserFactory(), telegram_id=chat_id)
        BotUser.objects.create(bot=bot, identity=identity)
    url = reverse(CHANGELIST)
    form_page = staff_client.post(url, {"action": "send_broadcast", "_selected_action": [bot.pk]})
    assert form_page.status_code == 200
    assert 'name="text"' in form_page.content.decode()
    assert f'name="_selected_action" value="{bot.pk}"' in form_page.content.decode()
    assert not Broadcast.objects.exists()
    empty = staff_client.post(url, {"action": "send_broadcast", "_selected_action": [bot.pk], "send": "1", "text": " "})
    assert "This field is required." in empty.content.decode()
    assert not Broadcast.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            url,
            {"action": "send_broadcast", "_selected_action": [bot.pk], "send": "1", "text": "New persona: Poet!"},
            follow=True,
        )
    broadcast = Broadcast.objects.get()
    assert "is queued" in " ".join(messages_of(response))
    assert (broadcast.bot, broadcast.text, broadcast.created_by) == (bot, "New persona: Poet!", staff_client.user)
    broadcast.refresh_from_db()
    assert (broadcast.state, broadcast.sent_count) == (Broadcast.State.DONE, 2)
    for chat_id in (8001, 8002):
        assert [m.text for m in fake_telegram.messages(ADMIN_TOKEN, chat_id)] == ["New persona: Poet!"]


def test_bot_actions_are_staff_only(member_client, db) -> None:
    """A non-staff POST of a bot action is sent to the login page and nothing is checked or queued."""
    bot = BotFactory(name="helper", token=ADMIN_TOKEN)
    url = reverse(CHANGELIST)
    for action in ("check_token", "send_broadcast"):
        response = member_client.post(url, {"action": action, "_selected_action": [bot.pk], "send": "1", "text": "x"})
        assert_login_page(response, url)
    assert not Broadcast.objects.exists()
