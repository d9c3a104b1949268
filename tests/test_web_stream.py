"""Sending from the browser: the streamed NDJSON answer, bad input, and Stop (a client disconnect) under uvicorn."""

import asyncio
import json
import time
from decimal import Decimal

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client
from django.urls import reverse

from botapp.models import Message, MessageStatus, Profile, Role, UsageRecord, UsageStatus
from tests.asgi_server import AsgiServer
from tests.factories import ConversationFactory, UserFactory
from tests.fakes.openai_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def make_conversation(**kwargs):
    return ConversationFactory(**kwargs)


@sync_to_async
def stored(conversation) -> list[tuple[str, str, str]]:
    return list(conversation.messages.order_by("id").values_list("role", "content", "status"))


@sync_to_async
def ledger() -> list[UsageRecord]:
    return list(UsageRecord.objects.order_by("id"))


async def signed_in_client(user) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def send(client: AsyncClient, conversation, text: str, **headers: str) -> tuple[int, list[dict]]:
    """POST a message; the events of the streamed answer (or the one JSON error) as dicts."""
    response = await client.post(reverse("web:send", args=[conversation.pk]), {"text": text}, **headers)
    if not response.streaming:
        return response.status_code, [json.loads(response.content)]
    assert response["Content-Type"].startswith("application/x-ndjson")
    body = b"".join([chunk async for chunk in response.streaming_content])
    return response.status_code, [json.loads(line) for line in body.decode().splitlines()]


async def test_answer_streams_as_events_and_is_stored_with_its_cost(fake_openai):
    """The answer arrives as start, several deltas and done; done carries the sanitized HTML and the exact cost."""
    fake_openai.enqueue(Behaviour(text="Here is **bold** <script>alert(1)</script> text.", chunk_chars=5))
    conversation = await make_conversation()
    client = await signed_in_client(conversation.user)
    status, events = await send(client, conversation, "Show me")
    assert status == 200
    kinds = [event["type"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("delta") >= 5
    assert (
        "".join(e["text"] for e in events if e["type"] == "delta") == "Here is **bold** <script>alert(1)</script> text."
    )
    done = events[-1]
    assert "<strong>bold</strong>" in done["html"] and "<script>" not in done["html"]
    assert "&lt;script&gt;" in done["html"]
    [record] = await ledger()
    assert Decimal(done["cost_usd"]) == record.cost_usd > 0
    assert done["message_id"] == events[0]["message_id"] == record.message_id
    served = fake_openai.chat_requests()[0]
    assert done["input_tokens"] == served.usage["prompt_tokens"]
    assert done["output_tokens"] == served.usage["completion_tokens"]
    assert await stored(conversation) == [
        ("user", "Show me", "complete"),
        ("assistant", "Here is **bold** <script>alert(1)</script> text.", "complete"),
    ]


async def test_the_answer_is_rendered_as_it_streams_with_the_same_sanitizer(fake_openai):
    """While the answer streams, `render` events carry the answer so far as sanitized HTML (Markdown, highlighted
    code), each a longer prefix of the answer; a script the model writes never becomes markup."""
    text = "**Bold** start.\n\n```python\nx = '<script>alert(1)</script>'\n```\n\n" + "More words. " * 100
    fake_openai.enqueue(Behaviour(text=text, chunk_chars=6, chunk_delay=0.02))
    conversation = await make_conversation()
    client = await signed_in_client(conversation.user)
    _, events = await send(client, conversation, "Render as you go")
    kinds = [event["type"] for event in events]
    renders = [event["html"] for event in events if event["type"] == "render"]
    final = events[-1]["html"]
    assert kinds[-1] == "done" and "render" not in kinds[kinds.index("done") :]
    # Seconds of streaming, at most a few renders a second: several, each the answer so far, not yet the whole.
    assert 2 <= len(renders) <= len(text) // 6
    partial = [html for html in renders if html != final]
    assert any("<strong>Bold</strong>" in html for html in partial)
    assert any('<span class="s1">' in html for html in partial)
    assert all("<script" not in html for html in [*renders, final])


async def test_empty_message_is_refused_and_nothing_stored(fake_openai):
    """An empty or blank message gets a sentence (HTTP 400), no model call and nothing stored."""
    conversation = await make_conversation()
    client = await signed_in_client(conversation.user)
    status, [event] = await send(client, conversation, "  \n ")
    assert status == 400 and event["type"] == "error"
    assert "empty" in event["message"]
    assert await stored(conversation) == [] and fake_openai.chat_requests() == []


async def test_huge_message_is_refused_and_the_conversation_stays_usable(fake_openai, settings):
    """A message over MAX_MESSAGE_CHARS gets a sentence with the limit; earlier history stays and the next works."""
    settings.MAX_MESSAGE_CHARS = 500
    conversation = await make_conversation()
    client = await signed_in_client(conversation.user)
    await send(client, conversation, "First question")
    status, events = await send(client, conversation, "x" * 501)
    assert status == 200 and events[-1]["type"] == "error"
    assert "501" in events[-1]["message"] and "500" in events[-1]["message"]
    _, events = await send(client, conversation, "Still there?")
    assert events[-1]["type"] == "done"
    rows = await stored(conversation)
    assert rows[:2] == [("user", "First question", "complete"), ("assistant", "Echo: First question", "complete")]
    assert [row[2] for row in rows[2:4]] == ["failed", "failed"]
    assert rows[4:] == [("user", "Still there?", "complete"), ("assistant", "Echo: Still there?", "complete")]
    # Two answers asked of the model (streamed); the refused message never reached it.
    assert len([served for served in fake_openai.chat_requests() if served.body.get("stream")]) == 2


async def test_provider_down_gives_a_sentence_and_the_next_message_works(fake_openai, settings):
    """When the provider fails the page gets the funnel's sentence; the next message is answered normally."""
    settings.OPENAI_MAX_RETRIES = 0
    fake_openai.enqueue(Behaviour(status=500))
    conversation = await make_conversation()
    client = await signed_in_client(conversation.user)
    status, events = await send(client, conversation, "Hello?")
    assert status == 200 and events[-1]["type"] == "error"
    assert "try again" in events[-1]["message"]
    status, events = await send(client, conversation, "Hello again")
    assert events[-1]["type"] == "done"
    assert [row[2] for row in await stored(conversation)] == ["failed", "failed", "complete", "complete"]


async def test_spent_budget_is_refused_with_when_it_resets(fake_openai):
    """With the daily budget spent the page is told so and when it resets; the model is not called."""
    conversation = await make_conversation()
    await Profile.objects.aupdate_or_create(user=conversation.user, defaults={"daily_budget_usd": Decimal("0")})
    client = await signed_in_client(conversation.user)
    _, events = await send(client, conversation, "One more please")
    assert events[-1]["type"] == "error"
    assert "daily budget" in events[-1]["message"] and "resets" in events[-1]["message"]
    assert fake_openai.chat_requests() == []
    assert await stored(conversation) == [
        ("user", "One more please", "failed"),
        ("assistant", "", "failed"),
    ]


async def test_stream_error_sentence_follows_the_browsers_language(fake_openai):
    """A refusal sent inside the stream is in Chinese when the browser asks for Chinese."""
    conversation = await make_conversation()
    await Profile.objects.aupdate_or_create(user=conversation.user, defaults={"daily_budget_usd": Decimal("0")})
    client = await signed_in_client(conversation.user)
    _, events = await send(client, conversation, "你好", headers={"Accept-Language": "zh-CN"})
    assert events[-1]["type"] == "error"
    assert "预算" in events[-1]["message"]


# --- Under uvicorn: a client that goes away stops the answer -------------------------------------


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, django_db_blocker, openai_server):
    with AsgiServer(openai_base_url=openai_server.base_url) as server:
        yield server


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@sync_to_async
def _answer_row(conversation) -> Message | None:
    return conversation.messages.filter(role=Role.ASSISTANT).first()


async def test_client_disconnect_under_uvicorn_stops_the_answer_and_bills_the_partial(fake_openai, asgi_server):
    """Closing the connection mid-answer cancels the stream: the partial answer is stored incomplete and billed."""
    full_text = "word " * 400
    fake_openai.enqueue(Behaviour(text=full_text, chunk_chars=5, chunk_delay=0.02))
    user = await sync_to_async(UserFactory)()
    conversation = await make_conversation(user=user)
    csrf = "a" * 32
    cookies = {"sessionid": await sync_to_async(_session_cookie)(user), "csrftoken": csrf}
    url = f"{asgi_server.url}{reverse('web:send', args=[conversation.pk])}"
    received = ""
    async with aiohttp.ClientSession(cookies=cookies) as session:
        async with session.post(url, data={"text": "Talk for a long time"}, headers={"X-CSRFToken": csrf}) as response:
            assert response.status == 200
            async for line in response.content:
                event = json.loads(line)
                if event["type"] == "delta":
                    received += event["text"]
                if len(received) >= 50:
                    break
            # Leaving the block with the body unread closes the connection, as an aborted fetch does.
            response.close()

    deadline = time.monotonic() + 10
    answer = await _answer_row(conversation)
    while answer.status == MessageStatus.PENDING and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        answer = await _answer_row(conversation)
    assert answer.status == MessageStatus.INCOMPLETE
    assert answer.content.startswith(received) and 50 <= len(answer.content) < len(full_text)
    [record] = await ledger()
    assert record.message_id == answer.pk and record.status == UsageStatus.INCOMPLETE
    assert record.output_tokens > 0 and record.cost_usd > 0
    # The upstream call was cut too: the provider stopped sending well before the end (all of it takes 8 s).
    deadline = time.monotonic() + 30
    served_list = fake_openai.chat_requests()
    while not served_list and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        served_list = fake_openai.chat_requests()
    [served] = served_list
    assert served.status == 499 and len(served.text) < len(full_text)
