"""Answering in a chat: text messages in, answers out as streamed text, a picture or a voice note.

Every way a question reaches the funnel (text, a recording's transcript, a photo, a document, /retry, a restart)
ends in `deliver_turn`, which waits for the question's documents, then streams or sends the stored answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.utils import translation
from django.utils.translation import gettext as _
from telegram import Message as TelegramMessage
from telegram import Update
from telegram.constants import ChatAction
from telegram.error import TelegramError
from telegram.ext import ExtBot

from botapp import media
from botapp.conversations import (
    Begun,
    ReplyError,
    ReplyRefused,
    Turn,
    reply_speak,
    turn_answer,
    turn_draw,
    turn_for_pending_reply,
)
from botapp.database import database_retry, is_unavailable
from botapp.documents.context import sources_line
from botapp.documents.progress import documents_of, progress_label
from botapp.models import Conversation, MediaFile, Message, MessageStatus
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
from botapp.telegram.handlers import JarvisContext, is_group, jarvis_handler, refuse, reply, without_mention
from botapp.tools.drawing import answer_pictures, drew_pictures

logger = logging.getLogger(__name__)

# How long a chat waits for its documents to be read before it is told they are not ready yet.
DOCUMENT_WAIT_SECONDS = 600.0
DOCUMENT_POLL_SECONDS = 1.0
DOCUMENT_EDIT_SECONDS = 3.0


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
    if is_group(message.chat.type):
        text = without_mention(text, context.bot.username or "")
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
            await refuse(update, context)
        elif taken.refusal is not None:
            await reply(update, taken.refusal)
        elif taken.accepted is not None:
            await _answer_accepted(update, context, taken.accepted, taken)


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
        await resume_stored(update, context, accepted.conversation, *accepted.stored)
        return
    group = is_group(chat.type)
    # In a group the answer quotes its question, so everyone sees whom Jarvis answers.
    await deliver_turn(
        context.bot, accepted.turn, chat_id=chat.id, group=group, reply_to=message.message_id if group else None,
        speaks=taken.speaks if taken else None, begun=taken.begun if taken else None,
        update=services.update_in_hand.get() if taken else None,
    )  # fmt: skip


async def resumed_if_stored(update: Update, context: JarvisContext, conversation: Conversation) -> bool:
    """A message stored before (a redelivery, or a restart after a crash): finish its answer, not a new one."""
    stored = await sync_to_async(selectors.stored_question)(
        conversation=conversation, telegram_message_id=update.effective_message.message_id
    )
    if stored is None:
        return False
    await resume_stored(update, context, conversation, *stored)
    return True


async def resume_stored(
    update: Update, context: JarvisContext, conversation: Conversation, question: Message, answer: Message | None
) -> None:
    """A message stored before (a redelivery or a restart): finish what is missing, never answer twice."""
    chat = update.effective_chat
    if answer is None or (answer.telegram_reply_ids and answer.status != MessageStatus.PENDING):
        return
    if answer.status == MessageStatus.PENDING:
        turn = await sync_to_async(turn_for_pending_reply)(answer)
        await deliver_turn(
            context.bot, turn, chat_id=chat.id, group=is_group(chat.type), reply_to=question.telegram_message_id
        )
        return
    # Answered but never shown (the process died between storing and sending).
    picture = (
        await sync_to_async(selectors.answer_picture)(answer=answer)
        if answer.status == MessageStatus.COMPLETE
        else None
    )
    if picture is not None:
        sent = await _send_stored_picture(context.bot, picture, chat_id=chat.id, reply_to=question.telegram_message_id)
        ids = [sent.message_id]
    else:
        text = answer.content or f"⚠️ {answer.error}"
        ids = await send_parts(context.bot, chat_id=chat.id, text=text, reply_to=question.telegram_message_id)
    await sync_to_async(services.message_reply_ids_store)(message_id=answer.pk, telegram_ids=ids)


# --- Answers ------------------------------------------------------------------------------------


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
        if finishing and len(message_ids) <= 1:
            # A one-message answer's message is remembered at its end, in one trip with the update's end; the
            # parts of a longer one are remembered as they go out, so a restart re-sends none of them.
            return
        try:
            await sync_to_async(services.message_reply_ids_store)(message_id=reply_id, telegram_ids=message_ids)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # Only a restart needs these ids; the answer goes on, and they are stored again at its end.
            logger.warning("Could not remember the messages of answer %s: the database is unavailable", reply_id)
            return
        remembered = list(message_ids)

    await documents_wait(bot, chat_id=chat_id, question=turn.user_message, reply_to=reply_to, keep=False)
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
            text = f"{error.partial}\n\n⚠️ {error}" if error.partial else f"⚠️ {error}"
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


async def _send_stored_picture(
    bot: ExtBot, picture: MediaFile, *, chat_id: int, reply_to: int | None
) -> TelegramMessage:
    """Send a picture Jarvis drew, read back from the storage."""
    data = await sync_to_async(media.media_bytes)(picture)
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
            text = f"{error.partial}\n\n⚠️ {error}" if error.partial else f"⚠️ {error}"
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
    """Send a voice note and its text; the ids of the messages that show it."""
    data = await sync_to_async(media.media_bytes)(recording)
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


# --- Documents the question waits for -----------------------------------------------------------


def _document_ids(question: Message) -> list[int]:
    """The documents sent with a question."""
    return [a["document_id"] for a in question.attachments or () if a.get("type") == "document"]


async def documents_wait(
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


# --- Everything else ----------------------------------------------------------------------------


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
