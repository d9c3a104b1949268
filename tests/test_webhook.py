"""Webhook mode: the view checks Telegram's secret, refuses bad input, queues each update once; runbot registers it."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse
from django_q.conf import Conf

from botapp.models import Bot, Message, ProcessedUpdate, Role, UsageKind, UsageRecord
from botapp.telegram.webhook import SECRET_HEADER, webhook_secret
from tests.factories import BotFactory
from tests.fakes.openai_server import Behaviour
from tests.telegram_support import TOKEN, telegram, telegram_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

SECRET = "webhook-secret-for-tests-0123456789"
CHAT = 4711


@pytest.fixture
def webhook(settings, monkeypatch: pytest.MonkeyPatch, telegram, fake_openai) -> Bot:  # noqa: F811
    """An enabled bot in webhook mode; queued tasks run inline (django-q2 sync mode)."""
    settings.TELEGRAM_WEBHOOK_SECRET = SECRET
    monkeypatch.setattr(Conf, "SYNC", True)
    return BotFactory(name="hooked", token=TOKEN)


def post(client: Client, bot: Bot, body: bytes | str, secret: str | None) -> HttpResponse:
    headers = {} if secret is None else {"headers": {SECRET_HEADER: secret}}
    return client.post(
        reverse("telegram-webhook", args=[bot.pk]), data=body, content_type="application/json", **headers
    )


def update_from(telegram, text: str) -> dict:  # noqa: F811
    return telegram.push_text(TOKEN, CHAT, text)


@pytest.mark.parametrize("secret", [None, "", "wrong", "webhook-secret-for-tests-0123456789"])
def test_a_missing_or_wrong_secret_is_refused(client, webhook, telegram, secret):  # noqa: F811
    """Without the bot's own derived secret (the shared setting itself is not it) the view answers 403."""
    response = post(client, webhook, json.dumps(update_from(telegram, "hello")), secret)

    assert response.status_code == 403
    assert not ProcessedUpdate.objects.exists() and telegram.calls("sendMessage") == []


def test_another_bots_secret_is_refused(client, webhook, telegram):  # noqa: F811
    """Each bot has its own secret: one bot's token cannot post updates for another."""
    other = BotFactory(name="other")
    response = post(client, webhook, json.dumps(update_from(telegram, "hi")), webhook_secret(other.pk))
    assert response.status_code == 403


def test_webhook_mode_off_refuses_everything(client, webhook, telegram, settings):  # noqa: F811
    """With TELEGRAM_WEBHOOK_SECRET unset nothing gets in, whatever header is sent."""
    good = webhook_secret(webhook.pk)
    settings.TELEGRAM_WEBHOOK_SECRET = ""
    assert post(client, webhook, json.dumps(update_from(telegram, "hi")), good).status_code == 403


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"message": {}}', b'{"update_id": "7"}'])
def test_a_body_that_is_not_an_update_is_a_400(client, webhook, body):
    """Broken JSON, or JSON that is not a Telegram update, is refused with 400 and nothing is stored."""
    response = post(client, webhook, body, webhook_secret(webhook.pk))
    assert response.status_code == 400
    assert not ProcessedUpdate.objects.exists()


def test_an_update_is_queued_and_answered_by_the_worker(client, webhook, telegram, fake_openai):  # noqa: F811
    """A signed update is written down, queued, and the worker answers it in the chat through the Bot API."""
    fake_openai.enqueue(Behaviour(text="Hello from the worker."))

    response = post(client, webhook, json.dumps(update_from(telegram, "hello")), webhook_secret(webhook.pk))

    assert response.status_code == 200 and response.json() == {"ok": True, "queued": True}
    [answer] = telegram.messages(TOKEN, CHAT)
    assert answer.text == "Hello from the worker."
    assert ProcessedUpdate.objects.get().state == ProcessedUpdate.State.DONE
    assert list(Message.objects.filter(role=Role.USER).values_list("content", flat=True)) == ["hello"]


def test_a_duplicate_update_is_answered_once(client, webhook, telegram, fake_openai):  # noqa: F811
    """Telegram redelivering the same update id gets 200 but no second answer and no second model call."""
    body = json.dumps(update_from(telegram, "only once"))
    secret = webhook_secret(webhook.pk)

    first, second = post(client, webhook, body, secret), post(client, webhook, body, secret)

    assert first.json()["queued"] is True and second.status_code == 200 and second.json()["queued"] is False
    assert len(telegram.messages(TOKEN, CHAT)) == 1
    assert UsageRecord.objects.filter(kind=UsageKind.CHAT).count() == 1
    assert Message.objects.filter(role=Role.USER).count() == 1


def test_the_worker_keeps_one_initialised_application_per_bot(client, webhook, telegram, fake_openai):  # noqa: F811
    """Several updates cost one getMe: the worker builds the bot's Application once, and again for a new token."""
    secret = webhook_secret(webhook.pk)
    for number in range(3):
        fake_openai.enqueue(Behaviour(text=f"Answer {number}."))
        assert post(client, webhook, json.dumps(update_from(telegram, f"question {number}")), secret).status_code == 200
    assert [m.text for m in telegram.messages(TOKEN, CHAT)] == [f"Answer {number}." for number in range(3)]
    assert len(telegram.calls("getMe", token=TOKEN)) == 1

    new_token = "424242:a-new-token-from-botfather-0000000000"
    telegram.add_bot(new_token)
    webhook.token = new_token
    webhook.save()
    fake_openai.enqueue(Behaviour(text="With the new token."))
    # Another chat and update id: the new token's fake starts its numbering again.
    update = {**telegram.push_text(new_token, CHAT + 1, "and now?"), "update_id": 900_001}
    assert post(client, webhook, json.dumps(update), secret).status_code == 200
    assert telegram.messages(new_token, CHAT + 1)[0].text == "With the new token."
    assert len(telegram.calls("getMe", token=new_token)) == 1 and len(telegram.calls("getMe", token=TOKEN)) == 1


def test_a_disabled_bot_gets_its_updates_acknowledged_not_answered(client, webhook, telegram):  # noqa: F811
    """Switching a bot off in the admin stops answers without making Telegram retry forever."""
    Bot.objects.filter(pk=webhook.pk).update(enabled=False)
    response = post(client, webhook, json.dumps(update_from(telegram, "hi")), webhook_secret(webhook.pk))
    assert response.status_code == 200 and response.json()["queued"] is False
    assert telegram.messages(TOKEN, CHAT) == []


def test_runbot_webhook_registers_the_url_and_secret_the_view_accepts(client, webhook, telegram, fake_openai):  # noqa: F811
    """`runbot --webhook URL` calls setWebhook with the bot's route and secret; Telegram's calls then get in."""
    call_command("runbot", "--webhook", "https://jarvis.example.com/")

    [call] = telegram.calls("setWebhook")
    assert call.params["url"] == f"https://jarvis.example.com/telegram/webhook/{webhook.pk}/"
    secret = call.params["secret_token"]
    assert secret != SECRET
    assert telegram.calls("setMyCommands", token=TOKEN), "the command menu is registered too"
    fake_openai.enqueue(Behaviour(text="Registered and answering."))
    response = post(client, webhook, json.dumps(update_from(telegram, "hi")), secret)
    assert response.status_code == 200
    assert telegram.messages(TOKEN, CHAT)[0].text == "Registered and answering."


def test_an_update_the_queue_cannot_take_is_refused_so_telegram_retries(
    client,
    webhook,
    telegram,  # noqa: F811
    fake_openai,
    monkeypatch: pytest.MonkeyPatch,
):
    """With the queue down the view answers 503 and forgets the update, so the retry is answered, not dropped."""
    body = json.dumps(update_from(telegram, "are you there?"))
    secret = webhook_secret(webhook.pk)
    with monkeypatch.context() as down:
        down.setattr(Conf, "ORM", None)
        down.setattr(Conf, "REDIS", "redis://127.0.0.1:9/0")  # nothing listens on port 9
        down.setattr(Conf, "SYNC", False)
        assert post(client, webhook, body, secret).status_code == 503
    assert not ProcessedUpdate.objects.exists()

    fake_openai.enqueue(Behaviour(text="Yes."))
    assert post(client, webhook, body, secret).json()["queued"] is True
    assert telegram.messages(TOKEN, CHAT)[0].text == "Yes."
