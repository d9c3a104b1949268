"""The Telegram bot chatting: answers through the funnel, streaming, long answers, formatting, flood control."""

import asyncio
import itertools
import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from botapp.context import history_fit
from botapp.models import Conversation, Message, MessageStatus, Role, UsageRecord
from botapp.telegram import delivery
from tests.fakes.openai_server import Behaviour
from tests.telegram_support import TOKEN, USERNAME, Running

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def stored(chat_id: int) -> list[tuple[str, str, str]]:
    conversation = Conversation.objects.get(telegram_chat_id=chat_id, is_active=True)
    return list(conversation.messages.order_by("id").values_list("role", "content", "status"))


async def test_text_is_answered_and_stored_with_telegram_ids(jarvis: Running):
    """A text goes through the funnel: the answer arrives, both messages are stored with their Telegram ids."""
    update = jarvis.telegram.push_text(TOKEN, 501, "Hello Jarvis")
    [answer] = await jarvis.answered(501)
    assert answer.text == "Echo: Hello Jarvis"
    assert answer.reply_to_message_id is None  # private chats need no quote
    question, reply = await sync_to_async(lambda: list(Message.objects.order_by("id")))()
    assert (question.role, question.content, question.telegram_message_id) == (
        Role.USER,
        "Hello Jarvis",
        update["message"]["message_id"],
    )
    assert (reply.role, reply.status, reply.telegram_reply_ids) == (
        Role.ASSISTANT,
        MessageStatus.COMPLETE,
        [answer.message_id],
    )
    assert await UsageRecord.objects.filter(message=reply).acount() == 1


async def test_history_is_remembered_across_messages(jarvis: Running):
    """The second question reaches the model with the first exchange before it."""
    jarvis.telegram.push_text(TOKEN, 502, "My name is Ada")
    await jarvis.wait_answers(502, 1)
    jarvis.telegram.push_text(TOKEN, 502, "What is my name?")
    await jarvis.answered(502, 2)
    last = jarvis.openai.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in last[1:]] == ["My name is Ada", "Echo: My name is Ada", "What is my name?"]


async def test_answer_streams_as_a_native_draft_in_a_private_chat(jarvis: Running):
    """In a private chat a slow answer grows as the chat's draft (sendMessageDraft), after "typing…", then is sent
    once, whole: no message is edited."""
    text = " ".join(f"word{i}" for i in range(60))
    jarvis.openai.enqueue(Behaviour(text=text, chunk_chars=6, chunk_delay=0.06))
    jarvis.telegram.push_text(TOKEN, 503, "Tell me a story")
    await jarvis.answered(503)
    [answer] = jarvis.answers(503)
    assert answer.text == text and answer.edits == 0
    drafts = jarvis.telegram.drafts(TOKEN, 503)
    assert len(drafts) >= 3, "the answer should grow as a draft"
    assert len({draft.draft_id for draft in drafts}) == 1, "one draft, animated from one text to the next"
    assert all(text.startswith(draft.text) for draft in drafts)
    assert [len(draft.text) for draft in drafts] == sorted(len(draft.text) for draft in drafts)
    calls = [c for c in jarvis.telegram.calls() if c.chat_id == 503]
    methods = [c.method for c in calls]
    assert "editMessageText" not in methods
    assert methods.index("sendChatAction") < methods.index("sendMessageDraft") < methods.index("sendMessage")
    writes = [c.time for c in calls if c.method in ("sendMessageDraft", "sendMessage")]
    assert min(b - a for a, b in itertools.pairwise(writes)) >= 0.9
    reply = await Message.objects.aget(role=Role.ASSISTANT)
    assert reply.telegram_reply_ids == [answer.message_id]


async def test_a_long_draft_becomes_messages_part_by_part(jarvis: Running):
    """An answer over 4096 characters: each part is sent as a message once complete, the next one drafted."""
    paragraphs = [f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(16)]
    text = "\n\n".join(paragraphs)
    jarvis.openai.enqueue(Behaviour(text=text, chunk_chars=400, chunk_delay=0.25))
    jarvis.telegram.push_text(TOKEN, 512, "Write a lot")
    answers = await jarvis.answered(512, 2, timeout=30)
    assert len(answers) >= 2 and all(a.edits == 0 and len(a.text) <= 4096 for a in answers)
    assert " ".join(a.text for a in answers).split() == text.split()
    drafts = jarvis.telegram.drafts(TOKEN, 512)
    first_id = drafts[0].draft_id
    # Each part drafts under its own id (the last one may go out whole before it is ever drafted).
    assert {first_id, first_id + 1} <= {d.draft_id for d in drafts} <= set(range(first_id, first_id + len(answers)))
    sent = [c.time for c in jarvis.telegram.calls("sendMessage") if c.chat_id == 512]
    # Each part is drafted only after the part before it went out as a message.
    for part in range(1, len(answers)):
        assert all(d.time > sent[part - 1] for d in drafts if d.draft_id == first_id + part)


WRITES = ("sendMessage", "editMessageText")


def bot_writes(monkeypatch: pytest.MonkeyPatch, chat_id: int) -> list[float]:
    """When the bot starts each message it sends or edits in `chat_id`, on its own clock.

    The pace is the bot's to keep; the times the fake server sees also carry the jitter of a busy machine.
    """
    starts: list[float] = []
    for name in ("send_text", "edit_text"):
        original = getattr(delivery, name)

        async def stamped(bot: Any, *, chat_id: int, _original: Any = original, **kwargs: Any) -> Any:
            if chat_id == watched:
                starts.append(asyncio.get_running_loop().time())
            return await _original(bot, chat_id=chat_id, **kwargs)

        monkeypatch.setattr(delivery, name, stamped)
    watched = chat_id
    return starts


async def test_a_server_without_drafts_gets_throttled_edits(jarvis_without_drafts: Running, monkeypatch):
    """A Bot API server from before drafts answers 404: the answer grows by editing one message, at most once a
    second, and later answers do not ask for drafts again."""
    jarvis = jarvis_without_drafts
    writes = bot_writes(monkeypatch, 503)
    text = " ".join(f"word{i}" for i in range(60))
    jarvis.openai.enqueue(
        Behaviour(text=text, chunk_chars=6, chunk_delay=0.06), Behaviour(text=text, chunk_chars=6, chunk_delay=0.06)
    )
    jarvis.telegram.push_text(TOKEN, 503, "Tell me a story")
    [answer] = await jarvis.answered(503)
    assert answer.text == text
    assert answer.edits >= 2, "the answer should grow in place"
    assert len(writes) == 1 + answer.edits
    gaps = [b - a for a, b in itertools.pairwise(writes)]
    # asyncio may wake a timer up to one clock tick early.
    assert min(gaps) >= delivery.EDIT_INTERVAL_PRIVATE - 0.001, gaps
    calls = [c.method for c in jarvis.telegram.calls() if c.chat_id == 503]
    assert calls.index("sendChatAction") < calls.index("sendMessage")
    assert [c.status for c in jarvis.telegram.calls("sendMessageDraft")] == [404]
    jarvis.telegram.push_text(TOKEN, 513, "Again")
    await jarvis.answered(513)
    assert jarvis.answers(513)[0].edits >= 2
    assert len(jarvis.telegram.calls("sendMessageDraft")) == 1


async def test_typing_shows_only_when_the_answer_takes_a_moment(jarvis: Running, monkeypatch):
    """An answer ready before the typing delay goes out with no "typing…" call; a slower one shows it first."""
    # Delays far from the model's, so that a busy machine cannot change the outcome.
    monkeypatch.setattr(delivery, "TYPING_DELAY", 20.0)
    jarvis.telegram.push_text(TOKEN, 507, "Quick one")
    await jarvis.answered(507)
    monkeypatch.setattr(delivery, "TYPING_DELAY", 0.0)
    jarvis.openai.enqueue(Behaviour(delay=2.0))
    jarvis.telegram.push_text(TOKEN, 508, "Slow one")
    await jarvis.answered(508)
    quick = [c.method for c in jarvis.telegram.calls() if c.chat_id == 507]
    slow = [c.method for c in jarvis.telegram.calls() if c.chat_id == 508]
    assert "sendChatAction" not in quick
    assert slow.index("sendChatAction") < slow.index("sendMessage"), "typing shows while the model is still thinking"
    assert {c.params["action"] for c in jarvis.telegram.calls("sendChatAction") if c.chat_id == 508} == {"typing"}


async def test_long_answer_is_split_into_messages_without_losing_anything(jarvis: Running):
    """An answer over 4096 characters arrives as several messages, each within the limit, nothing cut off."""
    paragraphs = [f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(40)]
    text = "\n\n".join(paragraphs)
    jarvis.openai.enqueue(Behaviour(text=text, chunk_chars=4000))
    jarvis.telegram.push_text(TOKEN, 504, "Write a lot")
    await jarvis.answered(504, 3)
    answers = jarvis.answers(504)
    assert len(answers) >= 3
    assert all(len(a.text) <= 4096 for a in answers)
    joined = "\n\n".join(a.text for a in answers)
    assert joined.replace("\n", " ").split() == text.replace("\n", " ").split()
    reply = await Message.objects.aget(role=Role.ASSISTANT)
    assert reply.telegram_reply_ids == [a.message_id for a in answers]


async def test_markdown_is_sent_as_html(jarvis: Running):
    """The model's Markdown arrives as Telegram HTML: bold and code become entities."""
    jarvis.openai.enqueue(Behaviour(text="This is **bold** and `code`.\n\n```python\nprint(1 < 2)\n```"))
    jarvis.telegram.push_text(TOKEN, 505, "Format something")
    [answer] = await jarvis.answered(505)
    assert answer.parse_mode == "HTML"
    assert {e["type"] for e in answer.entities} >= {"bold", "code", "pre"}
    assert "print(1 < 2)" in answer.text


async def test_rejected_html_is_sent_again_as_plain_text(jarvis: Running):
    """When Telegram cannot parse the entities, the same answer goes out as plain text."""
    jarvis.telegram.fail_next(
        "sendMessage", 400, description='Bad Request: can\'t parse entities: Unsupported start tag "x"', times=1
    )
    # One chunk: the answer goes out in one send (a slow machine may otherwise preview part of it first).
    jarvis.openai.enqueue(Behaviour(text="Echo: Say **hi**", chunk_chars=1000))
    jarvis.telegram.push_text(TOKEN, 506, "Say **hi**")
    [answer] = await jarvis.answered(506)
    refused, plain = [c for c in jarvis.telegram.calls("sendMessage") if c.chat_id == 506][:2]
    assert (refused.status, refused.params.get("parse_mode")) == (400, "HTML")
    assert (plain.status, plain.params.get("parse_mode"), plain.params["text"]) == (200, None, "Echo: Say **hi**")
    assert answer.parse_mode is None
    assert answer.text == "Echo: Say **hi**"


async def test_rejected_html_in_an_edit_falls_back_to_plain_text(jarvis_without_drafts: Running):
    """When Telegram refuses the HTML of an edit, the same text is sent as a plain edit and the answer goes on."""
    jarvis = jarvis_without_drafts
    text = "Some **bold** words and then the rest of a longer answer, which goes on for a while after that."
    # Seconds long, so that the refused edit (the first) is not the last one: the final edit restores the bold.
    jarvis.openai.enqueue(Behaviour(text=text, chunk_chars=12, chunk_delay=0.5))
    jarvis.telegram.fail_next(
        "editMessageText", 400, description="Bad Request: can't parse entities: Can't find end tag", times=1
    )
    jarvis.telegram.push_text(TOKEN, 511, "Go")
    [answer] = await jarvis.answered(511)
    refused, plain = [c for c in jarvis.telegram.calls("editMessageText") if c.chat_id == 511][:2]
    assert (refused.status, refused.params.get("parse_mode")) == (400, "HTML")
    assert (plain.status, plain.params.get("parse_mode")) == (200, None)
    assert plain.params["text"] == refused.params["text"].replace("<b>", "**").replace("</b>", "**")
    assert answer.text == "Some bold words and then the rest of a longer answer, which goes on for a while after that."


async def test_message_not_modified_is_not_an_error(jarvis_without_drafts: Running):
    """An edit answered "message is not modified" is taken as done: no error reaches the person."""
    jarvis = jarvis_without_drafts
    jarvis.openai.enqueue(Behaviour(text="First words. And the rest of the answer.", chunk_chars=12, chunk_delay=0.4))
    jarvis.telegram.fail_next(
        "editMessageText",
        400,
        description="Bad Request: message is not modified: specified new message content and reply markup are "
        "exactly the same as a current content and reply markup of the message",
        times=5,
    )
    jarvis.telegram.push_text(TOKEN, 507, "Go")
    answers = await jarvis.answered(507)
    assert len(answers) == 1, [a.text for a in answers]
    assert answers[0].text.startswith("First words.")
    assert len([c for c in jarvis.telegram.calls("editMessageText") if c.status == 400]) >= 1
    reply = await Message.objects.aget(role=Role.ASSISTANT)
    assert reply.status == MessageStatus.COMPLETE
    assert reply.telegram_reply_ids == [answers[0].message_id]


async def test_flood_control_is_honoured_and_the_answer_arrives(jarvis: Running):
    """A 429 with retry_after is waited out: the whole answer still arrives, after the wait."""
    jarvis.telegram.fail_next("sendMessage", 429, retry_after=1, times=1, chat_id=508)
    jarvis.telegram.push_text(TOKEN, 508, "Hi")
    [answer] = await jarvis.answered(508)
    assert answer.text == "Echo: Hi"
    sends = [c for c in jarvis.telegram.calls("sendMessage") if c.chat_id == 508]
    assert [c.status for c in sends] == [429, 200]
    assert sends[1].time - sends[0].time >= 1.0


async def test_provider_down_is_reported_and_the_next_message_works(jarvis: Running):
    """With the provider failing, the person reads a sentence; once it is back, the next message is answered."""
    jarvis.openai.enqueue(*[Behaviour(status=500) for _ in range(3)])
    jarvis.telegram.push_text(TOKEN, 509, "Are you there?")
    [failure] = await jarvis.answered(509)
    assert "AI service" in failure.text and "try again" in failure.text
    jarvis.telegram.push_text(TOKEN, 509, "And now?")
    await jarvis.answered(509, 2)
    assert jarvis.answers(509)[-1].text == "Echo: And now?"
    assert [row[2] for row in await stored(509)] == [
        MessageStatus.FAILED,
        MessageStatus.FAILED,
        MessageStatus.COMPLETE,
        MessageStatus.COMPLETE,
    ]


async def test_group_answers_are_edited_more_slowly(jarvis: Running, monkeypatch):
    """In a group the growing answer is edited at most once every three seconds."""
    writes = bot_writes(monkeypatch, -100777)
    text = " ".join(f"word{i}" for i in range(40))
    jarvis.openai.enqueue(Behaviour(text=text, chunk_chars=20, chunk_delay=0.35))
    jarvis.telegram.push_text(TOKEN, -100777, f"@{USERNAME} tell me", user_id=77)
    [answer] = await jarvis.answered(-100777, timeout=20)
    assert answer.text == text
    assert len(writes) >= 2
    assert len(writes) == len([c for c in jarvis.telegram.calls() if c.chat_id == -100777 and c.method in WRITES])
    gaps = [b - a for a, b in itertools.pairwise(writes)]
    assert min(gaps) >= delivery.EDIT_INTERVAL_GROUP - 0.001, gaps


async def test_a_failing_handler_is_logged_and_the_person_told(jarvis: Running, caplog):
    """An unexpected Bot API error is logged first, then the person reads that something went wrong."""
    jarvis.telegram.fail_next("sendMessage", 400, description="Bad Request: something unexpected", chat_id=510)
    with caplog.at_level(logging.ERROR, logger="botapp.telegram.handlers"):
        jarvis.telegram.push_text(TOKEN, 510, "/caps boom")
        [answer] = await jarvis.answered(510)
    assert "something went wrong" in answer.text
    [record] = [r for r in caplog.records if r.name == "botapp.telegram.handlers"]
    assert "could not be handled" in record.getMessage() and record.exc_info is not None


async def test_the_summary_job_measures_the_translated_head_the_bot_sent(jarvis: Running):
    """A person whose Telegram speaks Chinese: the summary job measures the very head (Chinese heading) sent."""
    jarvis.telegram.push_text(TOKEN, 521, "你好", language_code="zh-hans")
    await jarvis.answered(521, 1)
    await Conversation.objects.filter(telegram_chat_id=521).aupdate(summary="用户在学习数字。")
    jarvis.telegram.push_text(TOKEN, 521, "第一个问题是什么？", language_code="zh-hans")
    await jarvis.answered(521, 2)

    [request] = [r for r in jarvis.openai.chat_requests() if r.body["messages"][-1]["content"] == "第一个问题是什么？"]
    sent = request.body["messages"]
    head = sent[: [message["role"] for message in sent].index("user")]
    assert head[-1] == {"role": "system", "content": "之前对话的摘要：\n用户在学习数字。"}
    conversation = await Conversation.objects.select_related("user", "persona").aget(telegram_chat_id=521)
    fit = await sync_to_async(history_fit)(conversation)
    assert fit.head == head
