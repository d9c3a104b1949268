"""The picture tool: the model decides to draw, through the tool loop and the same picture service as /image."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.urls import reverse

from botapp.models import MediaFile, MediaKind, Message, Profile, Role, ToolCall, ToolCallStatus, UsageKind, UsageRecord
from tests.factories import ConversationFactory
from tests.fakes.openai_server import Behaviour
from tests.telegram_support import TOKEN, Running
from tests.tools_helpers import persona_with_tools

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)

DRAW = {"name": "draw_picture", "arguments": {"prompt": "a lighthouse at dawn, in watercolour"}}


def ledger() -> list[UsageRecord]:
    return list(UsageRecord.objects.order_by("id"))


async def test_telegram_model_draws_a_picture_sent_after_its_answer(jarvis: Running):
    """The model calls draw_picture: the answer's text, then the photo; chat rounds and the picture on the ledger."""
    await sync_to_async(persona_with_tools)("draw_picture")
    jarvis.openai.enqueue(Behaviour(tool_calls=[DRAW]), Behaviour(text="Here is your lighthouse."))
    jarvis.telegram.push_text(TOKEN, 1401, "Could you paint me a lighthouse?")
    text, photo = await jarvis.answered(1401, 2, timeout=30)
    assert text.text == "Here is your lighthouse."
    assert photo.kind == "photo" and photo.text == DRAW["arguments"]["prompt"]
    [request] = jarvis.openai.image_requests()
    assert request.body["prompt"] == DRAW["arguments"]["prompt"]
    answer = await Message.objects.aget(role=Role.ASSISTANT)
    [picture] = [p async for p in MediaFile.objects.filter(kind=MediaKind.IMAGE)]
    assert picture.message_id == answer.pk
    assert answer.telegram_reply_ids == [text.message_id, photo.message_id]
    records = await sync_to_async(ledger)()
    assert sorted(r.kind for r in records) == [UsageKind.CHAT, UsageKind.CHAT, UsageKind.IMAGE]
    [image_row] = [r for r in records if r.kind == UsageKind.IMAGE]
    assert image_row.output_tokens == request.usage["output_tokens"] and image_row.cost_usd > 0
    [call] = [c async for c in ToolCall.objects.all()]
    assert call.status == ToolCallStatus.OK and call.tool_name == "draw_picture"


async def test_telegram_a_refused_picture_is_told_to_the_model_which_says_so(jarvis: Running):
    """The provider's safety refusal reaches the model as the tool's error; the person gets its words, no photo."""
    await sync_to_async(persona_with_tools)("draw_picture")
    jarvis.openai.enqueue(
        Behaviour(status=400, error_code="moderation_blocked", error_message="Your request was rejected."),
        endpoint="images",
    )
    jarvis.openai.enqueue(Behaviour(tool_calls=[DRAW]), Behaviour(text="I could not draw that, sorry."))
    jarvis.telegram.push_text(TOKEN, 1402, "Paint something")
    [answer] = await jarvis.answered(1402, timeout=30)
    assert answer.text == "I could not draw that, sorry."
    assert jarvis.telegram.calls("sendPhoto") == []
    [call] = [c async for c in ToolCall.objects.all()]
    assert call.status == ToolCallStatus.ERROR and "No picture was made" in call.error
    second_request = jarvis.openai.chat_requests()[1].body["messages"][-1]
    assert second_request["role"] == "tool" and "No picture was made" in second_request["content"]


async def test_the_page_gets_the_drawn_picture_with_the_done_event(fake_openai):
    """On the web page the done event carries the picture the model drew, served to its owner."""
    await sync_to_async(persona_with_tools)("draw_picture")
    conversation = await sync_to_async(ConversationFactory)()
    client = AsyncClient()
    await client.aforce_login(conversation.user)
    fake_openai.enqueue(Behaviour(tool_calls=[DRAW]), Behaviour(text="Done: a lighthouse."))
    response = await client.post(reverse("web:send", args=[conversation.pk]), {"text": "paint a lighthouse"})
    body = b"".join([chunk async for chunk in response.streaming_content])
    events = [json.loads(line) for line in body.decode().splitlines()]
    done = events[-1]
    assert done["type"] == "done"
    [picture] = done["pictures"]
    assert picture["caption"] == DRAW["arguments"]["prompt"] and picture["width"]
    served = await client.get(picture["url"])
    assert served.status_code == 200 and served["Content-Type"] == "image/png"


async def test_no_picture_is_drawn_for_a_person_over_budget(jarvis: Running):
    """A spent budget stops the picture before the provider is called (checked again before the round's tools)."""
    await sync_to_async(persona_with_tools)("draw_picture")
    jarvis.openai.enqueue(Behaviour(tool_calls=[DRAW]), Behaviour(text="unused"))
    jarvis.telegram.push_text(TOKEN, 1403, "hi")
    await jarvis.answered(1403, timeout=30)
    assert len(jarvis.openai.image_requests()) == 1
    await Profile.objects.filter(user__telegram__telegram_id=1403).aupdate(daily_budget_usd=0)
    jarvis.openai.enqueue(Behaviour(tool_calls=[DRAW]), Behaviour(text="unused"))
    jarvis.telegram.push_text(TOKEN, 1403, "another one")
    await jarvis.answered(1403, 3, timeout=30)
    assert len(jarvis.openai.image_requests()) == 1, "no second picture was drawn"
