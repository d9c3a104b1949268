"""Getting answers to a Telegram chat: HTML with a plain fallback, flood control, answers streamed as they come,
tool status lines, pictures (as photos, or as documents when too large for one) and voice notes.

In a private chat an answer streams as a native draft (`sendMessageDraft`, Bot API 9.5), then is sent whole;
in groups, and on Bot API servers without drafts, it streams into a message edited about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from telegram import Bot as TelegramBot
from telegram import Message as TelegramMessage
from telegram import ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TimedOut

from botapp.telegram.formatting import render_parts

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Telegram allows about one message a second per chat, and about twenty a minute in a group.
EDIT_INTERVAL_PRIVATE = 1.0
EDIT_INTERVAL_GROUP = 3.0
# Telegram animates a draft from one text to the next, so once a second reads as smoothly as more often would,
# for no more Bot API calls than the edits it replaces (bench/telegram_calls.py: twice a second nearly doubled them).
DRAFT_INTERVAL = 1.0
# A "typing…" action shows for five seconds; renew it a little before it fades.
TYPING_INTERVAL = 4.0
# An answer ready sooner than this needs no "typing…": nobody could see it before the answer replaced it.
TYPING_DELAY = 0.2
# How long the first words wait for the rest before a preview is shown ("typing…" shows meanwhile).
FIRST_SHOW_DELAY = 0.3
# Network hiccups are retried this many times; flood control is always waited out.
NETWORK_ATTEMPTS = 3
# The longest flood-control wait honoured for one call; Telegram rarely asks for more than a minute.
MAX_FLOOD_WAIT = 120.0
FLOOD_WAIT_MARGIN = 0.1
# What Telegram takes as a photo (sendPhoto); a bigger picture goes as a document, which has none of these.
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDES = 10000
PHOTO_MAX_RATIO = 20
CAPTION_LIMIT = 1024


def telegram_seconds(value: int | float | dt.timedelta) -> float:
    """A span python-telegram-bot gives as seconds or as a timedelta (a flood wait, a recording's length)."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


def _is_parse_error(exc: BadRequest) -> bool:
    text = exc.message.lower()
    return "can't parse entities" in text or "can't find end" in text or "unsupported start tag" in text


def _is_not_modified(exc: BadRequest) -> bool:
    return "message is not modified" in exc.message.lower()


class DraftsUnsupported(Exception):
    """The Bot API server has no sendMessageDraft (older than Bot API 9.5): stream by edits instead."""


# Bot API endpoints (server and token) that said they have no drafts: asked once per process, not per answer.
_servers_without_drafts: set[str] = set()


async def telegram_call(call: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run one Bot API call, waiting out flood control (429) and retrying brief network failures."""
    network_failures = 0
    flood_waited = 0.0
    while True:
        try:
            return await call()
        except RetryAfter as exc:
            wait = telegram_seconds(exc.retry_after) + FLOOD_WAIT_MARGIN
            flood_waited += wait
            if flood_waited > MAX_FLOOD_WAIT:
                raise
            logger.info("Flood control on %s: waiting %.1f s as Telegram asks", what, wait)
            await asyncio.sleep(wait)
        except TimedOut:
            # A timed-out call may have gone through; repeating a send could show it twice, so only once more.
            network_failures += 1
            if network_failures >= 2:
                raise
            await asyncio.sleep(0.5)
        except NetworkError as exc:
            if isinstance(exc, BadRequest):
                raise
            network_failures += 1
            if network_failures >= NETWORK_ATTEMPTS:
                raise
            await asyncio.sleep(0.5 * network_failures)


async def send_text(
    bot: TelegramBot,
    *,
    chat_id: int,
    html: str,
    plain: str,
    reply_to: int | None = None,
) -> TelegramMessage:
    """Send one message as HTML; when Telegram cannot parse the entities, send the same text plain."""
    reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
    try:
        return await telegram_call(
            lambda: bot.send_message(chat_id=chat_id, text=html, parse_mode=ParseMode.HTML, reply_parameters=reply),
            what="sendMessage",
        )
    except BadRequest as exc:
        if not _is_parse_error(exc):
            raise
        logger.info("Telegram rejected the HTML of a message (%s): sending it as plain text", exc.message)
    return await telegram_call(
        lambda: bot.send_message(chat_id=chat_id, text=plain, reply_parameters=reply), what="sendMessage"
    )


async def edit_text(bot: TelegramBot, *, chat_id: int, message_id: int, html: str, plain: str) -> None:
    """Replace a message's text, HTML first then plain; an edit that changes nothing is not an error."""
    try:
        await telegram_call(
            lambda: bot.edit_message_text(chat_id=chat_id, message_id=message_id, text=html, parse_mode=ParseMode.HTML),
            what="editMessageText",
        )
        return
    except BadRequest as exc:
        if _is_not_modified(exc):
            return
        if not _is_parse_error(exc):
            raise
        logger.info("Telegram rejected the HTML of an edit (%s): sending it as plain text", exc.message)
    try:
        await telegram_call(
            lambda: bot.edit_message_text(chat_id=chat_id, message_id=message_id, text=plain), what="editMessageText"
        )
    except BadRequest as exc:
        if not _is_not_modified(exc):
            raise


async def send_draft(bot: TelegramBot, *, chat_id: int, draft_id: int, html: str, plain: str) -> None:
    """Show text as the private chat's draft, HTML first then plain; DraftsUnsupported if the server has none."""
    try:
        try:
            await telegram_call(
                lambda: bot.send_message_draft(
                    chat_id=chat_id, draft_id=draft_id, text=html, parse_mode=ParseMode.HTML
                ),
                what="sendMessageDraft",
            )
            return
        except BadRequest as exc:
            if not _is_parse_error(exc):
                raise
            logger.info("Telegram rejected the HTML of a draft (%s): sending it as plain text", exc.message)
        await telegram_call(
            lambda: bot.send_message_draft(chat_id=chat_id, draft_id=draft_id, text=plain), what="sendMessageDraft"
        )
    except InvalidToken as exc:
        # Unknown methods are a 404 "Not Found", which python-telegram-bot reports as InvalidToken.
        raise DraftsUnsupported(str(exc)) from exc
    except BadRequest as exc:
        if "not found" in exc.message.lower() or "unknown method" in exc.message.lower():
            raise DraftsUnsupported(exc.message) from exc
        raise


async def send_sentence(bot: TelegramBot, *, chat_id: int, text: str, reply_to: int | None = None) -> TelegramMessage:
    """Send a sentence Jarvis wrote itself (no Markdown), honouring flood control."""
    reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
    return await telegram_call(
        lambda: bot.send_message(chat_id=chat_id, text=text, reply_parameters=reply), what="sendMessage"
    )


async def send_parts(bot: TelegramBot, *, chat_id: int, text: str, reply_to: int | None = None) -> list[int]:
    """Send Markdown text as one message per rendered part (the first replying to `reply_to`); their ids."""
    ids = []
    for index, (html, plain) in enumerate(render_parts(text)):
        sent = await send_text(bot, chat_id=chat_id, html=html, plain=plain, reply_to=reply_to if index == 0 else None)
        ids.append(sent.message_id)
    return ids


@contextlib.asynccontextmanager
async def chat_action(bot: TelegramBot, *, chat_id: int, action: str) -> AsyncIterator[None]:
    """Show `action` ("upload_photo", "record_voice") in the chat, renewed until the work inside is done."""

    async def keep() -> None:
        while True:
            try:
                await bot.send_chat_action(chat_id=chat_id, action=action)
            except RetryAfter as exc:
                await asyncio.sleep(telegram_seconds(exc.retry_after))
                continue
            except NetworkError as exc:
                logger.debug("Could not show %s in chat %s: %s", action, chat_id, exc)
            await asyncio.sleep(TYPING_INTERVAL)

    task = asyncio.create_task(keep())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def fits_as_photo(*, size_bytes: int, width: int | None, height: int | None) -> bool:
    """Whether Telegram accepts a picture as a photo: at most 10 MB, sides adding up to 10000, ratio 20."""
    if size_bytes > PHOTO_MAX_BYTES or not width or not height:
        return size_bytes <= PHOTO_MAX_BYTES
    return width + height <= PHOTO_MAX_SIDES and max(width, height) <= PHOTO_MAX_RATIO * min(width, height)


def _caption(text: str) -> str:
    return text if len(text) <= CAPTION_LIMIT else text[: CAPTION_LIMIT - 1] + "…"


async def send_picture(
    bot: TelegramBot,
    *,
    chat_id: int,
    data: bytes,
    filename: str,
    caption: str,
    width: int | None,
    height: int | None,
    reply_to: int | None = None,
) -> TelegramMessage:
    """Send a picture as a photo with its caption (plain text); one Telegram would refuse as a photo goes as a
    document, so the person gets it either way (and in full resolution)."""
    reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
    caption = _caption(caption)
    if fits_as_photo(size_bytes=len(data), width=width, height=height):
        try:
            return await telegram_call(
                lambda: bot.send_photo(
                    chat_id=chat_id, photo=data, filename=filename, caption=caption, reply_parameters=reply
                ),
                what="sendPhoto",
            )
        except BadRequest as exc:
            if "photo" not in exc.message.lower():
                raise
            logger.info("Telegram refused a picture as a photo (%s): sending it as a document", exc.message)
    return await telegram_call(
        lambda: bot.send_document(
            chat_id=chat_id, document=data, filename=filename, caption=caption, reply_parameters=reply
        ),
        what="sendDocument",
    )


async def send_voice_note(
    bot: TelegramBot,
    *,
    chat_id: int,
    data: bytes,
    duration: int | None,
    caption: tuple[str, str] | None = None,
    reply_to: int | None = None,
) -> TelegramMessage:
    """Send OGG/Opus audio as a voice note; `caption` is (HTML, plain), the plain one used if the HTML is refused."""
    reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
    html, plain = caption or (None, None)

    def voice(text: str | None, mode: str | None) -> Awaitable[TelegramMessage]:
        return bot.send_voice(
            chat_id=chat_id,
            voice=data,
            filename="answer.ogg",
            duration=duration,
            caption=text,
            parse_mode=mode,
            reply_parameters=reply,
        )

    try:
        return await telegram_call(lambda: voice(html, ParseMode.HTML if html else None), what="sendVoice")
    except BadRequest as exc:
        if not html or not _is_parse_error(exc):
            raise
        logger.info("Telegram rejected the HTML of a voice caption (%s): sending it as plain text", exc.message)
    return await telegram_call(lambda: voice(plain, None), what="sendVoice")


class ToolProgress(Protocol):
    """What the status line needs of a tool event: whether the call starts or ends, and its label."""

    state: str
    label: str


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()#+\-.!<>|~{}])")


def status_line(label: str) -> str:
    """A tool's status as an italic line of Markdown; the label (which quotes the model) is escaped."""
    return "_⏳ " + _MARKDOWN_SPECIAL.sub(r"\\\1", label) + "_"


@dataclass
class _Shown:
    message_id: int
    html: str | None  # None: unknown (a message from before a restart)


class AnswerStream:
    """One answer shown as it is written: "typing…" until the first words, then a draft or throttled edits.

    "typing…" starts after `TYPING_DELAY`, so an answer that is ready at once costs no extra call.

    The answer's Markdown is rendered to parts of at most 4096 characters; each part is one message. With
    `draft` (private chats), the part being written is the chat's draft and becomes a message once it is
    complete, so the chat gets each message once, whole. Without, each part is a message edited while it
    grows and left alone once the next part starts. `message_ids` lists the messages of the answer so far
    (for example one started before a restart, which is then edited instead of repeated); `on_new_message`
    hears of every message added, so a restart knows them too.
    """

    def __init__(
        self,
        bot: TelegramBot,
        *,
        chat_id: int,
        reply_to: int | None,
        interval: float = EDIT_INTERVAL_PRIVATE,
        message_ids: Sequence[int] = (),
        on_new_message: Callable[[list[int]], Awaitable[None]] | None = None,
        draft: bool = False,
    ) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.reply_to = reply_to
        self.draft = draft and bot.base_url not in _servers_without_drafts
        self.edit_interval = interval
        self.interval = DRAFT_INTERVAL if self.draft else interval
        # Drafts with one id animate from one text to the next; each part of the answer gets its own.
        self._draft_base = secrets.randbelow(2**30) + 1
        self._drafted = False
        self.shown = [_Shown(message_id, None) for message_id in message_ids]
        self.on_new_message = on_new_message
        self.text = ""
        # The status line of a tool that runs, shown under the answer so far until new words replace it.
        self.status: str | None = None
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._io = asyncio.Lock()
        self._last_write = 0.0
        self._typing_task: asyncio.Task[None] | None = None
        self._flusher_task: asyncio.Task[None] | None = None

    @property
    def message_ids(self) -> list[int]:
        return [shown.message_id for shown in self.shown]

    async def __aenter__(self) -> AnswerStream:
        self._typing_task = asyncio.create_task(self._typing())
        self._flusher_task = asyncio.create_task(self._flusher())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def on_delta(self, _delta: str, text: str) -> None:
        """The funnel's callback: remember the answer so far; the flusher shows it when the chat may be edited."""
        self.text = text
        self.status = None
        self._changed.set()

    async def on_tool(self, event: ToolProgress) -> None:
        """The funnel's tool callback: a starting call's status line shows until the answer goes on."""
        if event.state == "running":
            self.status = status_line(event.label)
            self._changed.set()

    def _current(self) -> str:
        if self.status is None:
            return self.text
        return f"{self.text.rstrip()}\n\n{self.status}" if self.text.strip() else self.status

    async def finish(self, text: str) -> list[int]:
        """Show the whole answer, every part, and return the ids of its messages."""
        await self._stop()
        await self._show(text)
        return self.message_ids

    async def _stop(self) -> None:
        self._stopping.set()
        self._changed.set()
        # The typing loop may be cut anywhere; the flusher finishes the edit it is making, so no send is lost.
        if self._typing_task is not None:
            self._typing_task.cancel()
        for task in (self._typing_task, self._flusher_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._typing_task = self._flusher_task = None

    async def _typing(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TYPING_DELAY):
                await self._stopping.wait()
        while not self.shown and not self._drafted and not self._stopping.is_set():
            try:
                await self.bot.send_chat_action(chat_id=self.chat_id, action=ChatAction.TYPING)
            except RetryAfter as exc:
                await asyncio.sleep(telegram_seconds(exc.retry_after))
                continue
            except NetworkError as exc:
                logger.debug("Could not show typing in chat %s: %s", self.chat_id, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TYPING_INTERVAL):
                    await self._stopping.wait()

    async def _flusher(self) -> None:
        while not self._stopping.is_set():
            await self._changed.wait()
            if self._stopping.is_set():
                return
            if not self.shown and not self._drafted:
                # A short answer finished within this moment goes out whole in one message, instead of a
                # preview and an edit that the chat's pace would hold back by a second.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FIRST_SHOW_DELAY):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    return
            self._changed.clear()
            try:
                await self._show(self._current(), preview=True)
            except NetworkError as exc:
                # A preview edit that fails is not worth stopping the answer for; the final show retries.
                logger.warning("Could not show the answer so far in chat %s: %s", self.chat_id, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stopping.wait()

    async def _pace(self) -> None:
        """Keep writes to the chat at least `interval` apart, the final ones included."""
        loop = asyncio.get_running_loop()
        wait = self._last_write + self.interval - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_write = loop.time()

    async def _show(self, text: str, *, preview: bool = False) -> None:
        parts = render_parts(text)
        async with self._io:
            if preview and self.draft:
                try:
                    await self._show_draft(parts)
                    return
                except DraftsUnsupported as exc:
                    logger.info("The Bot API server has no drafts (%s): answers stream by edits", exc)
                    _servers_without_drafts.add(self.bot.base_url)
                    self.draft, self.interval = False, self.edit_interval
                except BadRequest as exc:
                    logger.info(
                        "Telegram refused a draft in chat %s (%s): this answer streams by edits", self.chat_id, exc
                    )
                    self.draft, self.interval = False, self.edit_interval
            await self._show_messages(parts)

    async def _show_draft(self, parts: list[tuple[str, str]]) -> None:
        """The parts before the last as messages (they are complete), the last one as the chat's draft."""
        await self._show_messages(parts[:-1])
        html, plain = parts[-1]
        await self._pace()
        await send_draft(
            self.bot, chat_id=self.chat_id, draft_id=self._draft_base + len(parts) - 1, html=html, plain=plain
        )
        self._drafted = True

    async def _show_messages(self, parts: list[tuple[str, str]]) -> None:
        for index, (html, plain) in enumerate(parts):
            if index < len(self.shown):
                shown = self.shown[index]
                if shown.html != html:
                    await self._pace()
                    await edit_text(self.bot, chat_id=self.chat_id, message_id=shown.message_id, html=html, plain=plain)
                    shown.html = html
                continue
            await self._pace()
            message = await send_text(
                self.bot,
                chat_id=self.chat_id,
                html=html,
                plain=plain,
                reply_to=self.reply_to if index == 0 else None,
            )
            self.shown.append(_Shown(message.message_id, html))
            if self.on_new_message is not None:
                await self.on_new_message(self.message_ids)
