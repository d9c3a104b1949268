"""Pictures (/image, editing) and voice answers (/voice) in Telegram, priced exactly, with their failures."""

from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings

from botapp.models import (
    Conversation,
    MediaFile,
    MediaKind,
    Message,
    MessageStatus,
    Persona,
    Profile,
    Role,
    UsageKind,
    UsageRecord,
)
from botapp.usage import usage_record_create
from tests.factories import PersonaFactory
from tests.fakes.files import ogg_opus_silence
from tests.fakes.openai_server import Behaviour
from tests.telegram_support import TOKEN, Running

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)

MILLION = Decimal(1_000_000)
JPEG = b"\xff\xd8\xff\xe0" + bytes(3000)


def gpt_image_cost(usage: dict) -> Decimal:
    """What gpt-image-1 costs for the usage the fake reported, at the seed prices (pricing.md)."""
    details = usage["input_tokens_details"]
    return (
        details["text_tokens"] * Decimal("5.00")
        + details["image_tokens"] * Decimal("10.00")
        + usage["output_tokens"] * Decimal("40.00")
    ) / MILLION


def tts_cost(usage: dict) -> Decimal:
    """What gpt-4o-mini-tts costs: text input $0.60 and audio output $12.00 per million tokens."""
    return (usage["input_tokens"] * Decimal("0.60") + usage["output_tokens"] * Decimal("12.00")) / MILLION


def stored_bytes(item: MediaFile) -> bytes:
    return (Path(django_settings.MEDIA_ROOT) / item.file.name).read_bytes()


@sync_to_async
def ledger(kind: str) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(kind=kind).order_by("id"))


@sync_to_async
def files(kind: str) -> list[MediaFile]:
    return list(MediaFile.objects.filter(kind=kind).order_by("id"))


# --- Pictures -----------------------------------------------------------------------------------


async def test_image_sends_a_photo_captioned_with_the_prompt_and_charges_the_reported_tokens(jarvis: Running):
    """/image PROMPT: a photo captioned with the prompt; the ledger row is the fake's usage times the price table."""
    jarvis.telegram.push_text(TOKEN, 901, "/image a lighthouse at dawn, in watercolour")
    [photo] = await jarvis.answered(901)
    assert photo.kind == "photo" and photo.text == "a lighthouse at dawn, in watercolour"
    [request] = jarvis.openai.image_requests()
    assert request.path.endswith("/images/generations")
    assert request.body["model"] == "gpt-image-1" and request.body["size"] == "1024x1024"
    assert "response_format" not in request.body
    [record] = await ledger(UsageKind.IMAGE)
    assert record.model == "gpt-image-1" and record.priced
    assert record.input_tokens == request.usage["input_tokens"]
    assert record.output_tokens == record.image_output_tokens == request.usage["output_tokens"] == 1056
    assert record.cost_usd == gpt_image_cost(request.usage)
    [picture] = await files(MediaKind.IMAGE)
    [upload] = [call.params["photo"] for call in jarvis.telegram.calls("sendPhoto")]
    assert upload.data == stored_bytes(picture) and picture.content_type == "image/png"
    answer = await Message.objects.aget(role=Role.ASSISTANT)
    question = await Message.objects.aget(role=Role.USER)
    assert question.content == "/image a lighthouse at dawn, in watercolour" and question.id < answer.id
    assert answer.status == MessageStatus.COMPLETE and picture.message_id == answer.pk
    assert record.message_id == answer.pk and answer.telegram_reply_ids == [photo.message_id]
    assert jarvis.openai.chat_requests() == []
    assert [call.params["action"] for call in jarvis.telegram.calls("sendChatAction")] in ([], ["upload_photo"])


async def test_image_in_chinese_draws_and_explains_itself_in_chinese(jarvis: Running):
    """A Chinese client gets the picture with its Chinese prompt, and the usage sentence in Chinese."""
    jarvis.telegram.push_text(TOKEN, 902, "/image", language_code="zh-hans")
    [hint] = await jarvis.answered(902)
    assert "/image" in hint.text and "画" in hint.text
    jarvis.telegram.push_text(TOKEN, 902, "/image 海边的灯塔，水彩画", language_code="zh-hans")
    hint, photo = await jarvis.answered(902, 2)
    assert photo.kind == "photo" and photo.text == "海边的灯塔，水彩画"
    assert jarvis.openai.image_requests()[0].body["prompt"] == "海边的灯塔，水彩画"


async def test_image_menu_and_help_name_the_new_commands_in_both_languages(jarvis: Running):
    """The command menu lists /image and /voice, with Chinese descriptions for Chinese clients."""
    english = {c["command"]: c["description"] for c in jarvis.telegram.commands(TOKEN)}
    chinese = {c["command"]: c["description"] for c in jarvis.telegram.commands(TOKEN, language_code="zh")}
    assert {"image", "voice"} <= english.keys() and {"image", "voice"} <= chinese.keys()
    assert chinese["image"] != english["image"] and chinese["voice"] != english["voice"]


async def test_replying_image_to_a_picture_edits_it(jarvis: Running):
    """Replying "/image INSTRUCTION" to Jarvis's picture sends that picture to images.edit and shows the result."""
    jarvis.telegram.push_text(TOKEN, 903, "/image a red bicycle")
    [first] = await jarvis.answered(903)
    jarvis.telegram.push_text(TOKEN, 903, "/image make it blue", reply_to_message_id=first.message_id)
    first, edited = await jarvis.answered(903, 2)
    assert edited.kind == "photo" and edited.text == "make it blue"
    _generate, edit = jarvis.openai.image_requests()
    assert edit.path.endswith("/images/edits") and edit.body["prompt"] == "make it blue"
    [sent] = edit.form["images"]
    assert sent["size"] == len(jarvis.telegram.calls("sendPhoto")[0].params["photo"].data)
    records = await ledger(UsageKind.IMAGE)
    assert records[1].image_input_tokens == 194 and records[1].cost_usd == gpt_image_cost(edit.usage)
    question = await Message.objects.filter(role=Role.USER).alatest("id")
    assert len(question.attachments) == 1


async def test_a_photo_captioned_image_is_edited(jarvis: Running):
    """A photo sent with the caption "/image INSTRUCTION" is edited, even for a model that cannot see images."""
    jarvis.telegram.push_photo(TOKEN, 904, JPEG, caption="/image 加一顶帽子", language_code="zh")
    [photo] = await jarvis.answered(904)
    assert photo.kind == "photo" and photo.text == "加一顶帽子"
    [edit] = jarvis.openai.image_requests()
    assert edit.path.endswith("/images/edits") and edit.form["images"][0]["size"] == len(JPEG)
    assert jarvis.openai.chat_requests() == []


async def test_per_picture_models_are_charged_by_size_and_quality(jarvis: Running, settings):
    """dall-e-3 reports no tokens: the picture is charged from the per-picture table (1792x1024 hd = $0.12)."""
    settings.OPENAI_IMAGE_MODEL = "dall-e-3"
    persona = await sync_to_async(PersonaFactory)(image_size="1792x1024", image_quality="hd")
    jarvis.bot.default_persona = persona
    await jarvis.bot.asave(update_fields=["default_persona"])
    jarvis.telegram.push_text(TOKEN, 905, "/image a castle")
    [photo] = await jarvis.answered(905)
    assert photo.text == "a castle"
    [request] = jarvis.openai.image_requests()
    assert request.body["response_format"] == "b64_json" and request.body["quality"] == "hd"
    [record] = await ledger(UsageKind.IMAGE)
    assert (record.images, record.image_size, record.image_quality) == (1, "1792x1024", "hd")
    assert record.cost_usd == Decimal("0.12") and record.image_price_each == Decimal("0.12") and record.priced
    answer = await Message.objects.aget(role=Role.ASSISTANT)
    assert answer.content == "A detailed picture of a castle"


async def test_a_model_without_a_price_is_recorded_unpriced(jarvis: Running, settings):
    """An image model with no price row is still recorded, at $0, flagged for the dashboard's unpriced list."""
    settings.OPENAI_IMAGE_MODEL = "gpt-image-9"
    jarvis.telegram.push_text(TOKEN, 906, "/image a bird")
    await jarvis.answered(906)
    [record] = await ledger(UsageKind.IMAGE)
    assert record.model == "gpt-image-9" and not record.priced and record.cost_usd == 0


# --- Picture failures ---------------------------------------------------------------------------


async def test_a_safety_refusal_is_a_sentence_and_the_next_message_works(jarvis: Running):
    """The provider's safety refusal reaches the person as a sentence; nothing is charged; the chat goes on."""
    jarvis.openai.enqueue(
        Behaviour(status=400, error_code="moderation_blocked", error_message="Rejected by the safety system."),
        endpoint="images",
    )
    jarvis.telegram.push_text(TOKEN, 907, "/image something forbidden")
    [refusal] = await jarvis.answered(907)
    assert refusal.text.startswith("⚠️") and "safety rules" in refusal.text
    assert await ledger(UsageKind.IMAGE) == [] and await files(MediaKind.IMAGE) == []
    answer = await Message.objects.aget(role=Role.ASSISTANT)
    assert answer.status == MessageStatus.FAILED and "safety rules" in answer.error
    jarvis.telegram.push_text(TOKEN, 907, "Hello again")
    _refusal, echo = await jarvis.answered(907, 2)
    assert echo.text == "Echo: Hello again"


async def test_a_picture_that_takes_too_long_is_a_sentence(jarvis: Running, settings):
    """An image call past OPENAI_IMAGE_TIMEOUT is given up with a sentence naming the limit; nothing charged."""
    settings.OPENAI_IMAGE_TIMEOUT = 1.0
    jarvis.openai.enqueue(Behaviour(delay=6.0), endpoint="images")
    jarvis.telegram.push_text(TOKEN, 908, "/image a slow snail")
    [sentence] = await jarvis.answered(908, timeout=30)
    assert "not ready within 1 seconds" in sentence.text
    assert await ledger(UsageKind.IMAGE) == []


async def test_an_unsupported_size_is_the_providers_reason_as_a_sentence(jarvis: Running):
    """A persona size the model does not accept costs a sentence with the provider's allowed sizes, no crash."""
    persona = await sync_to_async(PersonaFactory)(image_size="999x999")
    jarvis.bot.default_persona = persona
    await jarvis.bot.asave(update_fields=["default_persona"])
    jarvis.telegram.push_text(TOKEN, 909, "/image a square", language_code="zh")
    [sentence] = await jarvis.answered(909)
    assert "999x999" in sentence.text and "1536x1024" in sentence.text
    assert "尺寸" in sentence.text
    assert await ledger(UsageKind.IMAGE) == []


async def test_over_budget_is_refused_before_the_provider_is_called(jarvis: Running):
    """A person whose daily budget is spent gets the budget sentence; the image service is never called."""
    jarvis.telegram.push_text(TOKEN, 910, "Hello")
    await jarvis.answered(910)
    conversation = await Conversation.objects.select_related("user").aget(telegram_chat_id=910)
    await Profile.objects.filter(user=conversation.user).aupdate(daily_budget_usd=Decimal("0.01"))
    await sync_to_async(usage_record_create)(
        user=conversation.user, kind=UsageKind.CHAT, model="gpt-4o", channel="telegram", output_tokens=10_000
    )
    jarvis.telegram.push_text(TOKEN, 910, "/image an expensive yacht")
    _hello, sentence = await jarvis.answered(910, 2)
    assert "daily budget" in sentence.text
    assert jarvis.openai.image_requests() == []


@pytest.mark.parametrize(
    ("picture", "padding"),
    [((9000, 1100), 0), ((64, 64), 11 * 1024 * 1024)],
    ids=["sides over 10000", "file over 10 MB"],
)
async def test_a_picture_too_large_for_a_photo_is_sent_as_a_document(jarvis: Running, picture, padding):
    """A picture Telegram would refuse as a photo (sides, or bytes) arrives as a document with its caption."""
    jarvis.openai.enqueue(Behaviour(picture=picture, picture_padding=padding), endpoint="images")
    jarvis.telegram.push_text(TOKEN, 911, "/image a very wide panorama")
    [document] = await jarvis.answered(911, timeout=30)
    assert document.kind == "document" and document.text == "a very wide panorama"
    assert [call.ok for call in jarvis.telegram.calls("sendPhoto")] == []
    [stored] = await files(MediaKind.IMAGE)
    assert (stored.width, stored.height) == picture


# --- Voice answers ------------------------------------------------------------------------------


async def test_voice_switches_answers_to_voice_notes_and_back(jarvis: Running):
    """/voice on: the answer comes as an OGG/Opus voice note captioned with its text, charged as speech; off: text."""
    jarvis.telegram.push_text(TOKEN, 912, "/voice")
    [on] = await jarvis.answered(912)
    assert "Voice answers are on" in on.text
    jarvis.telegram.push_text(TOKEN, 912, "Tell me a joke")
    _on, note = await jarvis.answered(912, 2)
    assert note.kind == "voice" and note.text == "Echo: Tell me a joke"
    [call] = jarvis.telegram.calls("sendVoice")
    assert call.params["voice"].data[:4] == b"OggS" and int(call.params["duration"]) == 1
    [speech] = jarvis.openai.speech_requests()
    assert speech.body["model"] == "gpt-4o-mini-tts" and speech.body["response_format"] == "opus"
    assert speech.body["input"] == "Echo: Tell me a joke" and speech.body["voice"] == "alloy"
    [record] = await ledger(UsageKind.SPEECH)
    assert record.input_tokens == speech.usage["input_tokens"] and record.cost_usd == tts_cost(speech.usage)
    [recording] = await files(MediaKind.SPEECH)
    assert stored_bytes(recording) == call.params["voice"].data == ogg_opus_silence(1.0)
    assert recording.duration_seconds == Decimal("1.000")
    jarvis.telegram.push_text(TOKEN, 912, "/voice")
    jarvis.telegram.push_text(TOKEN, 912, "And another")
    messages = await jarvis.answered(912, 4)
    assert "Voice answers are off" in messages[2].text
    assert messages[3].kind == "text" and messages[3].text == "Echo: And another"
    assert len(jarvis.openai.speech_requests()) == 1


async def test_voice_in_chinese_and_a_long_answer_follows_its_note_as_text(jarvis: Running):
    """In Chinese the switch answers in Chinese; an answer too long for a caption comes after the voice note."""
    jarvis.telegram.push_text(TOKEN, 913, "/voice", language_code="zh")
    [on] = await jarvis.answered(913)
    assert "语音" in on.text
    long_answer = "这是一个很长的回答。" * 150
    jarvis.openai.enqueue(Behaviour(text=long_answer))
    jarvis.telegram.push_text(TOKEN, 913, "讲个长故事", language_code="zh")
    _on, note, text = await jarvis.answered(913, 3)
    assert note.kind == "voice" and note.text == ""
    assert text.kind == "text" and text.text == long_answer
    answer = await Message.objects.aget(role=Role.ASSISTANT)
    assert answer.telegram_reply_ids == [note.message_id, text.message_id]


async def test_a_persona_can_answer_with_voice_by_default_and_new_keeps_the_switch(jarvis: Running):
    """A persona that speaks by default answers with voice notes; /voice off survives /new."""
    persona = await sync_to_async(PersonaFactory)(speaks_by_default=True, voice="nova")
    jarvis.bot.default_persona = persona
    await jarvis.bot.asave(update_fields=["default_persona"])
    jarvis.telegram.push_text(TOKEN, 914, "Hi")
    [note] = await jarvis.answered(914)
    assert note.kind == "voice" and jarvis.openai.speech_requests()[0].body["voice"] == "nova"
    jarvis.telegram.push_text(TOKEN, 914, "/voice")
    jarvis.telegram.push_text(TOKEN, 914, "/new")
    jarvis.telegram.push_text(TOKEN, 914, "Hi again")
    messages = await jarvis.answered(914, 4)
    assert messages[-1].kind == "text" and messages[-1].text == "Echo: Hi again"
    assert await Conversation.objects.filter(telegram_chat_id=914, voice_answers=False).acount() == 2


async def test_a_speech_failure_still_delivers_the_text(jarvis: Running):
    """When the speech service fails, the answer arrives as text with a sentence saying why there is no voice."""
    await Persona.objects.filter(name="Jarvis").aupdate(speaks_by_default=True)
    jarvis.openai.enqueue(Behaviour(status=500), Behaviour(status=500), Behaviour(status=500), endpoint="speech")
    jarvis.telegram.push_text(TOKEN, 915, "Are you there?")
    [text] = await jarvis.answered(915, timeout=30)
    assert text.kind == "text" and text.text.startswith("Echo: Are you there?") and "⚠️" in text.text
    assert await ledger(UsageKind.SPEECH) == [] and len(await ledger(UsageKind.CHAT)) == 1


async def test_tts_1_is_charged_per_character(jarvis: Running, settings):
    """tts-1 reports no tokens: the recording is charged per character read out ($15 per million)."""
    settings.OPENAI_TTS_MODEL = "tts-1"
    await Persona.objects.filter(name="Jarvis").aupdate(speaks_by_default=True)
    jarvis.telegram.push_text(TOKEN, 916, "Count me")
    [note] = await jarvis.answered(916)
    assert note.kind == "voice"
    [speech] = jarvis.openai.speech_requests()
    assert "stream_format" not in speech.body
    [record] = await ledger(UsageKind.SPEECH)
    assert record.characters == len("Echo: Count me") and record.input_tokens == 0
    assert record.cost_usd == len("Echo: Count me") * Decimal("15.00") / MILLION
