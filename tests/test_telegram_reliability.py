"""Reliability: chats run side by side, one chat in order, redeliveries answered once."""

import os

import pytest

from botapp.models import Message, ProcessedUpdate, Role
from botapp.telegram import application
from tests.fakes.openai_server import Behaviour
from tests.fakes.telegram_server import Pacing
from tests.telegram_support import TOKEN, Running

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)

# 300 at once is measured with JARVIS_TEST_CHATS=300 (see the report); 100 keeps the suite quick.
CHATS = int(os.environ.get("JARVIS_TEST_CHATS", "100"))
MODEL_SECONDS = 1.0


async def test_many_chats_are_answered_concurrently(jarvis: Running):
    """Many chats writing at once, with a model that takes 1 s each, do not wait for each other."""
    jarvis.openai.default = Behaviour(delay=MODEL_SECONDS)
    for chat_id in range(10_000, 10_000 + CHATS):
        jarvis.telegram.push_text(TOKEN, chat_id, f"hello from {chat_id}")

    def all_answered() -> bool:
        return all(jarvis.answers(chat_id) for chat_id in range(10_000, 10_000 + CHATS))

    # One after another the answers would take CHATS × MODEL_SECONDS, longer than this deadline; how fast they
    # come side by side is measured in bench/telegram_bench.py.
    await jarvis.telegram.await_for(all_answered, timeout=CHATS * MODEL_SECONDS * 0.9, interval=1.0)
    await jarvis.settled(timeout=60)
    # Model calls ran side by side (one after another there would only ever be one); how many depends on the load.
    assert jarvis.openai.max_in_flight >= 2
    for chat_id in (10_000, 10_000 + CHATS - 1):
        assert jarvis.answers(chat_id)[0].text == f"Echo: hello from {chat_id}"


@pytest.fixture
def five_sends_a_second(monkeypatch: pytest.MonkeyPatch) -> int:
    """The bot's send pacing at five a second (Telegram's is 30), set before the bot is built."""
    monkeypatch.setattr(application, "SENDS_PER_SECOND", 5)
    return 5


@pytest.mark.usefixtures("five_sends_a_second")
async def test_a_burst_of_answers_goes_out_at_telegrams_pace_without_refusals(jarvis: Running):
    """Twenty answers ready at once under a Bot API that refuses (429) more than five sends a second: they go
    out paced, all of them, and Telegram refuses none."""
    jarvis.telegram.set_pacing(Pacing(per_second=5, chat_interval=1.0))
    jarvis.openai.default = Behaviour(delay=0.5)
    chats = range(30_000, 30_020)
    for chat_id in chats:
        jarvis.telegram.push_text(TOKEN, chat_id, f"burst {chat_id}")
    await jarvis.telegram.await_for(lambda: all(jarvis.answers(chat_id) for chat_id in chats), timeout=90)
    assert jarvis.telegram.too_many_requests_count == 0
    assert len(jarvis.telegram.calls("sendMessage")) == 20
    for chat_id in chats:
        assert [answer.text for answer in jarvis.answers(chat_id)] == [f"Echo: burst {chat_id}"]


async def test_messages_in_one_chat_are_answered_in_order(jarvis: Running):
    """Two messages in one chat: the slow first is answered before the fast second, which sees it in context."""
    jarvis.openai.enqueue(Behaviour(text="first answer", delay=1.0), Behaviour(text="second answer"))
    jarvis.telegram.push_text(TOKEN, 801, "first")
    jarvis.telegram.push_text(TOKEN, 801, "second")
    answers = await jarvis.answered(801, 2)
    assert [a.text for a in answers] == ["first answer", "second answer"]
    first, second = jarvis.openai.chat_requests()
    assert second.started >= first.finished
    assert [m["content"] for m in second.body["messages"][1:]] == ["first", "first answer", "second"]


async def test_redelivered_update_is_answered_once(jarvis: Running):
    """Telegram delivering the same update twice (same update_id) gets one answer and one model call."""
    update = jarvis.telegram.push_text(TOKEN, 802, "only once please")
    await jarvis.answered(802)
    jarvis.telegram.push_update(TOKEN, update)
    await jarvis.telegram.await_for(lambda: not jarvis.telegram.pending_updates(TOKEN), timeout=5)
    jarvis.telegram.push_text(TOKEN, 802, "next")  # handled after the duplicate, so the duplicate was seen
    answers = await jarvis.answered(802, 2)
    assert [a.text for a in answers] == ["Echo: only once please", "Echo: next"]
    assert len(jarvis.openai.chat_requests()) == 2
    assert await Message.objects.filter(role=Role.USER, content="only once please").acount() == 1
    row = await ProcessedUpdate.objects.aget(update_id=update["update_id"])
    assert row.state == ProcessedUpdate.State.DONE


async def test_redelivered_command_is_answered_once(jarvis: Running):
    """A redelivered update is dropped on its update id, even one that leaves nothing else behind (/caps)."""
    update = jarvis.telegram.push_text(TOKEN, 803, "/caps once")
    await jarvis.answered(803)
    jarvis.telegram.push_update(TOKEN, update)
    await jarvis.telegram.await_for(lambda: not jarvis.telegram.pending_updates(TOKEN), timeout=5)
    jarvis.telegram.push_text(TOKEN, 803, "/caps twice")
    answers = await jarvis.answered(803, 2)
    assert [a.text for a in answers] == ["ONCE", "TWICE"]
