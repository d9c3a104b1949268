"""Builds the python-telegram-bot Application for a Bot: all handlers in one place, ordered and deduplicated.

Updates of different chats are handled concurrently; updates of one chat one after another, in the order
Telegram sent them. Every update is written down (`ProcessedUpdate`) before it is handled, so a redelivery
is ignored and a restart can finish what a crash interrupted (`application_recover`). Nothing here depends
on polling: a webhook worker can build the same Application with `polling=False` and feed `update_queue`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import translation
from telegram import Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    BaseUpdateProcessor,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    InlineQueryHandler,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from botapp.conversations import ReplyRefused, leases_release, turn_for_pending_reply
from botapp.models import Bot, Message, ProcessedUpdate
from botapp.telegram import handlers, selectors, services

logger = logging.getLogger(__name__)

# Enough for hundreds of chats at once; each waiting update holds little more than its JSON.
MAX_CONCURRENT_UPDATES = 1024
# Bot API calls in flight at once; more wait their turn in `QueuedRequest`.
CONNECTION_POOL_SIZE = 32


class QueuedRequest(HTTPXRequest):
    """python-telegram-bot's HTTPX request, with calls beyond the connection pool waiting in a semaphore.

    httpcore's pool rescans every queued request against every connection each time one finishes, so a
    thousand chats' calls queued there cost quadratic time (a quarter of the bot's CPU in the 1000-chat
    benchmark). Waiting on a semaphore costs nothing, and a call that gets a slot always finds a connection.
    """

    def __init__(self, *, connection_pool_size: int = CONNECTION_POOL_SIZE, **kwargs: Any) -> None:
        super().__init__(connection_pool_size=connection_pool_size, **kwargs)
        self._slots = asyncio.Semaphore(connection_pool_size)

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        async with self._slots:
            return await super().do_request(*args, **kwargs)


class ChatOrderedProcessor(BaseUpdateProcessor):
    """Runs updates concurrently across chats and in arrival order within a chat; drops redeliveries."""

    def __init__(self, *, bot_id: int, max_concurrent_updates: int = MAX_CONCURRENT_UPDATES) -> None:
        super().__init__(max_concurrent_updates)
        self.bot_id = bot_id
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}
        # Updates a restart hands back in on purpose: already written down, to be handled again.
        self.replaying: set[int] = set()

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    def chat_lock(self, chat_id: int) -> _ChatLock:
        """The lock that keeps one chat's updates in order (asyncio locks wake waiters first come, first served)."""
        return _ChatLock(self, chat_id)

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
        if update_id in self.replaying:
            self.replaying.discard(update_id)
        else:
            fresh = await sync_to_async(services.update_record)(
                bot_id=self.bot_id, update_id=update_id, payload=update.to_dict()
            )
            if not fresh:
                logger.info("Update %s was delivered again: ignored", update_id)
                coroutine.close()  # type: ignore[attr-defined]
                return
        await coroutine
        await sync_to_async(services.update_mark_done)(bot_id=self.bot_id, update_id=update_id)


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


def build_application(bot: Bot, *, polling: bool = True) -> Application:
    """The Application for `bot`, with every handler, the ordered processor and the error handler."""
    root = settings.TELEGRAM_API_BASE_URL
    builder = (
        ApplicationBuilder()
        .token(bot.token)
        .base_url(f"{root}/bot")
        .base_file_url(f"{root}/file/bot")
        .concurrent_updates(ChatOrderedProcessor(bot_id=bot.pk))
        .context_types(ContextTypes(context=handlers.JarvisContext))
        # Hundreds of chats share the connection pool; waiting for a free connection is better than failing.
        .request(QueuedRequest(pool_timeout=30.0, connect_timeout=10.0, read_timeout=30.0, write_timeout=30.0))
        .get_updates_request(
            HTTPXRequest(connection_pool_size=1, pool_timeout=30.0, connect_timeout=10.0, read_timeout=40.0)
        )
    )
    if not polling:
        builder = builder.updater(None)
    application = builder.build()
    application.bot_data["bot_id"] = bot.pk
    only_new = filters.UpdateType.MESSAGE
    addressed = only_new & handlers.ADDRESSED
    application.add_handlers(
        [
            CommandHandler("start", handlers.start, filters=only_new),
            CommandHandler("help", handlers.help_command, filters=only_new),
            CommandHandler(["new", "reset"], handlers.new_conversation, filters=only_new),
            CommandHandler("mode", handlers.mode, filters=only_new),
            CommandHandler("stats", handlers.stats, filters=only_new),
            CommandHandler("retry", handlers.retry, filters=only_new),
            CommandHandler("caps", handlers.caps, filters=only_new),
            CommandHandler("link", handlers.link, filters=only_new),
            CallbackQueryHandler(handlers.persona_chosen, pattern=f"^{handlers.PERSONA_CALLBACK_PREFIX}"),
            InlineQueryHandler(handlers.inline_caps),
            MessageHandler(only_new & filters.COMMAND, handlers.unknown_command),
            MessageHandler(addressed & filters.TEXT, handlers.text_message),
            MessageHandler(addressed & (filters.VOICE | filters.AUDIO | filters.VIDEO_NOTE), handlers.voice_message),
            MessageHandler(addressed & filters.PHOTO, handlers.photo_message),
            MessageHandler(addressed & filters.Document.ALL, handlers.document_message),
            # Service messages (members joining, pins) are not something to answer.
            MessageHandler(addressed & ~filters.StatusUpdate.ALL, handlers.other_message),
        ]
    )
    application.add_error_handler(handlers.error_handler)
    return application


async def application_prepare(application: Application) -> None:
    """Register the command menu in English (the default) and Simplified Chinese."""
    for language_code, language in (("", "en"), ("zh", "zh-hans")):
        with translation.override(language):
            commands = handlers.bot_commands()
        await application.bot.set_my_commands(commands, language_code=language_code or None)


async def _answer_pending(application: Application, reply: Message) -> None:
    processor: ChatOrderedProcessor = application.update_processor  # type: ignore[assignment]
    chat_id = reply.conversation.telegram_chat_id
    async with processor.chat_lock(chat_id):
        try:
            turn = await sync_to_async(turn_for_pending_reply)(reply)
        except ReplyRefused:
            logger.warning("Pending answer %s has no question: left as it is", reply.pk)
            return
        language = await sync_to_async(_language_of)(turn.user_message)
        with translation.override(language):
            await handlers.deliver_turn(
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
    processor.replaying.add(update.update_id)
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
