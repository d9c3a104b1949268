"""Broadcasts: queued with django-q2 (sync mode), sent through the real python-telegram-bot to the fake Bot API."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django_q.conf import Conf
from django_q.models import Task

from botapp import broadcast as broadcast_module
from botapp.broadcast import BroadcastError, broadcast_create, broadcast_send
from botapp.models import Bot, BotUser, Broadcast, TelegramIdentity
from tests.admin_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    admin_telegram_server_fixture,
    fake_telegram_fixture,
    fast_passwords_fixture,
)
from tests.factories import BotFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_passwords")]


@pytest.fixture
def q_sync(settings, monkeypatch) -> None:
    """Run django-q2 tasks inline (django-q2 reads the flag once at import, so it is patched too)."""
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    monkeypatch.setattr(Conf, "SYNC", True)


def people(bot: Bot, chat_ids: list[int]) -> dict[int, BotUser]:
    members = {}
    for chat_id in chat_ids:
        user = UserFactory(username=f"tg{chat_id}")
        identity = TelegramIdentity.objects.create(user=user, telegram_id=chat_id, username=f"u{chat_id}")
        members[chat_id] = BotUser.objects.create(bot=bot, identity=identity)
    return members


def sent_to(fake, chat_id: int) -> list[str]:
    return [message.text for message in fake.messages(ADMIN_TOKEN, chat_id)]


def test_broadcast_reaches_everyone_and_marks_who_blocked_the_bot(fake_telegram, q_sync) -> None:
    """Each person gets the text once; a 403 marks the person as having blocked the bot; counts add up."""
    bot = BotFactory(name="caster", token=ADMIN_TOKEN)
    members = people(bot, [1001, 1002, 1003, 1004, 1005])
    fake_telegram.fail_next("sendMessage", status=403, chat_id=1003)
    fake_telegram.fail_next("sendMessage", status=400, chat_id=1005, description="Bad Request: chat not found")
    broadcast = broadcast_create(bot=bot, text="Jarvis will be down for 5 minutes tonight.", created_by=None)
    broadcast.refresh_from_db()
    assert broadcast.state == Broadcast.State.DONE
    assert (broadcast.sent_count, broadcast.failed_count, broadcast.blocked_count) == (3, 1, 1)
    assert broadcast.finished_at is not None
    for chat_id in (1001, 1002, 1004):
        assert sent_to(fake_telegram, chat_id) == ["Jarvis will be down for 5 minutes tonight."]
    assert sent_to(fake_telegram, 1003) == []
    members[1003].refresh_from_db()
    assert members[1003].blocked_bot_at is not None
    assert BotUser.objects.filter(blocked_bot_at__isnull=False).count() == 1
    assert Task.objects.filter(name=f"broadcast-{broadcast.pk}", success=True).exists()


def test_people_who_blocked_the_bot_are_skipped_next_time(fake_telegram, q_sync) -> None:
    """A second broadcast does not even try the person who blocked the bot."""
    bot = BotFactory(name="caster", token=ADMIN_TOKEN)
    people(bot, [2001, 2002])
    fake_telegram.fail_next("sendMessage", status=403, chat_id=2002)
    broadcast_create(bot=bot, text="first", created_by=None)
    fake_telegram.reset()
    second = broadcast_create(bot=bot, text="second", created_by=None)
    second.refresh_from_db()
    assert [call.chat_id for call in fake_telegram.calls("sendMessage")] == [2001]
    assert (second.sent_count, second.failed_count, second.blocked_count) == (1, 0, 0)


def test_flood_control_is_honoured(fake_telegram, q_sync) -> None:
    """A 429 with retry_after pauses sending for that long, then the message is delivered."""
    bot = BotFactory(name="caster", token=ADMIN_TOKEN)
    people(bot, [3001, 3002])
    fake_telegram.fail_next("sendMessage", status=429, retry_after=1, chat_id=3001)
    broadcast = broadcast_create(bot=bot, text="hello", created_by=None)
    broadcast.refresh_from_db()
    assert (broadcast.sent_count, broadcast.failed_count) == (2, 0)
    calls = [call for call in fake_telegram.calls("sendMessage") if call.chat_id == 3001]
    assert [call.status for call in calls] == [429, 200]
    assert calls[1].time - calls[0].time >= 0.95
    assert sent_to(fake_telegram, 3001) == ["hello"]


def test_sending_is_paced_within_telegrams_limit(fake_telegram, q_sync) -> None:
    """Forty messages never go out faster than MESSAGES_PER_SECOND in any one-second window."""
    bot = BotFactory(name="caster", token=ADMIN_TOKEN)
    people(bot, list(range(4001, 4041)))
    broadcast = broadcast_create(bot=bot, text="paced", created_by=None)
    broadcast.refresh_from_db()
    assert broadcast.sent_count == 40
    times = sorted(call.time for call in fake_telegram.calls("sendMessage"))
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= broadcast_module.MESSAGES_PER_SECOND
    assert times[-1] - times[0] >= (40 - 1) / broadcast_module.MESSAGES_PER_SECOND * 0.9


def test_batches_cover_everyone(fake_telegram, q_sync, monkeypatch) -> None:
    """Recipients read in several batches are each sent to exactly once."""
    monkeypatch.setattr(broadcast_module, "BATCH_SIZE", 3)
    bot = BotFactory(name="caster", token=ADMIN_TOKEN)
    people(bot, list(range(5001, 5008)))
    broadcast = broadcast_create(bot=bot, text="batched", created_by=None)
    broadcast.refresh_from_db()
    assert broadcast.sent_count == 7
    assert sorted(call.chat_id for call in fake_telegram.calls("sendMessage")) == list(range(5001, 5008))


def test_a_rejected_token_fails_the_broadcast(fake_telegram, q_sync) -> None:
    """A token Telegram does not know marks the broadcast failed, and nobody is marked as blocking the bot."""
    bot = BotFactory(name="stranger", token="999999:AAunknownTokenForTheFakeServer-000")
    people(bot, [6001])
    broadcast = broadcast_create(bot=bot, text="hi", created_by=None)
    broadcast.refresh_from_db()
    assert broadcast.state == Broadcast.State.FAILED
    assert broadcast.sent_count == 0
    assert not BotUser.objects.filter(blocked_bot_at__isnull=False).exists()


def test_a_redelivered_task_does_not_send_twice(fake_telegram, q_sync) -> None:
    """Running the task again for a finished broadcast sends nothing more."""
    bot = BotFactory(name="caster", token=ADMIN_TOKEN)
    people(bot, [7001])
    broadcast = broadcast_create(bot=bot, text="once", created_by=None)
    assert broadcast_send(broadcast.pk) == "skipped"
    assert sent_to(fake_telegram, 7001) == ["once"]


def test_empty_or_overlong_text_is_refused(db) -> None:
    """An empty or over-long broadcast is refused with a sentence and nothing is stored."""
    bot = BotFactory(name="caster", token=ADMIN_TOKEN)
    admin = get_user_model().objects.create(username="root")
    with pytest.raises(BroadcastError, match="empty"):
        broadcast_create(bot=bot, text="   ", created_by=admin)
    with pytest.raises(BroadcastError, match="at most 4096"):
        broadcast_create(bot=bot, text="x" * 5000, created_by=admin)
    assert not Broadcast.objects.exists()
