"""The fake Telegram server, driven by the real python-telegram-bot over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InlineQueryResultArticle, InputTextMessageContent
from telegram.error import BadRequest, Conflict, InvalidToken, RetryAfter

from botapp.telegram.delivery import send_text
from tests.fakes.telegram_server import FakeTelegram, Pacing, TelegramHTMLError, parse_telegram_html

TOKEN = "111111:fake-primary-token-aaaaaaaaaaaaaaaa"
OTHER = "222222:fake-secondary-token-bbbbbbbbbbbbbb"
CHAT = 4242
REPO = Path(__file__).resolve().parent.parent

# PTB 22 warns that retry_after/duration will become timedeltas; `seconds()` handles both.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")


def fetch(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST JSON to) a local URL and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - a local http URL
        return json.load(response)


def seconds(value: int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTelegram]:
    with FakeTelegram(tokens=[TOKEN, OTHER]) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTelegram) -> Iterator[FakeTelegram]:
    server.reset()
    yield server
    server.reset()


@pytest_asyncio.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(**fake.bot_kwargs(TOKEN)) as bot:
        yield bot


# --- basics -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_me_returns_the_bot_user(fake: FakeTelegram) -> None:
    """getMe answers with the bot user registered for the token, which PTB accepts on initialize."""
    fake.add_bot(TOKEN, username="jarvis_test_bot")
    async with Bot(**fake.bot_kwargs(TOKEN)) as bot:
        me = await bot.get_me()
    assert me.id == 111111 and me.is_bot and me.username == "jarvis_test_bot"
    assert bot.username == "jarvis_test_bot"


@pytest.mark.asyncio
async def test_unknown_token_is_unauthorized(fake: FakeTelegram) -> None:
    """A token the server does not serve gets 401, which PTB turns into InvalidToken."""
    with pytest.raises(InvalidToken):
        async with Bot(**fake.bot_kwargs("999999:not-a-served-token-cccccccccc")):
            pass
    assert fake.calls("getMe")[-1].status == 401


@pytest.mark.asyncio
async def test_tokens_are_isolated(fake: FakeTelegram, bot: Bot) -> None:
    """Each token has its own bot user, update queue and chats."""
    fake.push_text(OTHER, CHAT, "for the other bot")
    assert await bot.get_updates(timeout=0) == ()
    async with Bot(**fake.bot_kwargs(OTHER)) as other:
        updates = await other.get_updates(timeout=0)
        assert [u.message.text for u in updates] == ["for the other bot"]
        await other.send_message(CHAT, "from other")
    assert fake.messages(TOKEN, CHAT) == []
    assert [m.text for m in fake.messages(OTHER, CHAT)] == ["from other"]


@pytest.mark.asyncio
async def test_send_and_edit_are_recorded_per_chat(fake: FakeTelegram, bot: Bot) -> None:
    """sendMessage/editMessageText keep the current text, parse mode and every version in the chat view."""
    sent = await bot.send_message(CHAT, "<b>Hello</b> &amp; welcome", parse_mode="HTML")
    assert sent.text == "Hello & welcome"
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [("bold", 0, 5)]
    edited = await bot.edit_message_text("Hello <i>again</i>", CHAT, sent.message_id, parse_mode="HTML")
    assert edited.text == "Hello again" and edited.edit_date is not None
    [message] = fake.messages(TOKEN, CHAT)
    assert message.message_id == sent.message_id and message.text == "Hello again"
    assert message.parse_mode == "HTML" and message.raw == "Hello <i>again</i>"
    assert message.history == ["<b>Hello</b> &amp; welcome", "Hello <i>again</i>"] and message.edits == 1
    call = fake.calls("sendMessage")[-1]
    assert call.params["chat_id"] == CHAT and call.params["parse_mode"] == "HTML" and call.chat_id == CHAT


@pytest.mark.asyncio
async def test_delete_hides_message_and_second_delete_fails(fake: FakeTelegram, bot: Bot) -> None:
    """deleteMessage removes the message from the chat view; deleting it again is Telegram's 400."""
    sent = await bot.send_message(CHAT, "bye")
    assert await bot.delete_message(CHAT, sent.message_id)
    assert fake.messages(TOKEN, CHAT) == []
    assert fake.messages(TOKEN, CHAT, include_deleted=True)[0].deleted
    with pytest.raises(BadRequest, match=r"(?i)message to delete not found"):
        await bot.delete_message(CHAT, sent.message_id)


@pytest.mark.asyncio
async def test_reply_markup_and_reply_are_echoed(fake: FakeTelegram, bot: Bot) -> None:
    """An inline keyboard and a reply target come back in the Message the way Telegram returns them."""
    update = fake.push_text(TOKEN, CHAT, "question")
    asked = update["message"]["message_id"]
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Again", callback_data="again")]])
    sent = await bot.send_message(CHAT, "answer", reply_markup=keyboard, reply_to_message_id=asked)
    assert sent.reply_markup == keyboard
    assert sent.reply_to_message is not None and sent.reply_to_message.text == "question"
    with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
        await bot.send_message(CHAT, "answer", reply_to_message_id=9999)


@pytest.mark.asyncio
async def test_chat_action_commands_webhook_and_unknown_methods(fake: FakeTelegram, bot: Bot) -> None:
    """sendChatAction, setMyCommands/getMyCommands, webhook methods and unknown methods all answer ok."""
    assert await bot.send_chat_action(CHAT, "typing")
    with pytest.raises(BadRequest):
        await bot.send_chat_action(CHAT, "dancing")
    assert await bot.set_my_commands([("start", "Start"), ("new", "New chat")], language_code="en")
    assert [c.command for c in await bot.get_my_commands(language_code="en")] == ["start", "new"]
    assert fake.commands(TOKEN, language_code="en")[1] == {"command": "new", "description": "New chat"}
    assert await bot.get_my_commands() == ()
    assert await bot.set_webhook("https://example.com/hook")
    assert (await bot.get_webhook_info()).url == "https://example.com/hook"
    with pytest.raises(Conflict):
        await bot.get_updates(timeout=0)
    assert await bot.delete_webhook()
    assert await bot.do_api_request("someFutureMethod", api_kwargs={"flag": True, "name": "x"})
    assert fake.calls("someFutureMethod")[0].params == {"flag": True, "name": "x"}
    assert await bot.close() and await bot.log_out()


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fail_next_429_raises_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    """fail_next(status=429) answers like Telegram's flood control and PTB raises RetryAfter(retry_after)."""
    fake.fail_next("sendMessage", status=429, retry_after=2)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(CHAT, "hi")
    assert seconds(caught.value.retry_after) == 2
    call = fake.calls("sendMessage")[-1]
    assert call.status == 429
    assert call.response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 2",
        "parameters": {"retry_after": 2},
    }
    assert (await bot.send_message(CHAT, "hi")).text == "hi"  # only the next call failed
    assert fake.too_many_requests_count == 1


@pytest.mark.asyncio
async def test_fail_next_targets_chat_and_count(fake: FakeTelegram, bot: Bot) -> None:
    """fail_next can target one chat and several calls; other chats are unaffected."""
    fake.fail_next("sendMessage", status=429, retry_after=5, times=2, chat_id=CHAT)
    assert (await bot.send_message(CHAT + 1, "elsewhere")).text == "elsewhere"
    for _ in range(2):
        with pytest.raises(RetryAfter):
            await bot.send_message(CHAT, "hi")
    assert (await bot.send_message(CHAT, "hi")).text == "hi"


@pytest.mark.asyncio
async def test_fail_next_400_parse_error_raises_bad_request(fake: FakeTelegram, bot: Bot) -> None:
    """fail_next(status=400, description=...) reaches PTB as BadRequest with Telegram's words."""
    description = 'Bad Request: can\'t parse entities: Unsupported start tag "x" at byte offset 3'
    fake.fail_next("editMessageText", status=400, description=description)
    sent = await bot.send_message(CHAT, "start")
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
        await bot.edit_message_text("<b>ok</b>", CHAT, sent.message_id, parse_mode="HTML")


@pytest.mark.asyncio
async def test_invalid_html_is_rejected_like_telegram(fake: FakeTelegram, bot: Bot) -> None:
    """Really invalid HTML gets Telegram's 400 "can't parse entities" with its reason and byte offset."""
    with pytest.raises(BadRequest, match=r'(?i)unsupported start tag "script" at byte offset 4'):
        await bot.send_message(CHAT, "hey <script>x</script>", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)can't find end tag corresponding to start tag b"):
        await bot.send_message(CHAT, "<b>open", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r'(?i)unsupported start tag "" at byte offset 2'):
        await bot.send_message(CHAT, "a < b", parse_mode="HTML")
    assert all(call.status == 400 for call in fake.calls("sendMessage"))
    assert fake.messages(TOKEN, CHAT) == []
    assert (await bot.send_message(CHAT, "a < b")).text == "a < b"  # the plain fallback is fine


@pytest.mark.asyncio
async def test_message_length_and_empty_text(fake: FakeTelegram, bot: Bot) -> None:
    """4096 visible characters pass even with longer HTML; 4097 are "message is too long"; blank is empty."""
    sent = await bot.send_message(CHAT, "<b>" + "&amp;" * 4096 + "</b>", parse_mode="HTML")
    assert len(sent.text) == 4096
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(CHAT, "x" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await bot.send_message(CHAT, "<b> </b>\n", parse_mode="HTML")


@pytest.mark.asyncio
async def test_edit_to_same_content_is_not_modified(fake: FakeTelegram, bot: Bot) -> None:
    """Editing to identical text and markup is Telegram's "message is not modified" 400."""
    sent = await bot.send_message(CHAT, "<b>same</b>", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)message is not modified: specified new message content"):
        await bot.edit_message_text("<b>same</b>", CHAT, sent.message_id, parse_mode="HTML")
    # Same visible text with different formatting is a real change.
    await bot.edit_message_text("same", CHAT, sent.message_id)
    assert fake.messages(TOKEN, CHAT)[0].edits == 1


@pytest.mark.asyncio
async def test_flood_control_emulation_counts_429s(fake: FakeTelegram, bot: Bot) -> None:
    """set_rate_limit answers 429 to writes in a chat that come faster than min_interval, and counts them."""
    # A second is far more than the next call needs to arrive; the wait after the 429 only ever runs longer.
    fake.set_rate_limit(chat_id=CHAT, min_interval=1.0)
    sent = await bot.send_message(CHAT, "one")
    with pytest.raises(RetryAfter) as caught:
        await bot.edit_message_text("two", CHAT, sent.message_id)
    assert seconds(caught.value.retry_after) == 1
    assert (await bot.send_message(CHAT + 1, "other chat is free")).text
    await asyncio.sleep(1.05)
    await bot.edit_message_text("two", CHAT, sent.message_id)
    assert fake.too_many_requests_count == 1
    assert [call.status for call in fake.calls("editMessageText")] == [429, 200]


@pytest.mark.asyncio
async def test_pacing_answers_429_beyond_telegrams_limits(fake: FakeTelegram, bot: Bot) -> None:
    """With pacing, a second send to a chat within its interval, or one beyond the bot's rate, gets 429 retry_after."""
    fake.set_pacing(Pacing(per_second=3, chat_interval=60.0))
    try:
        await bot.send_message(CHAT, "first")
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(CHAT, "too soon in this chat")
        assert seconds(caught.value.retry_after) >= 59
        for offset in (1, 2):
            await bot.send_message(CHAT + offset, "other chats are free")
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(CHAT + 3, "a fourth within the second")
        assert seconds(caught.value.retry_after) == 1
        refused = fake.calls("sendMessage")[-1]
        assert refused.response["parameters"] == {"retry_after": 1}
        assert refused.response["description"] == "Too Many Requests: retry after 1"
        async with Bot(**fake.bot_kwargs(OTHER)) as other:  # each bot has its own allowance
            assert (await other.send_message(CHAT, "another bot")).text == "another bot"
    finally:
        fake.set_pacing(None)
    assert (await bot.send_message(CHAT, "unpaced")).text == "unpaced"
    assert fake.too_many_requests_count == 2


@pytest.mark.asyncio
async def test_jarvis_delivery_waits_out_pacing_and_delivers_everything(fake: FakeTelegram, bot: Bot) -> None:
    """A burst to more chats than the bot's rate allows is answered 429, waited out, and every message arrives."""
    fake.set_pacing(Pacing(per_second=4, chat_interval=1.0))
    chats = [CHAT + i for i in range(10)]
    try:
        await asyncio.gather(
            *(send_text(bot, chat_id=chat, html=f"<b>to {chat}</b>", plain=f"to {chat}") for chat in chats),
            *(send_text(bot, chat_id=CHAT, html=f"again {n}", plain=f"again {n}") for n in range(2)),
        )
    finally:
        fake.set_pacing(None)
    assert fake.too_many_requests_count > 0
    for chat in chats[1:]:
        assert [m.text for m in fake.messages(TOKEN, chat)] == [f"to {chat}"]
    assert sorted(m.text for m in fake.messages(TOKEN, CHAT)) == [f"again {n}" for n in range(2)] + [f"to {CHAT}"]
    assert len([call for call in fake.calls("sendMessage") if call.status == 200]) == len(chats) + 2


# --- updates ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_updates_offset_confirms(fake: FakeTelegram, bot: Bot) -> None:
    """Updates stay queued until getUpdates is called with an offset above their update_id."""
    for text in ("one", "two", "three"):
        fake.push_text(TOKEN, CHAT, text)
    first = await bot.get_updates(timeout=0)
    assert [u.message.text for u in first] == ["one", "two", "three"]
    again = await bot.get_updates(timeout=0)
    assert [u.update_id for u in again] == [u.update_id for u in first]  # not confirmed yet
    partly = await bot.get_updates(offset=first[1].update_id, timeout=0)
    assert [u.message.text for u in partly] == ["two", "three"]
    assert await bot.get_updates(offset=first[-1].update_id + 1, timeout=0) == ()
    assert fake.pending_updates(TOKEN) == []


@pytest.mark.asyncio
async def test_long_poll_returns_early_when_update_arrives(fake: FakeTelegram, bot: Bot) -> None:
    """A long poll waits for `timeout` but answers as soon as an update is pushed."""
    asyncio.get_running_loop().call_later(0.3, fake.push_text, TOKEN, CHAT, "late")
    started = time.monotonic()
    updates = await bot.get_updates(timeout=60, read_timeout=90)
    elapsed = time.monotonic() - started
    assert [u.message.text for u in updates] == ["late"]
    # A poll that waited for its timeout would take 60 s; one that answered before the push, under 0.3 s.
    assert 0.25 <= elapsed < 30


@pytest.mark.asyncio
async def test_long_poll_times_out_empty(fake: FakeTelegram, bot: Bot) -> None:
    """With nothing to deliver a long poll answers [] after about `timeout` seconds."""
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()
    # Far below the 30 s that would mean the poll hung.
    assert 0.9 <= time.monotonic() - started < 30


@pytest.mark.asyncio
async def test_second_poller_terminates_the_first(fake: FakeTelegram, bot: Bot) -> None:
    """A second concurrent getUpdates makes the first fail with 409 Conflict, as when two bots share a token."""
    polls = fake.polls_started(TOKEN)
    first = asyncio.create_task(bot.get_updates(timeout=5))
    deadline = time.monotonic() + 30
    while fake.polls_started(TOKEN) == polls:  # until the first poll is waiting at the fake
        assert time.monotonic() < deadline, "the first getUpdates never reached the fake"
        await asyncio.sleep(0.01)
    async with Bot(**fake.bot_kwargs(TOKEN)) as twin:
        second = asyncio.create_task(twin.get_updates(timeout=5))
        with pytest.raises(Conflict, match="terminated by other getUpdates request"):
            await first
        fake.push_text(TOKEN, CHAT, "to the survivor")
        assert [u.message.text for u in await second] == ["to the survivor"]


@pytest.mark.asyncio
async def test_duplicate_update_is_delivered_again(fake: FakeTelegram, bot: Bot) -> None:
    """push_update with an already confirmed update_id is delivered once more (for dedup tests)."""
    original = fake.push_text(TOKEN, CHAT, "once")
    [update] = await bot.get_updates(timeout=0)
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()
    fake.push_update(TOKEN, original)
    [duplicate] = await bot.get_updates(offset=update.update_id + 1, timeout=0)
    assert duplicate.update_id == update.update_id and duplicate.message.text == "once"


@pytest.mark.asyncio
async def test_pushed_text_has_command_and_mention_entities(fake: FakeTelegram, bot: Bot) -> None:
    """push_text marks a leading /command and @mentions with UTF-16 offsets, and fills sender and chat."""
    fake.push_text(TOKEN, -100500, "/ask@jarvis_bot 😀 hi @alice", user_id=77, username="bob", language_code="de")
    [update] = await bot.get_updates(timeout=0)
    message = update.message
    assert message.chat.type == "supergroup" and message.from_user.id == 77
    assert message.from_user.language_code == "de" and message.from_user.username == "bob"
    assert message.parse_entities() == {
        message.entities[0]: "/ask@jarvis_bot",
        message.entities[1]: "@alice",
    }
    assert [e.type for e in message.entities] == ["bot_command", "mention"]


@pytest.mark.asyncio
async def test_callback_and_inline_queries(fake: FakeTelegram, bot: Bot) -> None:
    """Callback and inline queries are delivered with their message/sender and can be answered."""
    sent = await bot.send_message(CHAT, "pick", reply_markup=InlineKeyboardMarkup.from_button(
        InlineKeyboardButton("A", callback_data="a")
    ))  # fmt: skip
    fake.push_callback_query(TOKEN, CHAT, sent.message_id, "a")
    fake.push_inline_query(TOKEN, "weather", user_id=5)
    callback, inline = await bot.get_updates(timeout=0)
    assert callback.callback_query.data == "a" and callback.callback_query.message.text == "pick"
    assert inline.inline_query.query == "weather" and inline.inline_query.from_user.id == 5
    assert await bot.answer_callback_query(callback.callback_query.id, text="ok")
    result = InlineQueryResultArticle("1", "Sunny", InputTextMessageContent("Sunny"))
    assert await bot.answer_inline_query(inline.inline_query.id, [result])
    assert fake.calls("answerInlineQuery")[0].params["results"][0]["title"] == "Sunny"


# --- files --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_voice_file_download(fake: FakeTelegram, bot: Bot) -> None:
    """A pushed voice message's file is downloadable through getFile and the file route, byte for byte."""
    data = bytes(range(256)) * 40
    fake.push_voice(TOKEN, CHAT, data, duration=4, mime_type="audio/ogg")
    [update] = await bot.get_updates(timeout=0)
    voice = update.message.voice
    assert seconds(voice.duration) == 4 and voice.mime_type == "audio/ogg" and voice.file_size == len(data)
    file = await bot.get_file(voice.file_id)
    assert file.file_path.endswith(".oga")
    assert bytes(await file.download_as_bytearray()) == data
    assert fake.calls("downloadFile")[0].ok


@pytest.mark.asyncio
async def test_other_media_pushes(fake: FakeTelegram, bot: Bot) -> None:
    """Audio, video notes, photos, documents, stickers and locations arrive with the fields PTB needs."""
    fake.push_audio(TOKEN, CHAT, b"ID3", duration=2, title="Song")
    fake.push_video_note(TOKEN, CHAT, b"mp4", duration=3)
    fake.push_photo(TOKEN, CHAT, b"\xff\xd8jpeg", caption="look @alice")
    fake.push_document(TOKEN, CHAT, b"%PDF", file_name="a.pdf", mime_type="application/pdf")
    fake.push_sticker(TOKEN, CHAT, emoji="🔥")
    fake.push_location(TOKEN, CHAT, 52.5, 13.4)
    audio, note, photo, document, sticker, location = (u.message for u in await bot.get_updates(timeout=0))
    assert audio.audio.title == "Song" and note.video_note.length == 240
    assert photo.caption == "look @alice" and photo.caption_entities[0].type == "mention"
    assert bytes(await (await bot.get_file(photo.photo[-1].file_id)).download_as_bytearray()) == b"\xff\xd8jpeg"
    assert document.document.file_name == "a.pdf" and sticker.sticker.emoji == "🔥"
    assert location.location.latitude == 52.5


@pytest.mark.asyncio
async def test_big_file_is_refused_by_get_file(fake: FakeTelegram, bot: Bot) -> None:
    """getFile refuses files over 20 MB like Telegram ("file is too big"); the size can be declared cheaply."""
    fake.push_voice(TOKEN, CHAT, b"tiny", duration=1, file_size=21 * 1024 * 1024)
    [update] = await bot.get_updates(timeout=0)
    with pytest.raises(BadRequest, match=r"(?i)file is too big"):
        await bot.get_file(update.message.voice.file_id)
    with pytest.raises(BadRequest, match=r"(?i)invalid file_id"):
        await bot.get_file("nope")


@pytest.mark.asyncio
async def test_bot_uploads_are_stored(fake: FakeTelegram, bot: Bot) -> None:
    """Media the bot sends (multipart uploads) are recorded and appear in the chat with their caption."""
    sent = await bot.send_voice(CHAT, b"OggS-voice", caption="<i>spoken</i>", parse_mode="HTML", duration=2)
    assert sent.voice is not None and sent.caption == "spoken"
    upload = fake.calls("sendVoice")[0].params["voice"]
    assert upload.data == b"OggS-voice"
    [message] = fake.messages(TOKEN, CHAT)
    assert message.kind == "voice" and message.text == "spoken"


# --- waiting, threads and processes -------------------------------------------------------------


def test_wait_for_from_a_sync_test(fake: FakeTelegram) -> None:
    """wait_for blocks a synchronous test until a bot running in another thread has replied."""

    async def reply() -> None:
        async with Bot(**fake.bot_kwargs(TOKEN)) as bot:
            await asyncio.sleep(0.2)
            await bot.send_message(CHAT, "from a thread")

    worker = threading.Thread(target=asyncio.run, args=(reply(),))
    worker.start()
    messages = fake.wait_for_messages(TOKEN, CHAT, count=1, timeout=10)
    worker.join()
    assert messages[0].text == "from a thread"
    with pytest.raises(TimeoutError):
        fake.wait_for(lambda: len(fake.messages(TOKEN, CHAT)) > 1, timeout=0.2)


@pytest.mark.asyncio
async def test_await_for_in_an_async_test(fake: FakeTelegram, bot: Bot) -> None:
    """await_for waits without blocking the event loop the bot itself runs in."""

    async def later() -> None:
        await asyncio.sleep(0.2)
        await bot.send_message(CHAT, "later")

    task = asyncio.create_task(later())
    calls = await fake.await_for(lambda: fake.calls("sendMessage"), timeout=5)
    await task
    assert calls[0].params["text"] == "later"


def test_bot_in_a_subprocess(fake: FakeTelegram) -> None:
    """A bot in a separate process talks to the fake over HTTP; the test sees its replies."""
    fake.push_text(TOKEN, CHAT, "ping")
    script = textwrap.dedent(
        f"""
        import asyncio
        from telegram import Bot

        async def main():
            async with Bot({TOKEN!r}, base_url={fake.root_url + "/bot"!r}) as bot:
                [update] = await bot.get_updates(timeout=5)
                await bot.send_message(update.message.chat_id, "pong: " + update.message.text)
                await bot.get_updates(offset=update.update_id + 1, timeout=0)

        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=REPO)
    assert [m.text for m in fake.wait_for_messages(TOKEN, CHAT)] == ["pong: ping"]
    assert fake.pending_updates(TOKEN) == []


def test_cli_serves_and_accepts_control_requests() -> None:
    """`python -m tests.fakes.telegram_server` prints its URL, serves the token and takes pushes over HTTP."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.telegram_server", "--port", "0", "--token", TOKEN],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        root = process.stdout.readline().strip()
        assert root.startswith("http://127.0.0.1:")
        assert fetch(f"{root}/bot{TOKEN}/getMe")["result"]["id"] == 111111
        pushed = fetch(f"{root}/_fake/push_text", {"token": TOKEN, "chat_id": 5, "text": "hi"})
        assert pushed["result"]["message"]["text"] == "hi"
        assert fetch(f"{root}/bot{TOKEN}/getUpdates")["result"][0]["message"]["text"] == "hi"
        assert len(fetch(f"{root}/_fake/calls?method=getUpdates")) == 1
    finally:
        process.terminate()
        process.wait(10)


# --- the HTML parser itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "text", "entities"),
    [
        ("<b>bold</b> <strong>x</strong>", "bold x", [("bold", 0, 4), ("bold", 5, 1)]),
        ("<i>a</i><em>b</em><u>c</u><ins>d</ins>", "abcd", [("italic", 0, 1), ("italic", 1, 1),
                                                           ("underline", 2, 1), ("underline", 3, 1)]),
        ("<s>a</s><strike>b</strike><del>c</del>", "abc", [("strikethrough", i, 1) for i in range(3)]),
        ('<span class="tg-spoiler">s</span><tg-spoiler>t</tg-spoiler>', "st", [("spoiler", 0, 1), ("spoiler", 1, 1)]),
        ('<a href="https://x.org/?a=1&amp;b=2">link</a>', "link", [("text_link", 0, 4)]),
        ("<code>c</code>", "c", [("code", 0, 1)]),
        ('<pre><code class="language-python">p</code></pre>', "p", [("pre", 0, 1)]),
        ("<blockquote>q</blockquote><blockquote expandable>r</blockquote>", "qr",
         [("blockquote", 0, 1), ("expandable_blockquote", 1, 1)]),
        ("😀<b>x</b>", "😀x", [("bold", 2, 1)]),
        ("&lt;&gt;&amp;&quot;&#65;&#x42;", '<>&"AB', []),
        ("<B>upper</B>", "upper", [("bold", 0, 5)]),
        ('<a href="javascript:alert(1)">js</a>', "js", []),
    ],
)  # fmt: skip
def test_parser_accepts_telegram_html(html: str, text: str, entities: list[tuple[str, int, int]]) -> None:
    """Every tag Telegram supports parses into the right visible text and entities (UTF-16 offsets)."""
    visible, found = parse_telegram_html(html)
    assert visible == text
    assert [(e["type"], e["offset"], e["length"]) for e in found] == entities


def test_parser_keeps_link_and_language_arguments() -> None:
    """Links keep their decoded URL and pre blocks their language."""
    _, entities = parse_telegram_html(
        '<a href="https://x.org/?a=1&amp;b=&quot;2&quot;">l</a><pre><code class="language-c++">x</code></pre>'
    )
    assert entities[0]["url"] == 'https://x.org/?a=1&b="2"'
    assert entities[1] == {"type": "pre", "offset": 1, "length": 1, "language": "c++"}


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("<br>", 'Unsupported start tag "br" at byte offset 0'),
        ("x <b>y", "Can't find end tag corresponding to start tag b"),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<b", "Unclosed start tag at byte offset 0"),
        ("<b>x</b", "Unclosed end tag at byte offset 4"),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ('<a href="x>y</a>', "Unclosed start tag at byte offset 0"),
        ("<a href>x</a>", 'Expected equal sign in declaration of an attribute of the tag "a" at byte offset 0'),
        ("<a href=x/y>z</a>", "Unexpected end of name token at byte offset 8"),
        ("é<x>", 'Unsupported start tag "x" at byte offset 2'),
        ('<tg-emoji emoji-id="abc">🙂</tg-emoji>', "Invalid custom emoji identifier specified"),
        ("&#xD83D;", "Text contains invalid Unicode characters after decoding HTML entities"),
    ],
)
def test_parser_rejects_what_telegram_rejects(html: str, reason: str) -> None:
    """Invalid markup is refused with TDLib's own wording and UTF-8 byte offsets."""
    with pytest.raises(TelegramHTMLError) as caught:
        parse_telegram_html(html, strict=False)
    assert str(caught.value).startswith(reason)


def test_strict_mode_requires_escaping() -> None:
    """Telegram forgives a bare & or >, strict mode (the default) does not; both refuse a bare <."""
    assert parse_telegram_html("a & b > c", strict=False)[0] == "a & b > c"
    for text in ("a & b", "b > c", "AT&T"):
        with pytest.raises(TelegramHTMLError, match="Unescaped"):
            parse_telegram_html(text)
    with pytest.raises(TelegramHTMLError):
        parse_telegram_html("a < b", strict=False)
