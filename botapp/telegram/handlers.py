"""Telegram update handlers: commands, the funnel's chat, voice, photos, pictures, documents, groups, inline mode.

Every callback is wrapped by `jarvis_handler`, which records who wrote (the person and their membership of
the bot), switches to their language, and refuses people the bot may not serve before anything is spent.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InlineQueryResultArticle,
    InputTextMessageContent,
    LinkPreviewOptions,
    MessageEntity,
    Update,
)
from telegram import Message as TelegramMessage
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import CallbackContext, ExtBot, filters

from botapp import media
from botapp.choices import ChoiceError, conversation_model_set, conversation_persona_set, model_price_label
from botapp.conversations import (
    MAX_AUDIO_BYTES,
    Begun,
    ReplyError,
    ReplyRefused,
    Turn,
    audio_transcribe,
    conversation_for_chat,
    conversation_start,
    documents_accept,
    reply_speak,
    turn_answer,
    turn_draw,
    turn_for_pending_reply,
    turn_retry,
)
from botapp.database import database_retry, is_unavailable
from botapp.documents.context import sources_line
from botapp.documents.progress import documents_of, progress_label
from botapp.documents.services import Upload, upload_refusal
from botapp.linking import CODE_LIFETIME, SIGN_IN_LINK_LIFETIME, link_code_create, web_sign_in_link_create
from botapp.models import Channel, Conversation, MediaFile, MediaKind, Message, MessageStatus, ModelPrice, Persona
from botapp.selectors import models_offered, personas_offered
from botapp.site import site_url
from botapp.telegram import selectors, services
from botapp.telegram.delivery import (
    CAPTION_LIMIT,
    EDIT_INTERVAL_GROUP,
    EDIT_INTERVAL_PRIVATE,
    AnswerStream,
    chat_action,
    send_parts,
    send_picture,
    send_sentence,
    send_voice_note,
    telegram_call,
)
from botapp.telegram.formatting import render_parts
from botapp.tools.drawing import answer_pictures, drew_pictures
from botapp.usage import format_usd, price_in_force

logger = logging.getLogger(__name__)

# Telegram's Bot API serves files up to 20 MB through getFile.
TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024
PERSONA_CALLBACK_PREFIX = "persona:"
MODEL_CALLBACK_PREFIX = "model:"
# How long a chat waits for its documents to be read before it is told they are not ready yet.
DOCUMENT_WAIT_SECONDS = 600.0
DOCUMENT_POLL_SECONDS = 1.0
DOCUMENT_EDIT_SECONDS = 3.0


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
                await _refuse(update, context)
                return
            await callback(update, context)

    return wrapper


async def _refuse(update: Update, context: JarvisContext) -> None:
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


def _is_group(chat_type: str) -> bool:
    return chat_type in (ChatType.GROUP, ChatType.SUPERGROUP)


class AddressedToJarvis(filters.MessageFilter):
    """Private messages, and group messages that mention the bot or reply to it."""

    def filter(self, message: TelegramMessage) -> bool:
        if not _is_group(message.chat.type):
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


def _without_mention(text: str, username: str) -> str:
    mention = f"@{username}"
    index = text.lower().find(mention.lower())
    if index < 0:
        return text.strip()
    return (text[:index] + text[index + len(mention) :]).strip()


async def _conversation(update: Update, context: JarvisContext) -> Conversation:
    return await sync_to_async(conversation_for_chat)(
        bot=context.contact.bot, telegram_chat_id=update.effective_chat.id, user=context.contact.user
    )


# --- Answering ----------------------------------------------------------------------------------


async def deliver_turn(
    bot: ExtBot,
    turn: Turn,
    *,
    chat_id: int,
    group: bool,
    reply_to: int | None,
    speaks: bool | None = None,
    begun: Begun | None = None,
    update: services.UpdateInHand | None = None,
) -> None:
    """Answer a stored turn through the funnel, streaming it into the chat; remember the messages that show it.

    An /image turn is answered with a picture, and in a chat switched to voice answers the answer is a voice note.
    `speaks` and `begun` come from the trip that stored the turn (`services.chat_message_take`); `update`, the
    update that asked, is finished in the same trip that remembers the answer's messages.
    """
    if media.image_command(turn.user_message.content) is not None:
        await deliver_picture(bot, turn, chat_id=chat_id, reply_to=reply_to)
        return
    if speaks is None:
        speaks = await sync_to_async(media.speaks)(turn.conversation)
    if speaks:
        await deliver_spoken(bot, turn, chat_id=chat_id, reply_to=reply_to)
        return
    reply_id = turn.reply.pk
    remembered = list(turn.reply.telegram_reply_ids or ())
    finishing = False

    async def remember(message_ids: list[int]) -> None:
        nonlocal remembered
        if finishing:
            return  # the whole answer's messages are remembered at its end, in one trip
        try:
            await sync_to_async(services.message_reply_ids_store)(message_id=reply_id, telegram_ids=message_ids)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # Only a restart needs these ids; the answer goes on, and they are stored again at its end.
            logger.warning("Could not remember the messages of answer %s: the database is unavailable", reply_id)
            return
        remembered = list(message_ids)

    await _documents_wait(bot, chat_id=chat_id, question=turn.user_message, reply_to=reply_to, keep=False)
    stream = AnswerStream(
        bot,
        chat_id=chat_id,
        reply_to=reply_to,
        interval=EDIT_INTERVAL_GROUP if group else EDIT_INTERVAL_PRIVATE,
        message_ids=turn.reply.telegram_reply_ids or (),
        on_new_message=remember,
        # Drafts exist in private chats only.
        draft=not group,
    )
    async with stream:
        try:
            answer = await turn_answer(turn, on_delta=stream.on_delta, on_tool=stream.on_tool, begun=begun)
        except ReplyError as error:
            partial = getattr(error, "partial", "")
            text = f"{partial}\n\n⚠️ {error}" if partial else f"⚠️ {error}"
            finishing = True
            ids = await stream.finish(text)
        else:
            text = answer.text or _("(The model sent an empty answer. Try /retry.)")
            cited = sources_line(answer.documents, answer.text)
            text = f"{text}\n\n📎 {cited}" if cited else text
            finishing = True
            ids = await stream.finish(with_sources(text, answer.sources))
            if drew_pictures(answer.tool_calls):
                for picture in await sync_to_async(answer_pictures)(reply_id):
                    sent = await _send_stored_picture(bot, picture, chat_id=chat_id, reply_to=reply_to)
                    ids.append(sent.message_id)
    update_id = update.update_id if update is not None and not update.done else None
    if ids != remembered or update_id is not None:
        await database_retry(
            services.answer_delivered, message_id=reply_id, telegram_ids=ids if ids != remembered else None,
            bot_id=turn.conversation.bot_id, update_id=update_id,
        )  # fmt: skip
        if update is not None:
            update.done = True


def with_sources(text: str, sources: list[dict[str, str]]) -> str:
    """The answer with the pages it used linked under it, those its text does not link already."""
    missing = [source for source in sources if source["url"] not in text]
    if not missing:
        return text

    def link(source: dict[str, str]) -> str:
        title = (source.get("title") or urlsplit(source["url"]).hostname or source["url"])[:60]
        title = title.replace("[", "(").replace("]", ")")
        return f"[{title}]({source['url'].replace('(', '%28').replace(')', '%29')})"

    links = " · ".join(link(source) for source in missing)
    return f"{text}\n\n" + _("Sources: %(links)s") % {"links": links}


async def _resume_stored(
    update: Update, context: JarvisContext, conversation: Conversation, question: Message, answer: Message | None
) -> None:
    """A message stored before (a redelivery or a restart): finish what is missing, never answer twice."""
    chat = update.effective_chat
    if answer is None or (answer.telegram_reply_ids and answer.status != MessageStatus.PENDING):
        return
    if answer.status == MessageStatus.PENDING:
        turn = await sync_to_async(turn_for_pending_reply)(answer)
        await deliver_turn(
            context.bot, turn, chat_id=chat.id, group=_is_group(chat.type), reply_to=question.telegram_message_id
        )
        return
    # Answered but never shown (the process died between storing and sending).
    picture = await sync_to_async(_picture_of)(answer) if answer.status == MessageStatus.COMPLETE else None
    if picture is not None:
        sent = await _send_stored_picture(context.bot, picture, chat_id=chat.id, reply_to=question.telegram_message_id)
        ids = [sent.message_id]
    else:
        text = answer.content or f"⚠️ {answer.error}"
        ids = await send_parts(context.bot, chat_id=chat.id, text=text, reply_to=question.telegram_message_id)
    await sync_to_async(services.message_reply_ids_store)(message_id=answer.pk, telegram_ids=ids)


# --- Pictures and voice notes -------------------------------------------------------------------


def _picture_of(answer: Message) -> MediaFile | None:
    return MediaFile.objects.filter(message=answer, kind=MediaKind.IMAGE).order_by("id").first()


def _read_file(item: MediaFile) -> bytes:
    with item.file.open("rb") as handle:
        return handle.read()


async def _send_stored_picture(
    bot: ExtBot, picture: MediaFile, *, chat_id: int, reply_to: int | None
) -> TelegramMessage:
    data = await sync_to_async(_read_file)(picture)
    return await send_picture(
        bot,
        chat_id=chat_id,
        data=data,
        filename="picture." + picture.file.name.rsplit(".", 1)[-1],
        caption=picture.prompt,
        width=picture.width,
        height=picture.height,
        reply_to=reply_to,
    )


async def deliver_picture(bot: ExtBot, turn: Turn, *, chat_id: int, reply_to: int | None) -> None:
    """Answer a stored /image turn with a picture (the prompt as its caption), or a sentence saying why not."""
    prompt = media.image_command(turn.user_message.content) or ""
    attachments = turn.user_message.attachments or []
    source = media.image_source_from_data_url(attachments[0]["url"]) if attachments else None
    async with chat_action(bot, chat_id=chat_id, action=ChatAction.UPLOAD_PHOTO):
        try:
            drawn = await turn_draw(turn, prompt=prompt, source=source)
        except ReplyError as error:
            sent = await send_sentence(bot, chat_id=chat_id, text=f"⚠️ {error}", reply_to=reply_to)
            ids = [sent.message_id]
        else:
            sent = await _send_stored_picture(bot, drawn.media, chat_id=chat_id, reply_to=reply_to)
            ids = [sent.message_id]
    await sync_to_async(services.message_reply_ids_store)(message_id=turn.reply.pk, telegram_ids=ids)


async def deliver_spoken(bot: ExtBot, turn: Turn, *, chat_id: int, reply_to: int | None) -> None:
    """Answer a stored turn as a voice note: the text as its caption, or after it when too long for one."""
    sender = turn.user_message.sender or turn.conversation.user
    async with chat_action(bot, chat_id=chat_id, action=ChatAction.RECORD_VOICE):
        try:
            answer = await turn_answer(turn)
        except ReplyError as error:
            partial = getattr(error, "partial", "")
            text = f"{partial}\n\n⚠️ {error}" if partial else f"⚠️ {error}"
            ids = await send_parts(bot, chat_id=chat_id, text=text, reply_to=reply_to)
            await sync_to_async(services.message_reply_ids_store)(message_id=turn.reply.pk, telegram_ids=ids)
            return
        text = answer.text or _("(The model sent an empty answer. Try /retry.)")
        try:
            spoken = await reply_speak(message=answer.message, requested_by=sender)
        except ReplyError as error:
            ids = await send_parts(bot, chat_id=chat_id, text=f"{text}\n\n⚠️ {error}", reply_to=reply_to)
        else:
            ids = await _send_spoken(bot, spoken.media, text=text, chat_id=chat_id, reply_to=reply_to)
    await sync_to_async(services.message_reply_ids_store)(message_id=turn.reply.pk, telegram_ids=ids)


async def _send_spoken(
    bot: ExtBot, recording: MediaFile, *, text: str, chat_id: int, reply_to: int | None
) -> list[int]:
    data = await sync_to_async(_read_file)(recording)
    duration = int(recording.duration_seconds) if recording.duration_seconds is not None else None
    parts = render_parts(text)
    fits = len(parts) == 1 and len(parts[0][1]) <= CAPTION_LIMIT
    note = await send_voice_note(
        bot, chat_id=chat_id, data=data, duration=duration, caption=parts[0] if fits else None, reply_to=reply_to
    )
    if fits:
        return [note.message_id]
    # Too long for a caption: the text follows the voice note, so it can still be read and copied.
    return [note.message_id, *await send_parts(bot, chat_id=chat_id, text=text)]


async def _resumed_if_stored(update: Update, context: JarvisContext, conversation: Conversation) -> bool:
    """A message stored before (a redelivery, or a restart after a crash): finish its answer, not a new one."""
    stored = await sync_to_async(selectors.stored_question)(
        conversation=conversation, telegram_message_id=update.effective_message.message_id
    )
    if stored is None:
        return False
    await _resume_stored(update, context, conversation, *stored)
    return True


async def answer_message(
    update: Update, context: JarvisContext, *, text: str, attachments: list[dict[str, Any]] | None = None
) -> None:
    """Store what the person said and answer it; a message seen before is not answered twice.

    The answer streams as text, or comes as a picture (/image) or a voice note (/voice), see `deliver_turn`.
    """
    message = update.effective_message
    try:
        accepted = await sync_to_async(services.chat_message_accept)(
            bot=context.contact.bot,
            telegram_chat_id=update.effective_chat.id,
            user=context.contact.user,
            telegram_message_id=message.message_id,
            text=text,
            attachments=attachments or (),
        )
    except ReplyRefused as refusal:
        await reply(update, str(refusal))
        return
    await _answer_accepted(update, context, accepted)


async def _answer_accepted(
    update: Update, context: JarvisContext, accepted: services.Accepted, taken: services.Taken | None = None
) -> None:
    """Answer a message stored (or found stored before); `taken`: stored by `chat_message_take`."""
    message = update.effective_message
    chat = update.effective_chat
    if accepted.stored is not None:
        await _resume_stored(update, context, accepted.conversation, *accepted.stored)
        return
    group = _is_group(chat.type)
    # In a group the answer quotes its question, so everyone sees whom Jarvis answers.
    await deliver_turn(
        context.bot, accepted.turn, chat_id=chat.id, group=group, reply_to=message.message_id if group else None,
        speaks=taken.speaks if taken else None, begun=taken.begun if taken else None,
        update=services.update_in_hand.get() if taken else None,
    )  # fmt: skip


# --- Documents ----------------------------------------------------------------------------------


def _document_ids(question: Message) -> list[int]:
    return [a["document_id"] for a in question.attachments or () if a.get("type") == "document"]


async def _documents_wait(
    bot: ExtBot, *, chat_id: int, question: Message, reply_to: int | None, keep: bool
) -> list[Any]:
    """Wait until the question's files are read, showing their progress in a message edited as it moves.

    With `keep` the message stays and ends with each file's outcome (files sent without a question);
    otherwise it goes once the files are read, and the answer that follows says the rest.
    """
    ids = _document_ids(question)
    if not ids:
        return []
    status: TelegramMessage | None = None
    shown = ""
    edited = 0.0
    deadline = time.monotonic() + DOCUMENT_WAIT_SECONDS
    while True:
        documents = await sync_to_async(documents_of)(ids)
        busy = any(document.busy for document in documents)
        text = "\n".join(f"📄 {document.file_name}: {progress_label(document)}" for document in documents)
        if not busy or time.monotonic() > deadline:
            break
        if text != shown and time.monotonic() - edited >= DOCUMENT_EDIT_SECONDS:
            try:
                if status is None:
                    status = await send_sentence(bot, chat_id=chat_id, text=text, reply_to=reply_to)
                else:
                    await telegram_call(functools.partial(status.edit_text, text), what="editMessageText")
                shown, edited = text, time.monotonic()
            except TelegramError as exc:
                logger.info("Could not show document progress in chat %s: %s", chat_id, exc)
        await asyncio.sleep(DOCUMENT_POLL_SECONDS)
    if keep:
        if not busy and all(document.state == "ready" for document in documents):
            text += "\n" + _("Ask me anything about it.")
        try:
            if status is None:
                await send_sentence(bot, chat_id=chat_id, text=text, reply_to=reply_to)
            elif text != shown:
                await telegram_call(functools.partial(status.edit_text, text), what="editMessageText")
        except TelegramError as exc:
            logger.info("Could not show document progress in chat %s: %s", chat_id, exc)
    elif status is not None:
        try:
            await telegram_call(status.delete, what="deleteMessage")
        except TelegramError as exc:
            logger.debug("Could not remove the progress message in chat %s: %s", chat_id, exc)
    return documents


@jarvis_handler
async def document_message(update: Update, context: JarvisContext) -> None:
    """Read a document into the conversation; its caption (or the next message) is answered with it."""
    message = update.effective_message
    chat = update.effective_chat
    attached = message.document
    file_name = attached.file_name or "document"
    refusal = upload_refusal(
        file_name=file_name, size=attached.file_size, mime_type=attached.mime_type or "", telegram=True
    )
    if refusal:
        await reply(update, refusal)
        return
    caption = (message.caption or "").strip()
    group = _is_group(chat.type)
    if group:
        caption = _without_mention(caption, context.bot.username or "")
    conversation = await _conversation(update, context)
    if await _resumed_if_stored(update, context, conversation):
        return
    try:
        file = await telegram_call(attached.get_file, what="getFile")
        data = bytes(await file.download_as_bytearray())
    except TelegramError as exc:
        logger.warning("Could not download a document in chat %s: %s", message.chat_id, exc)
        sentence = _("Jarvis could not download “%(name)s” from Telegram. Please send it again.")
        await reply(update, sentence % {"name": file_name})
        return
    try:
        accepted = await sync_to_async(documents_accept)(
            conversation=conversation,
            uploads=[Upload(file_name=file_name, data=data, mime_type=attached.mime_type or "")],
            text=caption,
            sender=context.contact.user,
            telegram_message_id=message.message_id,
        )
    except ReplyRefused as refusal:
        await reply(update, str(refusal))
        return
    if accepted.turn is None:
        await _documents_wait(
            context.bot, chat_id=chat.id, question=accepted.message, reply_to=message.message_id, keep=True
        )
        return
    reply_to = message.message_id if group else None
    await deliver_turn(context.bot, accepted.turn, chat_id=chat.id, group=group, reply_to=reply_to)


# --- Commands -----------------------------------------------------------------------------------


@jarvis_handler
async def start(update: Update, context: JarvisContext) -> None:
    """Greet the person and say what Jarvis does."""
    name = update.effective_user.first_name if update.effective_user else ""
    greeting = _("Hello %(name)s, I am Jarvis, your assistant.") % {"name": name} if name else _("Hello, I am Jarvis.")
    await reply(
        update,
        greeting
        + "\n\n"
        + _("Write to me, send a voice message or a photo, and I will answer. /help lists what else I can do.")
        + "\n"
        + _("/web gives you a link to the same conversations on the web page."),
    )


@jarvis_handler
async def help_command(update: Update, context: JarvisContext) -> None:
    """List what Jarvis does and its commands."""
    lines = [_("Jarvis answers your messages with an AI model and remembers the conversation."), ""]
    lines += [f"/{command.command} – {command.description}" for command in bot_commands()]
    lines += [
        "",
        _(
            "Voice messages, audio and video notes are transcribed and answered; photos are answered when the "
            "persona's model can see images."
        ),
        _(
            "Send a document (PDF, Word, text, Markdown, HTML, CSV or code) with a question as its caption, or "
            "ask about it afterwards; answers cite the pages they come from."
        ),
        _("In a group, mention me or reply to one of my messages."),
        _("Inline mode: type @%(username)s and some text in any chat to shout it in capitals.")
        % {"username": context.bot.username},
    ]
    await reply(update, "\n".join(lines))


@jarvis_handler
async def new_conversation(update: Update, context: JarvisContext) -> None:
    """Start a fresh conversation in this chat, keeping the chosen persona."""
    current = await _conversation(update, context)
    await sync_to_async(conversation_start)(
        user=context.contact.user,
        channel=Channel.TELEGRAM,
        bot=context.contact.bot,
        telegram_chat_id=update.effective_chat.id,
        persona=current.persona,
        voice_answers=current.voice_answers,
    )
    await reply(update, _("Started a new conversation. Jarvis has set the earlier messages aside."))


@jarvis_handler
async def mode(update: Update, context: JarvisContext) -> None:
    """Offer the active personas as buttons."""
    conversation = await _conversation(update, context)
    personas = await sync_to_async(lambda: list(personas_offered()))()
    if not personas:
        await reply(update, _("There are no personas to choose from. An admin can add some."))
        return
    buttons = [
        [
            InlineKeyboardButton(
                ("✓ " if persona.pk == conversation.persona_id else "") + persona.name,
                callback_data=f"{PERSONA_CALLBACK_PREFIX}{persona.pk}",
            )
        ]
        for persona in personas
    ]
    message = update.effective_message
    await telegram_call(
        lambda: message.reply_text(
            _("Choose how Jarvis should behave in this chat:"), reply_markup=InlineKeyboardMarkup(buttons)
        ),
        what="sendMessage",
    )


def _persona_for_callback(data: str) -> Persona | None:
    try:
        persona_id = int(data.removeprefix(PERSONA_CALLBACK_PREFIX))
    except ValueError:
        return None
    return Persona.objects.filter(pk=persona_id, is_active=True).first()


@jarvis_handler
async def persona_chosen(update: Update, context: JarvisContext) -> None:
    """Switch the chat's conversation to the persona whose button was pressed."""
    query = update.callback_query
    persona = await sync_to_async(_persona_for_callback)(query.data or "")
    if persona is None:
        await query.answer(_("That persona is no longer offered. Send /mode again."), show_alert=True)
        return
    conversation = await _conversation(update, context)
    await sync_to_async(conversation_persona_set)(conversation=conversation, persona=persona)
    confirmation = _("Persona: %(name)s. The next answer uses it.") % {"name": persona.name}
    await query.answer(confirmation)
    try:
        await query.edit_message_text(confirmation)
    except BadRequest as exc:
        logger.debug("Could not update the persona menu: %s", exc)


def _models_offered(conversation: Conversation) -> tuple[str, list[ModelPrice]]:
    """The persona's own model and the models people may choose (each with its price in force)."""
    persona = conversation.persona
    return (persona.model if persona else "") or settings.OPENAI_MODEL, models_offered()


@jarvis_handler
async def model(update: Update, context: JarvisContext) -> None:
    """Offer the models an admin lets people choose, each with its price; the persona's model first."""
    conversation = await _conversation(update, context)
    persona_model, offered = await sync_to_async(_models_offered)(conversation)
    if not offered:
        await reply(
            update,
            _("This chat answers with %(model)s, the persona's model; an admin has offered no other models.")
            % {"model": persona_model},
        )
        return
    chosen = conversation.model if conversation.model in {price.model for price in offered} else ""
    mark = "✓ "
    buttons = [
        [
            InlineKeyboardButton(
                ("" if chosen else mark) + _("Persona's model (%(model)s)") % {"model": persona_model},
                callback_data=MODEL_CALLBACK_PREFIX,
            )
        ]
    ]
    buttons += [
        [
            InlineKeyboardButton(
                (mark if price.model == chosen else "") + f"{price.model} · {model_price_label(price)}",
                callback_data=f"{MODEL_CALLBACK_PREFIX}{price.model}"[:64],
            )
        ]
        for price in offered
    ]
    message = update.effective_message
    await telegram_call(
        lambda: message.reply_text(
            _("Choose the model that answers in this chat (prices per million tokens):"),
            reply_markup=InlineKeyboardMarkup(buttons),
        ),
        what="sendMessage",
    )


@jarvis_handler
async def model_chosen(update: Update, context: JarvisContext) -> None:
    """Switch the chat's conversation to the model whose button was pressed."""
    query = update.callback_query
    name = (query.data or "").removeprefix(MODEL_CALLBACK_PREFIX)
    conversation = await _conversation(update, context)
    try:
        await sync_to_async(conversation_model_set)(conversation=conversation, model=name)
    except ChoiceError as exc:
        await query.answer(str(exc) + " " + _("Send /model again."), show_alert=True)
        return
    if name:
        confirmation = _("Model: %(model)s. The next answer uses it.") % {"model": name}
    else:
        confirmation = _("The persona's model answers again from the next message on.")
    await query.answer(confirmation)
    try:
        await query.edit_message_text(confirmation)
    except BadRequest as exc:
        logger.debug("Could not update the model menu: %s", exc)


@jarvis_handler
async def stats(update: Update, context: JarvisContext) -> None:
    """Tokens and cost today, this month and ever, and what is left of the budget."""
    summary = await sync_to_async(selectors.usage_summary)(user=context.contact.user)
    rows = [
        (_("Today"), summary.today),
        (_("This month"), summary.month),
        (_("All time"), summary.all_time),
    ]
    lines = [_("Your usage:")]
    lines += [
        _("%(period)s: %(tokens)s tokens, %(cost)s")
        % {"period": label, "tokens": f"{total.tokens:,}", "cost": format_usd(total.cost_usd)}
        for label, total in rows
    ]
    lines.append("")
    for period in summary.periods:
        name = _("Daily budget") if period.name == "daily" else _("Monthly budget")
        if period.limit is None:
            lines.append(_("%(name)s: unlimited") % {"name": name})
        else:
            lines.append(
                _("%(name)s: %(remaining)s left of %(limit)s")
                % {"name": name, "remaining": format_usd(period.remaining), "limit": format_usd(period.limit)}
            )
    await reply(update, "\n".join(lines))


@jarvis_handler
async def retry(update: Update, context: JarvisContext) -> None:
    """Answer the last question again; the previous answer stays on record."""
    chat = update.effective_chat
    conversation = await _conversation(update, context)
    try:
        turn = await sync_to_async(turn_retry)(conversation=conversation)
    except ReplyRefused as refusal:
        await reply(update, str(refusal))
        return
    await deliver_turn(
        context.bot,
        turn,
        chat_id=chat.id,
        group=_is_group(chat.type),
        reply_to=turn.user_message.telegram_message_id or update.effective_message.message_id,
    )


@jarvis_handler
async def caps(update: Update, context: JarvisContext) -> None:
    """Shout the command's arguments back in capitals (the seed's /caps)."""
    text = " ".join(context.args or []).upper()
    await reply(update, text or _("Send /caps followed by some text, for example: /caps i love you"))


@jarvis_handler
async def inline_caps(update: Update, context: JarvisContext) -> None:
    """Offer the inline query in capitals (the seed's inline mode)."""
    query = update.inline_query.query
    if not query:
        await update.inline_query.answer([], cache_time=0)
        return
    result = InlineQueryResultArticle(
        id="caps",
        title=_("Caps"),
        description=query.upper()[:100],
        input_message_content=InputTextMessageContent(query.upper()),
    )
    await update.inline_query.answer([result], cache_time=0)


async def _in_private(update: Update, refusal: str) -> bool:
    """True in a private chat; elsewhere the person reads `refusal` (links and codes are for them alone)."""
    if update.effective_chat.type == ChatType.PRIVATE:
        return True
    await reply(update, refusal)
    return False


@jarvis_handler
async def link(update: Update, context: JarvisContext) -> None:
    """Give a one-time code that joins this Telegram account to a web account."""
    if not await _in_private(update, _("For your privacy, send /link to me in a private chat.")):
        return
    code = await sync_to_async(link_code_create)(identity=context.contact.identity)
    await reply(
        update,
        _(
            "Your link code is %(code)s. Sign in on the Jarvis web page, open %(url)s and enter it there within "
            "%(minutes)d minutes. Your Telegram conversations and usage then appear on the web page too."
        )
        % {
            "code": code.code,
            "url": site_url(reverse("web:link")),
            "minutes": int(CODE_LIFETIME.total_seconds() // 60),
        }
        + "\n"
        + _("No web account yet? Send /web instead: its link signs you in with this Telegram account."),
    )


@jarvis_handler
async def web(update: Update, context: JarvisContext) -> None:
    """Send a one-time link that signs this Telegram account in on the web page (an account made if needed)."""
    if not await _in_private(update, _("For your privacy, send /web to me in a private chat.")):
        return
    url = await sync_to_async(web_sign_in_link_create)(identity=context.contact.identity)
    message = update.effective_message
    text = _(
        "Open this link to sign in on the Jarvis web page as this Telegram account; your conversations are there "
        "too. It works once, within %(minutes)d minutes, and only for you: do not pass it on."
    ) % {"minutes": int(SIGN_IN_LINK_LIFETIME.total_seconds() // 60)}
    # No link preview: a preview would have Telegram's servers open the link.
    await telegram_call(
        lambda: message.get_bot().send_message(
            chat_id=message.chat_id,
            text=f"{text}\n\n{url}",
            link_preview_options=LinkPreviewOptions(is_disabled=True),
        ),
        what="sendMessage",
    )


async def _picture_attachment(update: Update, holder: Any) -> dict[str, str] | None:
    """Download a photo (or a picture sent as a file) to send along with a message; None after a sentence."""
    mime = getattr(holder, "mime_type", None) or "image/jpeg"
    if holder.file_size and holder.file_size > TELEGRAM_DOWNLOAD_LIMIT:
        await reply(update, _("This photo is too large to download (over 20 MB). Please send a smaller one."))
        return None
    try:
        file = await telegram_call(holder.get_file, what="getFile")
        data = bytes(await file.download_as_bytearray())
    except TelegramError as exc:
        logger.warning("Could not download a photo in chat %s: %s", update.effective_chat.id, exc)
        await reply(update, _("Jarvis could not download this photo from Telegram. Please send it again."))
        return None
    return {"url": f"data:{mime};base64," + base64.b64encode(data).decode("ascii")}


def _replied_picture(message: TelegramMessage) -> Any:
    replied = message.reply_to_message
    if replied is None:
        return None
    if replied.photo:
        return replied.photo[-1]
    document = replied.document
    if document is not None and (document.mime_type or "").startswith("image/"):
        return document
    return None


async def _draw(update: Update, context: JarvisContext, *, text: str, prompt: str, picture: Any) -> None:
    if not prompt:
        await reply(
            update,
            _(
                "Say what to draw after /image, for example: /image a lighthouse at dawn, in watercolour. "
                "To change a picture, reply to it with /image and what to change, or send a photo with that caption."
            ),
        )
        return
    conversation = await _conversation(update, context)
    if await _resumed_if_stored(update, context, conversation):
        return
    attachments = []
    if picture is not None:
        attachment = await _picture_attachment(update, picture)
        if attachment is None:
            return
        attachments.append(attachment)
    await answer_message(update, context, text=text, attachments=attachments)


@jarvis_handler
async def image(update: Update, context: JarvisContext) -> None:
    """Draw a picture from /image PROMPT, or change the picture the command replies to."""
    message = update.effective_message
    text = (message.text or "").strip()
    await _draw(update, context, text=text, prompt=media.image_command(text) or "", picture=_replied_picture(message))


@jarvis_handler
async def voice(update: Update, context: JarvisContext) -> None:
    """Switch this chat's answers between text and voice notes."""
    conversation = await _conversation(update, context)
    speaking = await sync_to_async(services.conversation_voice_switch)(conversation=conversation)
    if speaking:
        await reply(
            update,
            _(
                "Voice answers are on: Jarvis answers in this chat with voice notes, text included. "
                "Send /voice again for text."
            ),
        )
    else:
        await reply(
            update, _("Voice answers are off: Jarvis answers in this chat with text. Send /voice for voice notes.")
        )


@jarvis_handler
async def unknown_command(update: Update, context: JarvisContext) -> None:
    """Answer a command Jarvis does not know (the seed's reply, in words a person can act on)."""
    message = update.effective_message
    if _is_group(message.chat.type):
        command = (message.text or "").split()[0]
        if "@" not in command or command.split("@", 1)[1].lower() != (context.bot.username or "").lower():
            return
    await reply(update, _("What does that mean? I don't know that command. Send /help to see what I can do."))


# --- Messages -----------------------------------------------------------------------------------


@jarvis_handler
async def _ask_after_mention(update: Update, context: JarvisContext) -> None:
    """A mention with nothing after it."""
    await reply(update, _("Yes? Ask me something after the mention."))


async def text_message(update: Update, context: JarvisContext) -> None:
    """Answer a text message through the funnel: the sender, the question and the answer's start in one trip."""
    sender = update.effective_user
    if sender is None or sender.is_bot:
        return
    message = update.effective_message
    text = message.text or ""
    if _is_group(message.chat.type):
        text = _without_mention(text, context.bot.username or "")
        if not text:
            await _ask_after_mention(update, context)
            return
    in_hand = services.update_in_hand.get()
    taken = await sync_to_async(services.chat_message_take)(
        bot_id=context.bot_data["bot_id"], telegram_id=sender.id, username=sender.username,
        first_name=sender.first_name, last_name=sender.last_name, language_code=sender.language_code,
        telegram_chat_id=message.chat.id, telegram_message_id=message.message_id, text=text,
        first_delivery=in_hand is not None and in_hand.first_delivery,
    )  # fmt: skip
    context.contact = taken.contact
    with translation.override(taken.contact.language):
        if not taken.contact.allowed:
            await _refuse(update, context)
        elif taken.refusal is not None:
            await reply(update, taken.refusal)
        elif taken.accepted is not None:
            await _answer_accepted(update, context, taken.accepted, taken)


def _duration_seconds(value: Any) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)


@jarvis_handler
async def voice_message(update: Update, context: JarvisContext) -> None:
    """Transcribe a voice message, audio file or video note, show the transcript, then answer it."""
    message = update.effective_message
    media = message.voice or message.audio or message.video_note
    if media.file_size and media.file_size > TELEGRAM_DOWNLOAD_LIMIT:
        await reply(
            update,
            _(
                "This recording is %(size).1f MB; Telegram lets bots download at most 20 MB. "
                "Please send a shorter recording."
            )
            % {"size": media.file_size / 1024 / 1024},
        )
        return
    if media.file_size and media.file_size > MAX_AUDIO_BYTES:
        await reply(update, _("This recording is over 25 MB, the transcription limit. Please send a shorter one."))
        return
    conversation = await _conversation(update, context)
    if await _resumed_if_stored(update, context, conversation):
        return
    if message.voice:
        filename = "voice.ogg"
    elif message.audio:
        filename = message.audio.file_name or "audio.mp3"
    else:
        filename = "video_note.mp4"
    try:
        file = await telegram_call(media.get_file, what="getFile")
        data = bytes(await file.download_as_bytearray())
    except TelegramError as exc:
        logger.warning("Could not download a recording in chat %s: %s", message.chat_id, exc)
        await reply(update, _("Jarvis could not download this recording from Telegram. Please send it again."))
        return
    try:
        transcript = await audio_transcribe(
            user=context.contact.user,
            data=data,
            filename=filename,
            channel=Channel.TELEGRAM,
            conversation=conversation,
            bot=context.contact.bot,
            duration_hint=_duration_seconds(media.duration),
        )
    except ReplyError as error:
        await reply(update, str(error))
        return
    text = transcript.text.strip()
    if not text:
        await reply(update, _("Jarvis heard no words in this recording."))
        return
    await reply(update, "🎙 " + text)
    caption = (message.caption or "").strip()
    await answer_message(update, context, text=f"{caption}\n\n{text}" if caption else text)


def _model_sees_images(conversation: Conversation) -> bool:
    price = price_in_force(model=conversation.effective_model)
    return bool(price and price.supports_images)


@jarvis_handler
async def photo_message(update: Update, context: JarvisContext) -> None:
    """Send a photo (and its caption) to the model when it can see images; "/image ..." as caption edits it."""
    message = update.effective_message
    caption = (message.caption or "").strip()
    prompt = media.image_command(caption)
    if prompt is not None:
        await _draw(update, context, text=caption, prompt=prompt, picture=message.photo[-1])
        return
    conversation = await _conversation(update, context)
    if not await sync_to_async(_model_sees_images)(conversation):
        await reply(
            update,
            _(
                "The model of this chat (%(model)s) cannot look at images. Describe the picture in words, or "
                "pick a persona whose model can see images with /mode."
            )
            % {"model": conversation.effective_model},
        )
        return
    caption = message.caption or ""
    if _is_group(message.chat.type):
        caption = _without_mention(caption, context.bot.username or "")
    photo = message.photo[-1]
    if photo.file_size and photo.file_size > TELEGRAM_DOWNLOAD_LIMIT:
        await reply(update, _("This photo is too large to download (over 20 MB). Please send a smaller one."))
        return
    if await _resumed_if_stored(update, context, conversation):
        return
    attachment = await _picture_attachment(update, photo)
    if attachment is not None:
        await answer_message(update, context, text=caption, attachments=[attachment])


@jarvis_handler
async def other_message(update: Update, context: JarvisContext) -> None:
    """Say what Jarvis can handle when it gets something else (a sticker, a location, ...)."""
    await reply(
        update,
        _(
            "Jarvis cannot handle this kind of message. Send text, a voice message, an audio file, a video note, "
            "a photo or a document."
        ),
    )


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
