"""Start-up recovery in process: updates and answers a crash left behind are finished exactly once."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from botapp.conversations import conversation_for_chat, turn_accept, turn_retry
from botapp.models import Message, MessageStatus, ProcessedUpdate, Role
from botapp.people import telegram_identity_sync
from tests.factories import BotFactory
from tests.fakes.openai_server import Behaviour
from tests.telegram_support import TOKEN, start_application, stop_application

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)

CHAT = 1201


def message_payload(update_id: int, message_id: int, text: str) -> dict:
    sender = {"id": CHAT, "is_bot": False, "first_name": "Tester", "language_code": "en"}
    message = {
        "message_id": message_id,
        "from": sender,
        "chat": {"id": CHAT, "type": "private", "first_name": "Tester"},
        "date": int(time.time()),
        "text": text,
    }
    if text.startswith("/"):
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    return {"update_id": update_id, "message": message}


async def wait_settled(timeout: float = 15.0) -> None:
    @sync_to_async
    def busy() -> bool:
        return (
            ProcessedUpdate.objects.filter(state=ProcessedUpdate.State.RECEIVED).exists()
            or Message.objects.filter(status=MessageStatus.PENDING).exists()
        )

    deadline = time.monotonic() + timeout
    while await busy():
        assert time.monotonic() < deadline, "recovery did not finish"
        await asyncio.sleep(0.05)


async def test_update_written_down_but_never_handled_is_handled_after_a_restart(telegram, fake_openai):
    """An update recorded just before a crash (Telegram will not send it again) is answered at start-up."""
    bot = await sync_to_async(BotFactory)(name="recovering", token=TOKEN)
    await ProcessedUpdate.objects.acreate(bot=bot, update_id=4001, payload=message_payload(4001, 1, "Still there?"))
    application = await start_application(bot)
    try:
        await telegram.await_for(lambda: telegram.messages(TOKEN, CHAT), timeout=10)
        await wait_settled()
    finally:
        await stop_application(application)
    # Read once everything settled: the first sight of the message may be a streamed preview.
    [answer] = telegram.messages(TOKEN, CHAT)
    assert answer.text == "Echo: Still there?"
    assert len(fake_openai.chat_requests()) == 1
    assert (await ProcessedUpdate.objects.aget(update_id=4001)).state == ProcessedUpdate.State.DONE


async def test_interrupted_retry_is_answered_once_after_a_restart(telegram, fake_openai):
    """A /retry cut off by a crash: its pending answer is finished, and the /retry is not replayed on top."""
    bot = await sync_to_async(BotFactory)(name="recovering", token=TOKEN)

    @sync_to_async
    def crashed_state() -> None:
        user = telegram_identity_sync(telegram_id=CHAT, first_name="Tester", language_code="en").user
        conversation = conversation_for_chat(bot=bot, telegram_chat_id=CHAT, user=user)
        turn = turn_accept(conversation=conversation, text="Question", telegram_message_id=1)
        Message.objects.filter(pk=turn.reply.pk).update(status=MessageStatus.COMPLETE, content="Old answer")
        turn_retry(conversation=conversation)
        ProcessedUpdate.objects.create(bot=bot, update_id=4002, payload=message_payload(4002, 3, "/retry"))

    await crashed_state()
    fake_openai.enqueue(Behaviour(text="New answer"))
    application = await start_application(bot)
    try:
        await telegram.await_for(lambda: telegram.messages(TOKEN, CHAT), timeout=10)
        await wait_settled()
        await asyncio.sleep(1.5)  # room for a duplicate to show up, if there were one
    finally:
        await stop_application(application)
    assert [m.text for m in telegram.messages(TOKEN, CHAT)] == ["New answer"]
    assert len(fake_openai.chat_requests()) == 1
    statuses = await sync_to_async(
        lambda: list(Message.objects.filter(role=Role.ASSISTANT).order_by("id").values_list("status", flat=True))
    )()
    assert statuses == [MessageStatus.SUPERSEDED, MessageStatus.COMPLETE]
