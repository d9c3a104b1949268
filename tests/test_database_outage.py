"""The database stumbles, for real: no message lost, nothing billed twice, no restart needed afterwards.

On PostgreSQL the test cuts a TCP proxy between Jarvis and the server; on SQLite another connection holds the
write lock past Jarvis's busy timeout (tests/outage.py). Jarvis is the real python-telegram-bot Application
polling the fake Bot API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.urls import reverse
from django_q.conf import Conf

from botapp.conversations import conversation_for_chat, turn_accept
from botapp.database import database_wait
from botapp.models import Conversation, Message, MessageStatus, ProcessedUpdate, Role, UsageKind, UsageRecord
from botapp.people import telegram_identity_sync
from botapp.telegram import application as telegram_application
from botapp.telegram.webhook import SECRET_HEADER, webhook_secret
from tests.factories import BotFactory
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.fakes.telegram_server import FakeTelegram
from tests.outage import DatabaseOutage, read
from tests.telegram_support import TOKEN, Running, start_application, stop_application

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def outage(transactional_db) -> DatabaseOutage:
    with DatabaseOutage() as outage:
        yield outage


@pytest.fixture
async def jarvis(
    outage: DatabaseOutage, telegram: FakeTelegram, fake_openai: FakeOpenAI, monkeypatch
) -> AsyncIterator[Running]:
    """Jarvis polling the fake Bot API, its database connections going through the outage's cut."""
    monkeypatch.setattr(telegram_application, "ADMIT_DEADLINE_SECONDS", 2.0)
    bot = await sync_to_async(BotFactory)(name="stumbling", token=TOKEN)
    application = await start_application(bot)
    try:
        yield Running(bot=bot, application=application, telegram=telegram, openai=fake_openai)
    finally:
        await stop_application(application)


def deliveries(telegram: FakeTelegram, update_id: int) -> int:
    """How many getUpdates answers carried this update (more than one: it was not confirmed the first time)."""
    return sum(
        any(update["update_id"] == update_id for update in call.response.get("result") or [])
        for call in telegram.calls("getUpdates")
    )


def ledger() -> list[UsageRecord]:
    return list(UsageRecord.objects.order_by("id"))


async def test_a_message_sent_while_the_database_is_down_is_answered_once_it_is_back(outage, jarvis: Running):
    """The update is not confirmed to Telegram while it cannot be stored; after the outage it is answered once."""
    outage.cut()
    update = jarvis.telegram.push_text(TOKEN, 1301, "are you there?")
    try:
        # Fetched, not stored, so not confirmed: Telegram hands it over again on the next poll.
        await jarvis.telegram.await_for(lambda: deliveries(jarvis.telegram, update["update_id"]) >= 2, timeout=60)
        assert jarvis.telegram.messages(TOKEN, 1301) == []
        assert jarvis.openai.chat_requests() == []
    finally:
        outage.restore()

    [answer] = await jarvis.wait_answers(1301, timeout=60)
    await database_wait(deadline=30)
    await jarvis.settled(timeout=60)
    assert answer.text == "Echo: are you there?"
    assert [m.text for m in jarvis.telegram.messages(TOKEN, 1301)] == ["Echo: are you there?"]
    assert len(jarvis.openai.chat_requests()) == 1
    assert len(await read(ledger)) == 1
    row = await read(lambda: ProcessedUpdate.objects.get(update_id=update["update_id"]))
    assert row.state == ProcessedUpdate.State.DONE
    assert jarvis.telegram.pending_updates(TOKEN) == []


async def test_an_outage_in_the_middle_of_an_answer_stores_and_bills_it_once_when_the_database_is_back(
    outage, jarvis: Running
):
    """The answer streams on; its store waits for the database; no apology; billed once; the lease let go."""
    full = "Streaming along while the database is away. " * 6
    jarvis.openai.enqueue(Behaviour(text=full, chunk_chars=6, chunk_delay=0.05))
    jarvis.telegram.push_text(TOKEN, 1302, "talk to me")
    await jarvis.telegram.await_for(lambda: jarvis.openai.in_flight >= 1, timeout=30)
    outage.cut()
    try:
        # The model finishes while the database is still away.
        await jarvis.telegram.await_for(
            lambda: [r for r in jarvis.openai.chat_requests() if r.finished] or None, timeout=30
        )
        await asyncio.sleep(2)  # the store has failed at least once by now; the outage goes on a little
    finally:
        outage.restore()

    await jarvis.telegram.await_for(
        lambda: [m for m in jarvis.telegram.messages(TOKEN, 1302) if m.text == full.strip()] or None, timeout=60
    )
    await database_wait(deadline=30)
    await jarvis.settled(timeout=60)
    assert [m.text for m in jarvis.telegram.messages(TOKEN, 1302)] == [full.strip()], "no apology, no second answer"
    answer = await read(lambda: Message.objects.get(role=Role.ASSISTANT, conversation__telegram_chat_id=1302))
    assert answer.status == MessageStatus.COMPLETE and answer.content == full
    [served] = jarvis.openai.chat_requests()
    [record] = await read(ledger)
    assert record.message_id == answer.pk and not record.estimated
    assert (record.input_tokens, record.output_tokens) == (
        served.usage["prompt_tokens"],
        served.usage["completion_tokens"],
    )
    conversation = await read(lambda: Conversation.objects.get(pk=answer.conversation_id))
    assert conversation.answering_until is None and conversation.answering_token == ""

    jarvis.telegram.push_text(TOKEN, 1302, "still fine?")
    answers = await jarvis.answered(1302, 2, timeout=30)
    assert answers[-1].text == "Echo: still fine?"
    assert len(await read(ledger)) == 2


async def test_the_database_locked_or_gone_during_handling_delays_the_answer_but_loses_nothing(outage, jarvis: Running):
    """Cut after the update is stored: handling fails on the database, waits for it, and answers once."""
    jarvis.openai.default = Behaviour(delay=1.0)
    jarvis.telegram.push_text(TOKEN, 1303, "first")
    await jarvis.telegram.await_for(lambda: jarvis.openai.in_flight >= 1, timeout=30)
    jarvis.telegram.push_text(TOKEN, 1304, "second, in another chat")
    outage.cut()
    try:
        await asyncio.sleep(4)
    finally:
        outage.restore()
    await jarvis.wait_answers(1303, timeout=60)
    await jarvis.wait_answers(1304, timeout=60)
    await database_wait(deadline=30)
    await jarvis.settled(timeout=60)
    assert [m.text for m in jarvis.telegram.messages(TOKEN, 1303)] == ["Echo: first"]
    assert [m.text for m in jarvis.telegram.messages(TOKEN, 1304)] == ["Echo: second, in another chat"]
    assert len(jarvis.openai.chat_requests()) == 2
    assert len(await read(ledger)) == 2


async def test_an_answer_left_pending_is_answered_without_a_restart(jarvis: Running, monkeypatch):
    """A turn whose handling gave up stays pending only until the running bot's sweep answers it, once."""
    monkeypatch.setattr(telegram_application, "PENDING_SWEEP_SECONDS", 0.5)
    monkeypatch.setattr(telegram_application, "PENDING_IDLE", timedelta(0))

    @sync_to_async
    def stuck_turn() -> None:
        user = telegram_identity_sync(telegram_id=1305, first_name="Tester", language_code="en").user
        conversation = conversation_for_chat(bot=jarvis.bot, telegram_chat_id=1305, user=user)
        turn_accept(conversation=conversation, text="left behind", telegram_message_id=1)

    await stuck_turn()
    sweep = asyncio.create_task(telegram_application.pending_sweep(jarvis.application))
    try:
        [answer] = await jarvis.answered(1305, timeout=30)
        await asyncio.sleep(2)  # four more sweeps: none answers again
    finally:
        sweep.cancel()
    assert answer.text == "Echo: left behind"
    assert [m.text for m in jarvis.telegram.messages(TOKEN, 1305)] == ["Echo: left behind"]
    assert len(jarvis.openai.chat_requests()) == 1
    assert len(await read(ledger)) == 1


def test_the_webhook_answers_503_while_the_database_is_down_and_the_retry_is_answered(
    outage, client, settings, telegram, fake_openai, monkeypatch
):
    """Webhook mode: an update that cannot be written down is not acknowledged (503), so Telegram's retry counts."""
    settings.TELEGRAM_WEBHOOK_SECRET = "outage-webhook-secret-0123456789"
    monkeypatch.setattr(Conf, "SYNC", True)
    bot = BotFactory(name="hooked", token=TOKEN)
    body = json.dumps(telegram.push_text(TOKEN, 1306, "hello through the hook"))
    url = reverse("telegram-webhook", args=[bot.pk])
    headers = {SECRET_HEADER: webhook_secret(bot.pk)}

    outage.cut()
    try:
        refused = client.post(url, data=body, content_type="application/json", headers=headers)
    finally:
        outage.restore()
    assert refused.status_code == 503 and refused["Retry-After"]
    connection.close()  # the test client does not recycle connections between requests as a server does
    assert not ProcessedUpdate.objects.exists()

    accepted = client.post(url, data=body, content_type="application/json", headers=headers)
    assert accepted.status_code == 200 and accepted.json()["queued"] is True
    assert [m.text for m in telegram.messages(TOKEN, 1306)] == ["Echo: hello through the hook"]
    assert ProcessedUpdate.objects.get().state == ProcessedUpdate.State.DONE
    assert UsageRecord.objects.filter(kind=UsageKind.CHAT).count() == 1
