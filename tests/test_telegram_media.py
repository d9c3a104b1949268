"""Voice, audio and video notes, photos, and everything else the bot is sent."""

import pytest
from asgiref.sync import sync_to_async

from botapp.models import Conversation, Message, ModelPrice, Role, UsageKind, UsageRecord
from tests.factories import PersonaFactory
from tests.fakes.openai_server import Behaviour
from tests.telegram_support import TOKEN, Running

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)

AUDIO = b"OggS" + bytes(2000)
JPEG = b"\xff\xd8\xff\xe0" + bytes(3000)


async def test_voice_is_transcribed_shown_and_answered(jarvis: Running):
    """A voice message is downloaded, transcribed (its own ledger row), the transcript shown, then answered."""
    jarvis.openai.enqueue(Behaviour(transcript="What time is it in Tokyo?", duration=4.0), endpoint="transcription")
    jarvis.telegram.push_voice(TOKEN, 701, AUDIO, duration=4)
    shown, answer = await jarvis.answered(701, 2)
    assert shown.text == "🎙 What time is it in Tokyo?"
    assert answer.text == "Echo: What time is it in Tokyo?"
    [transcription] = [s for s in jarvis.openai.served if s.path.endswith("/audio/transcriptions")]
    assert transcription.form["file_size"] == len(AUDIO)
    kinds = await sync_to_async(lambda: sorted(UsageRecord.objects.values_list("kind", flat=True)))()
    assert kinds == [UsageKind.CHAT, UsageKind.TRANSCRIPTION]
    record = await UsageRecord.objects.aget(kind=UsageKind.TRANSCRIPTION)
    assert record.audio_seconds == 4 and record.cost_usd > 0
    question = await Message.objects.aget(role=Role.USER)
    assert question.content == "What time is it in Tokyo?"


async def test_audio_file_and_video_note_are_transcribed_too(jarvis: Running):
    """Audio files and round video notes go the same way as voice messages."""
    jarvis.telegram.push_audio(TOKEN, 702, AUDIO, file_name="memo.mp3")
    await jarvis.answered(702, 2)
    jarvis.telegram.push_video_note(TOKEN, 702, AUDIO)
    answers = await jarvis.answered(702, 4)
    assert [a.text for a in answers] == ["🎙 This is a fake transcript.", "Echo: This is a fake transcript."] * 2
    names = [s.form["file_name"] for s in jarvis.openai.served if s.path.endswith("/audio/transcriptions")]
    assert names == ["memo.mp3", "video_note.mp4"]


async def test_recording_over_telegrams_download_limit_gets_a_sentence(jarvis: Running):
    """A voice message over 20 MB is refused with a sentence, without downloading or transcribing it."""
    jarvis.telegram.push_voice(TOKEN, 703, AUDIO, file_size=21 * 1024 * 1024)
    [answer] = await jarvis.answered(703)
    assert "20 MB" in answer.text
    assert jarvis.telegram.calls("getFile") == []
    assert jarvis.openai.served == []


async def test_recording_over_the_providers_limit_gets_a_sentence(jarvis: Running, settings):
    """Audio over the provider's 25 MB limit is refused by the funnel with a sentence, no transcription."""
    big = bytes(26 * 1024 * 1024)
    # A self-hosted Bot API server lets bots download large files; Telegram reports no size for some.
    jarvis.telegram.push_audio(TOKEN, 704, big, file_size=0)
    [answer] = await jarvis.answered(704, timeout=20)
    assert "25 MB" in answer.text
    assert jarvis.openai.served == []


async def test_photo_goes_to_a_model_that_sees_images(jarvis: Running):
    """A photo with a caption reaches an image-capable model as an image part and is answered."""
    jarvis.telegram.push_photo(TOKEN, 705, JPEG, caption="What is this?")
    [answer] = await jarvis.answered(705)
    assert answer.text == "Echo: What is this? (with image)"
    content = jarvis.openai.chat_requests()[-1].body["messages"][-1]["content"]
    image = next(part for part in content if part["type"] == "image_url")
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")
    question = await Message.objects.aget(role=Role.USER)
    assert len(question.attachments) == 1 and question.content == "What is this?"


async def test_photo_without_caption_is_answered(jarvis: Running):
    """A photo alone (no caption) is still sent to the model and answered."""
    jarvis.telegram.push_photo(TOKEN, 706, JPEG)
    [answer] = await jarvis.answered(706)
    assert answer.text.startswith("Echo:") and "(with image)" in answer.text


async def test_photo_for_a_model_without_vision_gets_a_sentence(jarvis: Running):
    """When the conversation's model cannot see images, the person is told so and nothing is spent."""
    await ModelPrice.objects.acreate(model="text-only-model", input_per_mtok=1, output_per_mtok=1)
    persona = await sync_to_async(PersonaFactory)(model="text-only-model")
    jarvis.bot.default_persona = persona
    await jarvis.bot.asave(update_fields=["default_persona"])
    jarvis.telegram.push_photo(TOKEN, 707, JPEG, caption="Look")
    [answer] = await jarvis.answered(707)
    assert (await Conversation.objects.aget(telegram_chat_id=707)).persona_id == persona.pk
    assert "cannot look at images" in answer.text and "/mode" in answer.text
    assert jarvis.openai.chat_requests() == []
    assert jarvis.telegram.calls("getFile") == []


@pytest.mark.parametrize("kind", ["sticker", "location"])
async def test_other_messages_get_a_sentence_about_what_jarvis_handles(jarvis: Running, kind: str):
    """Stickers and locations get a sentence listing what Jarvis can handle, no model call."""
    if kind == "sticker":
        jarvis.telegram.push_sticker(TOKEN, 708)
    else:
        jarvis.telegram.push_location(TOKEN, 708, 48.85, 2.35)
    [answer] = await jarvis.answered(708)
    assert "cannot handle this kind of message" in answer.text and "voice message" in answer.text
    assert jarvis.openai.served == []
