"""Documents people send: read into the conversation, and their caption (or the next message) answered."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.utils.translation import gettext as _
from telegram import Update

from botapp.conversations import ReplyRefused, documents_accept
from botapp.documents.services import Upload, upload_refusal
from botapp.telegram.handlers import (
    JarvisContext,
    chat_conversation,
    download,
    is_group,
    jarvis_handler,
    reply,
    without_mention,
)
from botapp.telegram.handlers.chat import deliver_turn, documents_wait, resumed_if_stored


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
    group = is_group(chat.type)
    if group:
        caption = without_mention(caption, context.bot.username or "")
    conversation = await chat_conversation(update, context)
    if await resumed_if_stored(update, context, conversation):
        return
    failure = _("Jarvis could not download “%(name)s” from Telegram. Please send it again.") % {"name": file_name}
    data = await download(update, attached, what="a document", failure=failure)
    if data is None:
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
        await documents_wait(
            context.bot, chat_id=chat.id, question=accepted.message, reply_to=message.message_id, keep=True
        )
        return
    reply_to = message.message_id if group else None
    await deliver_turn(context.bot, accepted.turn, chat_id=chat.id, group=group, reply_to=reply_to)
