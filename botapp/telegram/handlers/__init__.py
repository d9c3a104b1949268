"""Telegram update handlers, by area; this package's own module holds what every handler shares.

Every callback is wrapped by `jarvis_handler`, which records who wrote (the person and their membership of
the bot), switches to their language, and refuses people the bot may not serve before anything is spent.
The callbacks live in `commands`, `accounts`, `chat` (text and the answers of every kind), `media` (photos,
recordings, /image) and `documents`; `botapp.telegram.application.build_application` registers them all.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import translation
from django.utils.translation import gettext as _
from telegram import BotCommand, MessageEntity, Update
from telegram import Message as TelegramMessage
from telegram.constants import ChatType
from telegram.error import Forbidden, TelegramError
from telegram.ext import CallbackContext, ExtBot, filters

from botapp.conversations import conversation_for_chat
from botapp.database import is_unavailable
from botapp.models import Conversation
from botapp.telegram import services
from botapp.telegram.delivery import send_sentence, telegram_call

logger = logging.getLogger(__name__)

# Telegram's Bot API serves files up to 20 MB through getFile.
TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024


class JarvisContext(CallbackContext[ExtBot, dict, dict, dict]):
    """The callback context, plus who sent the update (set by `jarvis_handler`)."""

    contact: services.Contact


Callback = Callable[[Update, JarvisContext], Awaitable[None]]


def bot_commands() -> list[BotCommand]:
    """The command menu, in the active language."""
    return [
        BotCommand("start", _("Greeting and what Jarvis can do")),
        BotCommand("help", _("How to use Jarvis")),
        BotCommand("new", _("Start a new conversation")),
        BotCommand("mode", _("Choose a persona")),
        BotCommand("model", _("Choose the model, with its price")),
        BotCommand("stats", _("Tokens and cost, and what is left of your budget")),
        BotCommand("retry", _("Answer the last message again")),
        BotCommand("caps", _("Shout some text back in capitals")),
        BotCommand("web", _("A link that signs you in on the web page")),
        BotCommand("link", _("Link this Telegram account to the web page")),
        BotCommand("image", _("Draw a picture, or change the one you reply to")),
        BotCommand("voice", _("Switch answers between text and voice notes")),
    ]


# --- Plumbing -----------------------------------------------------------------------------------


def jarvis_handler(callback: Callback) -> Callback:
    """Record the sender, switch to their language, and refuse people the bot may not serve."""

    @functools.wraps(callback)
    async def wrapper(update: Update, context: JarvisContext) -> None:
        sender = update.effective_user
        if sender is None or sender.is_bot:
            return
        contact = await sync_to_async(services.contact_sync)(
            bot_id=context.bot_data["bot_id"],
            telegram_id=sender.id,
            username=sender.username,
            first_name=sender.first_name,
            last_name=sender.last_name,
            language_code=sender.language_code,
        )
        context.contact = contact
        with translation.override(contact.language):
            if not contact.allowed:
                await refuse(update, context)
                return
            await callback(update, context)

    return wrapper


async def refuse(update: Update, context: JarvisContext) -> None:
    sentence = _("Sorry, Jarvis is not available to you here. If you think this is a mistake, ask the bot's admin.")
    if update.inline_query is not None:
        await update.inline_query.answer([], cache_time=0, is_personal=True)
        return
    if update.callback_query is not None:
        await update.callback_query.answer(sentence, show_alert=True)
        return
    if update.effective_chat is not None:
        await reply(update, sentence)


async def reply(update: Update, text: str) -> TelegramMessage:
    """Answer the update's message with a sentence Jarvis wrote (plain text)."""
    message = update.effective_message
    return await send_sentence(
        message.get_bot(),
        chat_id=message.chat_id,
        text=text,
        reply_to=message.message_id if message.chat.type != ChatType.PRIVATE else None,
    )


def is_group(chat_type: str) -> bool:
    """Whether the chat is a group (where Jarvis answers only when addressed)."""
    return chat_type in (ChatType.GROUP, ChatType.SUPERGROUP)


class AddressedToJarvis(filters.MessageFilter):
    """Private messages, and group messages that mention the bot or reply to it."""

    def filter(self, message: TelegramMessage) -> bool:
        if not is_group(message.chat.type):
            return message.chat.type == ChatType.PRIVATE
        bot = message.get_bot()
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == bot.id:
            return True
        mention = f"@{bot.username}".lower()
        found = {
            **message.parse_entities([MessageEntity.MENTION]),
            **message.parse_caption_entities([MessageEntity.MENTION]),
        }
        return any(text.lower() == mention for text in found.values())


ADDRESSED = AddressedToJarvis(name="AddressedToJarvis")


def without_mention(text: str, username: str) -> str:
    """The message's text without the bot's @mention."""
    mention = f"@{username}"
    index = text.lower().find(mention.lower())
    if index < 0:
        return text.strip()
    return (text[:index] + text[index + len(mention) :]).strip()


async def chat_conversation(update: Update, context: JarvisContext) -> Conversation:
    """The chat's current conversation, made when it has none."""
    return await sync_to_async(conversation_for_chat)(
        bot=context.contact.bot, telegram_chat_id=update.effective_chat.id, user=context.contact.user
    )


async def download(update: Update, attached: Any, *, what: str, failure: str) -> bytes | None:
    """Download a file the person sent (a photo, recording or document); None after telling them `failure`."""
    try:
        file = await telegram_call(attached.get_file, what="getFile")
        return bytes(await file.download_as_bytearray())
    except TelegramError as exc:
        logger.warning("Could not download %s in chat %s: %s", what, update.effective_chat.id, exc)
        await reply(update, failure)
        return None


# --- Errors -------------------------------------------------------------------------------------


async def error_handler(update: object, context: JarvisContext) -> None:
    """Log the failure first, then tell the person, in their language, that their message was not handled."""
    error = context.error
    update_id = update.update_id if isinstance(update, Update) else None
    if isinstance(error, Forbidden) and isinstance(update, Update) and update.effective_user is not None:
        logger.info("Update %s: the person blocked the bot or left the chat (%s)", update_id, error)
        await sync_to_async(services.bot_user_mark_blocked)(
            bot_id=context.bot_data["bot_id"], telegram_id=update.effective_user.id
        )
        return
    if is_unavailable(error) and isinstance(update, Update):
        # The ordered processor (application.py) handles it again once the database is back.
        database_failed = getattr(context.application.update_processor, "database_failed", None)
        if database_failed is not None and database_failed(update.update_id):
            logger.warning("Update %s could not be handled: the database is unavailable (%s)", update_id, error)
            return
    logger.error("Update %s could not be handled", update_id, exc_info=error)
    if not isinstance(update, Update) or update.effective_message is None or update.inline_query is not None:
        return
    contact = getattr(context, "contact", None)
    language = (
        contact.language
        if contact is not None
        else services.language_for(update.effective_user.language_code if update.effective_user else None)
    )
    with translation.override(language):
        sentence = _("Sorry, something went wrong while handling your message. Please try again in a moment.")
    try:
        await reply(update, sentence)
    except TelegramError as exc:
        logger.warning("Could not tell chat %s about the failure: %s", update.effective_chat.id, exc)
