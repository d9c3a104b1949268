"""Builds the python-telegram-bot Application for a Bot: all handlers in one place, ordered and deduplicated.

Updates of different chats are handled concurrently; updates of one chat one after another, in the order
Telegram sent them. Every update is written down (`ProcessedUpdate`) before it is handled, so a redelivery
is ignored and a restart can finish what a crash interrupted (`application_recover`). Nothing here depends
on polling: a webhook worker can build the same Application with `polling=False` and feed `update_queue`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import translation
from telegram import Update
from telegram.error import NetworkError, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    BaseUpdateProcessor,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ExtBot,
    InlineQueryHandler,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from botapp.conversations import ReplyRefused, leases_release, turn_for_pending_reply
from botapp.database import database_retry, database_wait, is_unavailable
from botapp.models import Bot, Message, MessageStatus, ProcessedUpdate
from botapp.telegram import handlers, selectors, services
from botapp.telegram.client import bot_client
from botapp.telegram.handlers import accounts, chat, commands, documents, media

logger = logging.getLogger(__name__)

# Enough for hundreds of chats at once; each waiting update holds little more than its JSON.
MAX_CONCURRENT_UPDATES = 1024
# Bot API calls in flight at once; more wait their turn in `QueuedRequest`.
CONNECTION_POOL_SIZE = 32
# What one bot may send in a second (https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this),
# and the calls that count: messages and edits ("typing…" and drafts do not).
SENDS_PER_SECOND = 30
PACED_METHODS = frozenset(
    {
        "sendMessage", "editMessageText", "editMessageCaption", "editMessageMedia", "sendPhoto", "sendDocument",
        "sendAudio", "sendVoice", "sendVideo", "sendAnimation", "sendMediaGroup", "copyMessage", "forwardMessage",
    }
)  # fmt: skip
# How long fetched updates may wait for the database before polling backs off (Telegram keeps them meanwhile).
ADMIT_DEADLINE_SECONDS = 10.0
# Handling attempts for an update whose handling fails on a database that answers the health check.
DATABASE_ATTEMPTS = 5
# While polling, answers left pending this long with nobody writing them are answered (no restart needed).
PENDING_SWEEP_SECONDS = 30.0
PENDING_IDLE = timedelta(seconds=90)


class QueuedRequest(HTTPXRequest):
    """python-telegram-bot's HTTPX request, with calls beyond the connection pool waiting in a semaphore, and
    what the bot sends paced to Telegram's limit of about 30 messages a second per bot.

    httpcore's pool rescans every queued request against every connection each time one finishes, so a
    thousand chats' calls queued there cost quadratic time (a quarter of the bot's CPU in the 1000-chat
    benchmark). Waiting on a semaphore costs nothing, and a call that gets a slot always finds a connection.

    Pacing: a send takes one of `SENDS_PER_SECOND` turns and gives it back a second after Telegram answered,
    so no second sees more sends than that wherever Telegram counts them. A burst of answers then goes out at
    Telegram's rate instead of most of it being refused (429) and all retried at once a second later.
    (python-telegram-bot's AIORateLimiter counts every call that names a chat, "typing…" and drafts too,
    against the same limit, which would halve the answers a second; it also needs another dependency.)
    """

    def __init__(self, *, connection_pool_size: int = CONNECTION_POOL_SIZE, **kwargs: Any) -> None:
        super().__init__(connection_pool_size=connection_pool_size, **kwargs)
        self._slots = asyncio.Semaphore(connection_pool_size)
        self._sends = asyncio.Semaphore(SENDS_PER_SECOND)

    async def do_request(self, url: str, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        if url.rpartition("/")[2] not in PACED_METHODS:
            async with self._slots:
                return await super().do_request(url, *args, **kwargs)
        await self._sends.acquire()
        try:
            async with self._slots:
                return await super().do_request(url, *args, **kwargs)
        finally:
            asyncio.get_running_loop().call_later(1.0, self._sends.release)


class ChatOrderedProcessor(BaseUpdateProcessor):
    """Runs updates concurrently across chats and in arrival order within a chat; drops redeliveries.

    An update is handled once it is written down. One that fails because the database is unavailable is
    handled again once the database is back (the funnel recognises what was stored the first time), so a
    message sent during an outage is answered once, after it.
    """

    def __init__(self, *, bot_id: int, max_concurrent_updates: int = MAX_CONCURRENT_UPDATES) -> None:
        super().__init__(max_concurrent_updates)
        self.bot_id = bot_id
        self.application: Application | None = None
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}
        # Updates written down and to be handled here: fetched by polling, or handed back in by a restart.
        self._admitted: set[int] = set()
        # Of those, the ones handed back in by a restart: what they carry may have been stored already.
        self._stored_before: set[int] = set()
        # Updates whose handling failed because the database was unavailable, and those on their last attempt.
        self._database_failed: set[int] = set()
        self._last_attempt: set[int] = set()

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    def chat_lock(self, chat_id: int) -> _ChatLock:
        """The lock that keeps one chat's updates in order (asyncio locks wake waiters first come, first served)."""
        return _ChatLock(self, chat_id)

    async def admit(self, updates: Sequence[Update]) -> None:
        """Write fetched updates down before the next poll confirms them to Telegram; only new ones get handled.

        While the database is unavailable this raises NetworkError: polling backs off and asks again with the
        same offset, so Telegram keeps the updates until they are stored.
        """
        rows = [(update.update_id, update.to_dict()) for update in updates]
        try:
            fresh = await database_retry(
                services.updates_record, bot_id=self.bot_id, updates=rows, deadline=ADMIT_DEADLINE_SECONDS
            )
        except Exception as exc:
            logger.warning("Updates of bot %s could not be written down; Telegram keeps them: %s", self.bot_id, exc)
            raise NetworkError("The database is unavailable; the updates stay with Telegram until it is back.") from exc
        if len(fresh) < len(rows):
            logger.info("Bot %s: %d update(s) delivered again were ignored", self.bot_id, len(rows) - len(fresh))
        self._admitted.update(fresh)

    def admit_stored(self, update_id: int) -> None:
        """Hand in an update written down before (by a process that stopped before finishing it)."""
        self._admitted.add(update_id)
        self._stored_before.add(update_id)

    def database_failed(self, update_id: int) -> bool:
        """Note that handling failed because the database was unavailable; False on the last attempt."""
        if update_id in self._last_attempt:
            return False
        self._database_failed.add(update_id)
        return True

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        if not isinstance(update, Update):
            await coroutine
            return
        chat = update.effective_chat
        if chat is None:
            # Inline queries belong to no chat and must be answered within seconds: they wait for nobody.
            await self._process(update, coroutine)
            return
        async with self.chat_lock(chat.id):
            await self._process(update, coroutine)

    async def _process(self, update: Update, coroutine: Awaitable[Any]) -> None:
        update_id = update.update_id
        if update_id in self._admitted:
            self._admitted.discard(update_id)
            first_delivery = update_id not in self._stored_before
            self._stored_before.discard(update_id)
        else:
            first_delivery = await database_retry(
                services.update_record, bot_id=self.bot_id, update_id=update_id, payload=update.to_dict()
            )
            if not first_delivery:
                logger.info("Update %s was delivered again: ignored", update_id)
                coroutine.close()  # type: ignore[attr-defined]
                return
        # A handler may finish the update itself, in the trip that stores its last write (see deliver_turn).
        in_hand = services.UpdateInHand(update_id=update_id, first_delivery=first_delivery)
        services.update_in_hand.set(in_hand)
        await self._handle(update, coroutine, in_hand)
        if not in_hand.done:
            await database_retry(services.update_mark_done, bot_id=self.bot_id, update_id=update_id)

    async def _handle(self, update: Update, coroutine: Awaitable[Any], in_hand: services.UpdateInHand) -> None:
        update_id = update.update_id
        await coroutine
        attempts = 1
        while update_id in self._database_failed:
            self._database_failed.discard(update_id)
            logger.warning("Update %s waits for the database to come back, then is handled again", update_id)
            await database_wait()
            attempts += 1
            if attempts >= DATABASE_ATTEMPTS:
                # The database answers but handling keeps failing: not an outage; the person is told.
                self._last_attempt.add(update_id)
            # What the failed attempt stored is found again, not assumed absent.
            in_hand.first_delivery, in_hand.done = False, False
            try:
                await self.application.process_update(update)
            finally:
                self._last_attempt.discard(update_id)


class _ChatLock:
    """One chat's lock, forgotten when nobody holds or waits for it, so idle chats cost nothing."""

    def __init__(self, processor: ChatOrderedProcessor, chat_id: int) -> None:
        self.processor, self.chat_id = processor, chat_id

    async def __aenter__(self) -> None:
        locks = self.processor._locks
        lock, users = locks.get(self.chat_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        locks[self.chat_id] = (lock, users + 1)
        await lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        locks = self.processor._locks
        lock, users = locks[self.chat_id]
        lock.release()
        if users <= 1:
            del locks[self.chat_id]
        else:
            locks[self.chat_id] = (lock, users - 1)


class RecordingBot(ExtBot):
    """The Bot API client, writing each batch of polled updates down before the next poll confirms it."""

    __slots__ = ("_processor",)

    def __init__(self, *, processor: ChatOrderedProcessor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self._unfrozen():
            self._processor = processor

    async def get_updates(self, *args: Any, **kwargs: Any) -> tuple[Update, ...]:
        updates = await super().get_updates(*args, **kwargs)
        if updates:
            await self._processor.admit(updates)
        return updates


def build_application(bot: Bot, *, polling: bool = True) -> Application:
    """The Application for `bot`, with every handler, the ordered processor and the error handler."""
    processor = ChatOrderedProcessor(bot_id=bot.pk)
    client = bot_client(
        bot.token,
        cls=RecordingBot,
        processor=processor,
        # Hundreds of chats share the connection pool; waiting for a free connection is better than failing.
        request=QueuedRequest(pool_timeout=30.0, connect_timeout=10.0, read_timeout=30.0, write_timeout=30.0),
        get_updates_request=HTTPXRequest(
            connection_pool_size=1, pool_timeout=30.0, connect_timeout=10.0, read_timeout=40.0
        ),
    )
    builder = (
        ApplicationBuilder()
        .bot(client)
        .concurrent_updates(processor)
        .context_types(ContextTypes(context=handlers.JarvisContext))
    )
    if not polling:
        builder = builder.updater(None)
    application = builder.build()
    processor.application = application
    application.bot_data["bot_id"] = bot.pk
    only_new = filters.UpdateType.MESSAGE
    addressed = only_new & handlers.ADDRESSED
    application.add_handlers(
        [
            CommandHandler("start", commands.start, filters=only_new),
            CommandHandler("help", commands.help_command, filters=only_new),
            CommandHandler(["new", "reset"], commands.new_conversation, filters=only_new),
            CommandHandler("mode", commands.mode, filters=only_new),
            CommandHandler("model", commands.model, filters=only_new),
            CommandHandler("stats", commands.stats, filters=only_new),
            CommandHandler("retry", commands.retry, filters=only_new),
            CommandHandler("caps", commands.caps, filters=only_new),
            CommandHandler("link", accounts.link, filters=only_new),
            CommandHandler("image", media.image, filters=only_new),
            CommandHandler("voice", commands.voice, filters=only_new),
            CommandHandler("web", accounts.web, filters=only_new),
            CallbackQueryHandler(commands.persona_chosen, pattern=f"^{commands.PERSONA_CALLBACK_PREFIX}"),
            CallbackQueryHandler(commands.model_chosen, pattern=f"^{commands.MODEL_CALLBACK_PREFIX}"),
            InlineQueryHandler(commands.inline_caps),
            MessageHandler(only_new & filters.COMMAND, commands.unknown_command),
            MessageHandler(addressed & filters.TEXT, chat.text_message),
            MessageHandler(addressed & (filters.VOICE | filters.AUDIO | filters.VIDEO_NOTE), media.voice_message),
            MessageHandler(addressed & filters.PHOTO, media.photo_message),
            MessageHandler(addressed & filters.Document.ALL, documents.document_message),
            # Service messages (members joining, pins) are not something to answer.
            MessageHandler(addressed & ~filters.StatusUpdate.ALL, chat.other_message),
        ]
    )
    application.add_error_handler(handlers.error_handler)
    return application


async def application_prepare(application: Application) -> None:
    """Register the command menu in English (the default) and Simplified Chinese."""
    for language_code, language in (("", "en"), ("zh", "zh-hans")):
        with translation.override(language):
            menu = handlers.bot_commands()
        await application.bot.set_my_commands(menu, language_code=language_code or None)


async def _answer_pending(application: Application, reply: Message) -> None:
    processor: ChatOrderedProcessor = application.update_processor  # type: ignore[assignment]
    chat_id = reply.conversation.telegram_chat_id
    async with processor.chat_lock(chat_id):
        if not await Message.objects.filter(pk=reply.pk, status=MessageStatus.PENDING).aexists():
            return  # answered meanwhile, by the update that asked for it
        try:
            turn = await sync_to_async(turn_for_pending_reply)(reply)
        except ReplyRefused:
            logger.warning("Pending answer %s has no question: left as it is", reply.pk)
            return
        language = await sync_to_async(_language_of)(turn.user_message)
        with translation.override(language):
            await chat.deliver_turn(
                application.bot,
                turn,
                chat_id=chat_id,
                group=chat_id < 0,
                reply_to=turn.user_message.telegram_message_id,
            )
        logger.info("Answered message %s, which was waiting when Jarvis stopped", turn.user_message.pk)


def _language_of(message: Message) -> str:
    identity = getattr(message.sender, "telegram", None) if message.sender_id else None
    return services.language_for(identity.language_code if identity else None)


def _chat_of(payload: dict[str, Any]) -> int | None:
    return ((payload.get("message") or {}).get("chat") or {}).get("id")


def _is_retry(payload: dict[str, Any]) -> bool:
    command = ((payload.get("message") or {}).get("text") or "").split(maxsplit=1)[:1]
    return bool(command) and command[0].split("@", 1)[0] == "/retry"


async def _replay(application: Application, row: ProcessedUpdate) -> None:
    processor: ChatOrderedProcessor = application.update_processor  # type: ignore[assignment]
    update = Update.de_json(row.payload, application.bot)
    processor.admit_stored(update.update_id)
    await processor.process_update(update, application.process_update(update))


async def application_recover(application: Application) -> list[asyncio.Task[None]]:
    """Finish what a crash interrupted: answers left pending, then updates never finished, each exactly once.

    For the one process that polls a bot, before polling starts: the returned tasks take their chats' locks
    first, so new messages in those chats wait behind them. An update already answered is recognised by its
    stored Telegram message id.
    """
    bot_id = application.bot_data["bot_id"]
    bot = await Bot.objects.aget(pk=bot_id)
    await sync_to_async(services.updates_prune)(bot_id=bot_id)
    # The poller is the only process answering this bot's chats: a lease still held is a dead process's.
    await sync_to_async(leases_release)(bot=bot)
    pending = await sync_to_async(selectors.pending_replies)(bot=bot)
    unfinished = await sync_to_async(selectors.unfinished_updates)(bot=bot)
    if pending or unfinished:
        logger.info(
            "Bot %s: finishing %d answer(s) and %d update(s) left from before the restart",
            bot.name,
            len(pending),
            len(unfinished),
        )
    tasks = [asyncio.create_task(_answer_pending(application, reply)) for reply in pending]
    chats_with_pending = {reply.conversation.telegram_chat_id for reply in pending}
    for row in unfinished:
        if _is_retry(row.payload) and _chat_of(row.payload) in chats_with_pending:
            # The answer the /retry asked for is the pending one just resumed; replaying it would answer twice.
            await sync_to_async(services.update_mark_done)(bot_id=bot_id, update_id=row.update_id)
            continue
        tasks.append(asyncio.create_task(_replay(application, row)))
    # Let every task take its place in its chat's queue before new updates arrive.
    await asyncio.sleep(0)
    return tasks


async def _answer_swept(application: Application, reply: Message) -> None:
    try:
        await _answer_pending(application, reply)
    except Exception:
        logger.exception("Pending answer %s could not be answered; the next sweep tries again", reply.pk)


def polling_error(error: TelegramError) -> None:
    """How polling reports a failed getUpdates: a line, not a traceback, for the outages it rides out."""
    logger.warning("Polling for updates failed, trying again: %s", error)


async def pending_sweep(application: Application) -> None:
    """Keep answering, while polling, answers left pending with nobody writing them; each exactly once.

    An answer whose turn failed part-way (its update gave up on a failing database, say) would otherwise wait
    for the next restart. Each is answered under its chat's lock, after checking that it is still pending.
    """
    bot = await Bot.objects.aget(pk=application.bot_data["bot_id"])
    sweeping: dict[int, asyncio.Task[None]] = {}
    while True:
        await asyncio.sleep(PENDING_SWEEP_SECONDS)
        try:
            stale = await sync_to_async(selectors.pending_replies)(bot=bot, idle_for=PENDING_IDLE)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            continue
        for reply in stale:
            if reply.pk not in sweeping:
                logger.info("Bot %s: answering message %s, left pending", bot.name, reply.pk)
                task = asyncio.create_task(_answer_swept(application, reply))
                sweeping[reply.pk] = task
                task.add_done_callback(lambda _task, pk=reply.pk: sweeping.pop(pk, None))
