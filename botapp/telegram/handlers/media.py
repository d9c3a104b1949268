"""What people send besides text and documents: photos, recordings (voice, audio, video notes) and /image."""

from __future__ import annotations

import base64
from typing import Any

from asgiref.sync import sync_to_async
from django.utils.translation import gettext as _
from telegram import Message as TelegramMessage
from telegram import Update

from botapp import media
from botapp.conversations import MAX_AUDIO_BYTES, ReplyError, audio_transcribe
from botapp.models import Channel
from botapp.telegram import selectors
from botapp.telegram.delivery import telegram_seconds
from botapp.telegram.handlers import (
    TELEGRAM_DOWNLOAD_LIMIT,
    JarvisContext,
    chat_conversation,
    download,
    is_group,
    jarvis_handler,
    reply,
    without_mention,
)
from botapp.telegram.handlers.chat import answer_message, resumed_if_stored


@jarvis_handler
async def photo_message(update: Update, context: JarvisContext) -> None:
    """Send a photo (and its caption) to the model when it can see images; "/image ..." as caption edits it."""
    message = update.effective_message
    caption = (message.caption or "").strip()
    prompt = media.image_command(caption)
    if prompt is not None:
        await _draw(update, context, text=caption, prompt=prompt, picture=message.photo[-1])
        return
    conversation = await chat_conversation(update, context)
    if not await sync_to_async(selectors.model_sees_images)(conversation=conversation):
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
    if is_group(message.chat.type):
        caption = without_mention(caption, context.bot.username or "")
    photo = message.photo[-1]
    if photo.file_size and photo.file_size > TELEGRAM_DOWNLOAD_LIMIT:
        await reply(update, _("This photo is too large to download (over 20 MB). Please send a smaller one."))
        return
    if await resumed_if_stored(update, context, conversation):
        return
    attachment = await _picture_attachment(update, photo)
    if attachment is not None:
        await answer_message(update, context, text=caption, attachments=[attachment])


async def _picture_attachment(update: Update, holder: Any) -> dict[str, str] | None:
    """Download a photo (or a picture sent as a file) to send along with a message; None after a sentence."""
    mime = getattr(holder, "mime_type", None) or "image/jpeg"
    if holder.file_size and holder.file_size > TELEGRAM_DOWNLOAD_LIMIT:
        await reply(update, _("This photo is too large to download (over 20 MB). Please send a smaller one."))
        return None
    failure = _("Jarvis could not download this photo from Telegram. Please send it again.")
    data = await download(update, holder, what="a photo", failure=failure)
    if data is None:
        return None
    return {"url": f"data:{mime};base64," + base64.b64encode(data).decode("ascii")}


def _replied_picture(message: TelegramMessage) -> Any:
    """The photo (or picture sent as a file) a message replies to, if any."""
    replied = message.reply_to_message
    if replied is None:
        return None
    if replied.photo:
        return replied.photo[-1]
    document = replied.document
    if document is not None and (document.mime_type or "").startswith("image/"):
        return document
    return None


@jarvis_handler
async def image(update: Update, context: JarvisContext) -> None:
    """Draw a picture from /image PROMPT, or change the picture the command replies to."""
    message = update.effective_message
    text = (message.text or "").strip()
    await _draw(update, context, text=text, prompt=media.image_command(text) or "", picture=_replied_picture(message))


async def _draw(update: Update, context: JarvisContext, *, text: str, prompt: str, picture: Any) -> None:
    """Answer an /image request (with the picture to change, if any), or say how to make one."""
    if not prompt:
        await reply(
            update,
            _(
                "Say what to draw after /image, for example: /image a lighthouse at dawn, in watercolour. "
                "To change a picture, reply to it with /image and what to change, or send a photo with that caption."
            ),
        )
        return
    conversation = await chat_conversation(update, context)
    if await resumed_if_stored(update, context, conversation):
        return
    attachments = []
    if picture is not None:
        attachment = await _picture_attachment(update, picture)
        if attachment is None:
            return
        attachments.append(attachment)
    await answer_message(update, context, text=text, attachments=attachments)


@jarvis_handler
async def voice_message(update: Update, context: JarvisContext) -> None:
    """Transcribe a voice message, audio file or video note, show the transcript, then answer it."""
    message = update.effective_message
    recording = message.voice or message.audio or message.video_note
    if recording.file_size and recording.file_size > TELEGRAM_DOWNLOAD_LIMIT:
        await reply(
            update,
            _(
                "This recording is %(size).1f MB; Telegram lets bots download at most 20 MB. "
                "Please send a shorter recording."
            )
            % {"size": recording.file_size / 1024 / 1024},
        )
        return
    if recording.file_size and recording.file_size > MAX_AUDIO_BYTES:
        await reply(update, _("This recording is over 25 MB, the transcription limit. Please send a shorter one."))
        return
    conversation = await chat_conversation(update, context)
    if await resumed_if_stored(update, context, conversation):
        return
    if message.voice:
        filename = "voice.ogg"
    elif message.audio:
        filename = message.audio.file_name or "audio.mp3"
    else:
        filename = "video_note.mp4"
    failure = _("Jarvis could not download this recording from Telegram. Please send it again.")
    data = await download(update, recording, what="a recording", failure=failure)
    if data is None:
        return
    try:
        transcript = await audio_transcribe(
            user=context.contact.user,
            data=data,
            filename=filename,
            channel=Channel.TELEGRAM,
            conversation=conversation,
            bot=context.contact.bot,
            duration_hint=None if recording.duration is None else telegram_seconds(recording.duration),
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
