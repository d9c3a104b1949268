"""Bad input gets a clear answer and loses nothing: NUL and broken characters, huge messages, odd webhook JSON."""

from __future__ import annotations

import json

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse
from django_q.models import OrmQ

from botapp import llm
from botapp.models import Message, MessageStatus, ProcessedUpdate, Role
from botapp.storable import storable_json, storable_text
from botapp.telegram.webhook import SECRET_HEADER, webhook_secret
from tests.asgi_server import AsgiServer
from tests.factories import BotFactory, ConversationFactory, UserFactory
from tests.telegram_support import TOKEN, Running

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)

WEBHOOK_SECRET = "bad-input-webhook-secret-0123456789"


def test_storable_text_drops_nul_and_replaces_lone_surrogates():
    """NUL goes, a lone surrogate becomes U+FFFD, everything else (emoji, Chinese) is kept as it was."""
    assert storable_text("a\x00b\ud800c 你好 😀") == "ab\ufffdc 你好 😀"
    assert storable_json({"k\x00": ["x\udfff", 7, None, {"n": "\x00"}]}) == {"k": ["x\ufffd", 7, None, {"n": ""}]}


def test_token_counting_survives_a_text_too_long_for_the_tokenizer():
    """The tokenizer refuses a million characters; counting still gives a figure instead of an exception."""
    count = llm.count_tokens("hello world " * 100_000, model="gpt-4o-mini")
    assert 150_000 <= count <= 400_000


# --- Telegram ----------------------------------------------------------------------------------


async def test_telegram_message_with_nul_and_a_broken_character_is_stored_and_answered(jarvis: Running):
    """A NUL byte and a lone surrogate in a Telegram message: stored without them, answered, and the next works."""
    jarvis.telegram.push_text(TOKEN, 901, "hello\x00 world \ud800!")
    [answer] = await jarvis.answered(901)
    assert answer.text == "Echo: hello world \ufffd!"
    question = await Message.objects.aget(role=Role.USER, conversation__telegram_chat_id=901)
    assert question.content == "hello world \ufffd!" and question.status == MessageStatus.COMPLETE
    update = await ProcessedUpdate.objects.aget()
    assert update.state == ProcessedUpdate.State.DONE and update.payload["message"]["text"] == question.content

    jarvis.telegram.push_text(TOKEN, 901, "and now?")
    answers = await jarvis.answered(901, 2)
    assert answers[-1].text == "Echo: and now?"


# --- Under uvicorn: the web page and the webhook ------------------------------------------------


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, django_db_blocker, openai_server):
    extra = {"TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET}
    with AsgiServer(openai_base_url=openai_server.base_url, extra_env=extra) as server:
        yield server


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def _send(server: AsgiServer, user, conversation, text: str) -> tuple[int, list[dict]]:
    csrf = "b" * 32
    cookies = {"sessionid": await sync_to_async(_session_cookie)(user), "csrftoken": csrf}
    url = f"{server.url}{reverse('web:send', args=[conversation.pk])}"
    async with aiohttp.ClientSession(cookies=cookies) as session:
        async with session.post(url, data={"text": text}, headers={"X-CSRFToken": csrf}) as response:
            body = await response.text()
            return response.status, [json.loads(line) for line in body.splitlines() if line.strip()]


async def test_web_message_with_a_nul_byte_is_stored_and_answered(fake_openai, asgi_server):
    """A NUL byte from the page is not a 500 (PostgreSQL refuses NUL): the text is stored without it and answered."""
    user = await sync_to_async(UserFactory)()
    conversation = await sync_to_async(ConversationFactory)(user=user)
    status, events = await _send(asgi_server, user, conversation, "nul\x00here")
    assert status == 200
    assert events[-1]["type"] == "done"
    contents = [m async for m in conversation.messages.order_by("id").values_list("content", flat=True)]
    assert contents == ["nulhere", "Echo: nulhere"]


async def test_web_message_of_a_million_characters_gets_the_sentence(fake_openai, asgi_server):
    """A 1,000,000-character message is refused with a sentence naming the limit, not a 500; the next one works."""
    user = await sync_to_async(UserFactory)()
    conversation = await sync_to_async(ConversationFactory)(user=user)
    status, events = await _send(asgi_server, user, conversation, "x" * 1_000_000)
    assert status == 200
    assert events[-1]["type"] == "error"
    assert "1000000 characters" in events[-1]["message"] and "32000" in events[-1]["message"]
    assert fake_openai.chat_requests() == []
    question = await conversation.messages.aget(role=Role.USER)
    assert question.status == MessageStatus.FAILED and len(question.content) == 1_000_000

    status, events = await _send(asgi_server, user, conversation, "short one")
    assert events[-1]["type"] == "done"


@pytest.fixture
async def hooked_bot(settings):
    """A bot in webhook mode, with the secret the server under test was started with."""
    settings.TELEGRAM_WEBHOOK_SECRET = WEBHOOK_SECRET
    return await sync_to_async(BotFactory)(name="hooked", token=TOKEN)


async def _post_update(server: AsgiServer, bot_id: int, body: bytes) -> tuple[int, dict]:
    url = f"{server.url}{reverse('telegram-webhook', args=[bot_id])}"
    headers = {SECRET_HEADER: webhook_secret(bot_id), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)


def _message(text: str) -> dict:
    return {
        "message_id": 5,
        "from": {"id": 77, "is_bot": False, "first_name": "Odd"},
        "chat": {"id": 77, "type": "private"},
        "date": 1_700_000_000,
        "text": text,
    }


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"update_id": 2**70, "message": _message("huge id")}).encode(),
        json.dumps({"update_id": True, "message": _message("true is not 1")}).encode(),
        json.dumps({"update_id": -1, "message": _message("negative")}).encode(),
        b'{"update_id": 3, "message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"update_id": 4, "message": ' + b'{"a": ' * 200 + b"1" + b"}" * 200 + b"}",
        json.dumps({"update_id": 5, "message": "not a message"}).encode(),
        json.dumps({"update_id": 6, "message": {"message_id": 1}}).encode(),
    ],
    ids=["update-id-2**70", "update-id-true", "update-id-negative", "nested-100k", "nested-200", "string", "partial"],
)
async def test_a_malformed_but_signed_update_is_a_400_and_nothing_is_stored_or_queued(asgi_server, hooked_bot, body):
    """Odd JSON from a caller who knows the secret gets a 4xx; no update is written down and no job queued."""
    status, answer = await _post_update(asgi_server, hooked_bot.pk, body)
    assert status == 400, answer
    assert answer["ok"] is False and answer["error"]
    assert not await ProcessedUpdate.objects.aexists()
    assert not await OrmQ.objects.aexists()


async def test_a_webhook_update_with_nul_is_written_down_and_queued(asgi_server, hooked_bot):
    """A NUL byte in an update no longer fails every redelivery: it is stored (without NUL) and queued once."""
    bot = hooked_bot
    body = json.dumps({"update_id": 10, "message": _message("with\x00nul \ud800")}).encode()
    assert await _post_update(asgi_server, bot.pk, body) == (200, {"ok": True, "queued": True})
    row = await ProcessedUpdate.objects.aget(update_id=10)
    assert row.payload["message"]["text"] == "withnul \ufffd"
    assert await OrmQ.objects.acount() == 1
    assert await _post_update(asgi_server, bot.pk, body) == (200, {"ok": True, "queued": False})
