"""Pictures and speech: made by the provider (botapp.llm), kept in Django's file storage, priced in the ledger.

The funnel (botapp.conversations) calls this module for /image turns and spoken answers; a tool can call
`image_generate` directly. Files go through `default_storage` (MEDIA_ROOT, or an S3 bucket when configured),
always outside database transactions (an upload is a network call), and a file whose rows could not be
written is removed again. Deleting a `MediaFile` row, by hand, by cascade or by the retention job, deletes
its file once the deletion is committed.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.urls import reverse
from django.utils.translation import gettext as _
from markdown_it import MarkdownIt

from botapp import llm
from botapp.models import (
    Conversation,
    MediaFile,
    MediaKind,
    Message,
    ModelPrice,
    Persona,
    UsageKind,
    UsageRecord,
    UsageStatus,
    media_upload_to,
)
from botapp.usage import budget_refusal, price_in_force, profile_for, usage_record_create

logger = logging.getLogger(__name__)

PICTURE_FORMATS = {"PNG": ("image/png", ".png"), "JPEG": ("image/jpeg", ".jpg"), "WEBP": ("image/webp", ".webp")}
SPEECH_SUFFIXES = {"audio/ogg": ".ogg", "audio/mpeg": ".mp3", "audio/aac": ".aac", "audio/wav": ".wav"}
# The picture edited is sent to the provider as it is; bigger ones are refused before any spend.
MAX_SOURCE_BYTES = 25 * 1024 * 1024
DEFAULT_VOICE = "alloy"
_IMAGE_COMMAND = re.compile(r"^/image(?:@\w+)?(?:\s+|$)", re.IGNORECASE)


class MediaError(Exception):
    """No picture or recording; `str(error)` is the sentence to show the person."""


class MediaRefused(MediaError):
    """Refused before the provider was called: a spent budget, a blocked person, a picture too large."""


# --- Reading what people and providers send ----------------------------------------------------


def image_command(text: str) -> str | None:
    """The prompt of an "/image PROMPT" message ("" for a bare /image), or None when it is not one."""
    match = _IMAGE_COMMAND.match((text or "").strip())
    return None if match is None else text.strip()[match.end() :].strip()


@dataclass(frozen=True)
class PictureFacts:
    content_type: str
    suffix: str
    width: int
    height: int


def picture_facts(data: bytes) -> PictureFacts:
    """What a picture is, read from its header by Pillow; MediaError when it is not a picture Jarvis keeps."""
    # Pillow and mutagen (about 7 MB resident) load with the first picture or speech, not in every process.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = PICTURE_FORMATS.get(image.format or "")
            width, height = image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise MediaError(_("The image service sent something that is not a picture. Please try again.")) from exc
    if kind is None:
        raise MediaError(_("The image service sent a picture in a format Jarvis cannot keep. Please try again."))
    return PictureFacts(content_type=kind[0], suffix=kind[1], width=width, height=height)


@dataclass(frozen=True)
class ImageSource:
    """A picture to be edited, as bytes."""

    data: bytes
    filename: str
    content_type: str


def image_source_from_data_url(url: str) -> ImageSource | None:
    """The picture in an attachment's data URL (how photos people send are stored), or None."""
    head, _sep, payload = url.partition(",")
    if not head.startswith("data:image/") or ";base64" not in head:
        return None
    content_type = head[5:].split(";", 1)[0]
    data = base64.b64decode(payload)
    suffix = {"image/png": "png", "image/webp": "webp"}.get(content_type, "jpg")
    return ImageSource(data=data, filename=f"picture.{suffix}", content_type=content_type)


def media_bytes(media: MediaFile) -> bytes:
    """A stored picture or recording, read back from the storage (a network call with S3)."""
    with media.file.open("rb") as handle:
        return handle.read()


def image_source_from_media(media: MediaFile) -> ImageSource:
    """A picture Jarvis made before, read back from the storage."""
    data = media_bytes(media)
    suffix = media.file.name.rsplit(".", 1)[-1] if "." in media.file.name else "png"
    return ImageSource(data=data, filename=f"picture.{suffix}", content_type=media.content_type)


def speakable(text: str) -> str:
    """The words of a Markdown answer as they should be read out: no markup, code blocks left out."""
    lines: list[str] = []
    for token in MarkdownIt().parse(text or ""):
        if token.type == "inline" and token.children is not None:
            words = "".join(child.content for child in token.children if child.type in ("text", "code_inline"))
            if words.strip():
                lines.append(words.strip())
    spoken = "\n".join(lines)
    if len(spoken) <= llm.SPEECH_MAX_CHARS:
        return spoken
    # The provider reads at most SPEECH_MAX_CHARS: stop at the last sentence or word that fits.
    cut = spoken[: llm.SPEECH_MAX_CHARS]
    end = max(cut.rfind(". "), cut.rfind("。"), cut.rfind("\n"))
    if end < llm.SPEECH_MAX_CHARS // 2:
        end = cut.rfind(" ")
    return cut[: end + 1].strip() if end > 0 else cut


def media_url(media: MediaFile) -> str:
    """Where the web page and the admin fetch a file; the view checks who asks."""
    return reverse("web:media", args=[media.pk])


# --- Who pays, and whether they may -------------------------------------------------------------


def _persona(conversation: Conversation) -> Persona | None:
    if conversation.persona_id is None:
        return Persona.objects.filter(name="Jarvis").first()
    return conversation.persona


def media_check(*, user: AbstractBaseUser) -> None:
    """MediaRefused with a sentence when `user` may not spend now (blocked, or a budget is used up)."""
    profile = profile_for(user)
    if profile.is_blocked or not user.is_active:
        raise MediaRefused(_("Sorry, you are not allowed to use Jarvis. Please contact an admin."))
    refusal = budget_refusal(user=user, profile=profile)
    if refusal:
        raise MediaRefused(refusal)


def speaks(conversation: Conversation) -> bool:
    """Whether Telegram answers in this conversation are voice notes: its /voice switch, else the persona's."""
    if conversation.voice_answers is not None:
        return conversation.voice_answers
    persona = _persona(conversation)
    return bool(persona and persona.speaks_by_default)


# --- Pictures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PicturePlan:
    """What a picture will be asked for, and the price in force when it was asked."""

    model: str
    size: str
    quality: str
    price: ModelPrice | None


def picture_plan(*, conversation: Conversation) -> PicturePlan:
    """The image model (OPENAI_IMAGE_MODEL), the persona's size and quality, and the price in force."""
    persona = _persona(conversation)
    model = settings.OPENAI_IMAGE_MODEL
    return PicturePlan(
        model=model,
        size=persona.image_size if persona else "",
        quality=persona.image_quality if persona else "",
        price=price_in_force(model=model),
    )


@dataclass(frozen=True)
class StoredPicture:
    """A picture made and written to the storage, not yet recorded in the database."""

    name: str
    facts: PictureFacts
    size_bytes: int
    picture: llm.Picture
    prompt: str
    plan: PicturePlan


def _save(kind: str, suffix: str, data: bytes) -> str:
    return default_storage.save(media_upload_to(MediaFile(kind=kind), f"file{suffix}"), ContentFile(data))


def discard(name: str) -> None:
    """Delete a file from the storage, logging (not raising) a failure: a leftover file costs only space."""
    try:
        default_storage.delete(name)
    except Exception:
        logger.exception("Could not delete the unused file %s from the storage", name)


async def picture_make(*, plan: PicturePlan, prompt: str, source: ImageSource | None = None) -> StoredPicture:
    """Ask the provider for the picture (or the edit of `source`) and write it to the storage.

    Raises MediaError with the provider's reason as a sentence; nothing is stored then.
    """
    if source is not None and len(source.data) > MAX_SOURCE_BYTES:
        raise MediaRefused(
            _("The picture to change is %(size).1f MB; the image service accepts at most 25 MB.")
            % {"size": len(source.data) / 1024 / 1024}
        )
    try:
        if source is None:
            picture = await llm.image_generate(prompt=prompt, model=plan.model, size=plan.size, quality=plan.quality)
        else:
            picture = await llm.image_edit(
                prompt=prompt,
                image=source.data,
                filename=source.filename,
                content_type=source.content_type,
                model=plan.model,
                size=plan.size,
                quality=plan.quality,
            )
    except llm.LLMError as exc:
        raise MediaError(str(exc)) from exc
    facts = picture_facts(picture.data)
    name = await sync_to_async(_save)(MediaKind.IMAGE, facts.suffix, picture.data)
    return StoredPicture(
        name=name, facts=facts, size_bytes=len(picture.data), picture=picture, prompt=prompt, plan=plan
    )


def picture_record(
    *,
    stored: StoredPicture,
    conversation: Conversation,
    requested_by: AbstractBaseUser | None,
    message: Message | None,
    charge_message: Message | None,
) -> tuple[MediaFile, UsageRecord]:
    """The picture's ledger row and its `MediaFile`; call inside the caller's transaction.

    Token-billed models are charged what the provider reported; a model that reports nothing (dall-e) is
    charged per picture by size and quality. `charge_message` ties the ledger row to an answer (one
    picture charge per answer); a tool drawing several pictures for one answer passes None.
    """
    picture = stored.picture
    usage = picture.usage
    record = usage_record_create(
        user=requested_by,
        kind=UsageKind.IMAGE,
        model=picture.model,
        channel=conversation.channel,
        conversation=conversation,
        message=charge_message,
        bot=conversation.bot,
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        image_input_tokens=picture.image_input_tokens,
        image_output_tokens=picture.image_output_tokens,
        images=0 if usage else 1,
        image_size=picture.size,
        image_quality=picture.quality,
        price=stored.plan.price,
    )
    media = MediaFile.objects.create(
        conversation=conversation,
        message=message,
        usage=record,
        requested_by=requested_by,
        kind=MediaKind.IMAGE,
        file=stored.name,
        content_type=stored.facts.content_type,
        size_bytes=stored.size_bytes,
        width=stored.facts.width,
        height=stored.facts.height,
        prompt=stored.prompt,
        model=picture.model,
    )
    return media, record


@dataclass(frozen=True)
class Generated:
    """A picture made for a tool: the stored file and the ledger row that paid for it."""

    media: MediaFile
    usage: UsageRecord


async def image_generate(
    *,
    conversation: Conversation,
    prompt: str,
    requested_by: AbstractBaseUser,
    message: Message | None = None,
    source: ImageSource | None = None,
) -> Generated:
    """Draw (or, with `source`, edit) a picture for a conversation in one call: the entry point for a tool.

    Checks the person's budget first, charges the picture to them (kind `image`), keeps the file with the
    conversation and, when given, with the answer `message`. Raises MediaError with a sentence.
    """
    if not prompt.strip():
        raise MediaRefused(_("Say what to draw, for example: a lighthouse at dawn, in watercolour."))
    plan = await sync_to_async(_checked_plan)(conversation=conversation, user=requested_by)
    stored = await picture_make(plan=plan, prompt=prompt, source=source)
    try:
        return await sync_to_async(_record_generated)(stored, conversation, requested_by, message)
    except BaseException:
        await sync_to_async(discard)(stored.name)
        raise


def _checked_plan(*, conversation: Conversation, user: AbstractBaseUser) -> PicturePlan:
    media_check(user=user)
    return picture_plan(conversation=conversation)


def _record_generated(
    stored: StoredPicture, conversation: Conversation, requested_by: AbstractBaseUser, message: Message | None
) -> Generated:
    with transaction.atomic():
        media, record = picture_record(
            stored=stored, conversation=conversation, requested_by=requested_by, message=message, charge_message=None
        )
    return Generated(media=media, usage=record)


# --- Speech --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spoken:
    """An answer read out: its recording, and the ledger row (None when it was read out before)."""

    media: MediaFile
    usage: UsageRecord | None
    created: bool


def _speech_duration(data: bytes) -> Decimal | None:
    from mutagen import MutagenError
    from mutagen.oggopus import OggOpus

    try:
        return Decimal(str(round(OggOpus(io.BytesIO(data)).info.length, 3)))
    except (MutagenError, ValueError, OSError):
        return None


def _recording(message: Message) -> MediaFile | None:
    return MediaFile.objects.filter(message=message, kind=MediaKind.SPEECH).first()


def _speech_prepare(message: Message, requested_by: AbstractBaseUser) -> tuple[MediaFile | None, str, str, Any]:
    existing = _recording(message)
    if existing is not None:
        return existing, "", "", None
    media_check(user=requested_by)
    persona = _persona(message.conversation)
    model = settings.OPENAI_TTS_MODEL
    return None, model, (persona.voice if persona else "") or DEFAULT_VOICE, price_in_force(model=model)


async def message_speak(*, message: Message, requested_by: AbstractBaseUser) -> Spoken:
    """Read an answer out once (kind `speech` in the ledger) and keep the recording; later calls reuse it.

    Raises MediaError with a sentence (nothing to read, a spent budget, the provider's refusal).
    """
    existing, model, voice, price = await sync_to_async(_speech_prepare)(message, requested_by)
    if existing is not None:
        return Spoken(media=existing, usage=None, created=False)
    text = speakable(message.content)
    if not text:
        raise MediaRefused(_("This answer has no words to read out."))
    try:
        speech = await llm.speech(text=text, model=model, voice=voice)
    except llm.LLMError as exc:
        raise MediaError(str(exc)) from exc
    suffix = SPEECH_SUFFIXES.get(speech.content_type, ".bin")
    name = await sync_to_async(_save)(MediaKind.SPEECH, suffix, speech.data)
    try:
        return await sync_to_async(_speech_record)(message, requested_by, speech, text, name, price)
    except BaseException:
        await sync_to_async(discard)(name)
        raise


def _speech_record(
    message: Message, requested_by: AbstractBaseUser, speech: llm.Speech, text: str, name: str, price: Any
) -> Spoken:
    conversation = message.conversation
    usage = speech.usage
    # Models billed by characters report no tokens; any other model that reports none is estimated.
    by_characters = usage is None and llm.bills_per_character(speech.model)
    estimated = usage is None and not by_characters
    try:
        with transaction.atomic():
            record = usage_record_create(
                user=requested_by,
                kind=UsageKind.SPEECH,
                model=speech.model,
                channel=conversation.channel,
                conversation=conversation,
                message=message,
                bot=conversation.bot,
                input_tokens=usage.input_tokens
                if usage
                else 0
                if by_characters
                else llm.count_tokens(text, model=speech.model),
                output_tokens=usage.output_tokens if usage else 0,
                characters=speech.characters if by_characters else 0,
                status=UsageStatus.COMPLETE,
                estimated=estimated,
                price=price,
            )
            media = MediaFile.objects.create(
                conversation=conversation,
                message=message,
                usage=record,
                requested_by=requested_by,
                kind=MediaKind.SPEECH,
                file=name,
                content_type=speech.content_type,
                size_bytes=len(speech.data),
                duration_seconds=_speech_duration(speech.data),
                model=speech.model,
            )
    except IntegrityError:
        # Read out at the same moment by another request: that recording and its charge stand.
        discard(name)
        existing = _recording(message)
        if existing is None:
            raise
        return Spoken(media=existing, usage=None, created=False)
    return Spoken(media=media, usage=record, created=True)


# --- Files follow their rows ---------------------------------------------------------------------


@receiver(post_delete, sender=MediaFile, dispatch_uid="botapp.media.file_delete")
def _file_delete(sender: type[MediaFile], instance: MediaFile, **kwargs: Any) -> None:
    """Delete the file once the row's deletion is committed (a rolled-back deletion keeps it)."""
    name = instance.file.name
    if name:
        transaction.on_commit(lambda: discard(name), robust=True)
