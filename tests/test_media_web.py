"""Pictures and read-out answers on the web page, who may fetch them, the admin transcript, retention and S3."""

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings as django_settings
from django.core.files.storage import default_storage
from django.test import AsyncClient, Client
from django.urls import reverse
from django.utils import timezone

from botapp import media, tasks
from botapp.models import (
    Conversation,
    MediaFile,
    MediaKind,
    Message,
    MessageStatus,
    ModelImagePrice,
    ModelPrice,
    Role,
    UsageKind,
    UsageRecord,
)
from botapp.web.services import conversation_delete
from tests.factories import ConversationFactory, PersonaFactory, UserFactory
from tests.fakes.openai_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)

MILLION = Decimal(1_000_000)


def gpt_image_cost(usage: dict) -> Decimal:
    """gpt-image-1 at the seed prices: text input $5, image input $10, image output $40 per million tokens."""
    details = usage["input_tokens_details"]
    return (
        details["text_tokens"] * Decimal("5.00")
        + details["image_tokens"] * Decimal("10.00")
        + usage["output_tokens"] * Decimal("40.00")
    ) / MILLION


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def draw(client: Client, conversation: Conversation, text: str, **extra: str) -> tuple[int, dict]:
    response = client.post(reverse("web:image", args=[conversation.pk]), {"text": text, **extra})
    return response.status_code, json.loads(response.content)


def on_disk(item: MediaFile) -> Path:
    return Path(django_settings.MEDIA_ROOT) / item.file.name


def test_drawing_from_the_composer_stores_the_turn_and_the_page_shows_the_picture(fake_openai):
    """POST /image: the question and its picture answer are stored, priced from the fake's usage, and shown."""
    conversation = ConversationFactory()
    client = client_for(conversation.user)
    status, result = draw(client, conversation, "a paper boat on a pond")
    assert status == 200 and result["type"] == "done"
    picture = MediaFile.objects.get(kind=MediaKind.IMAGE)
    assert result["picture"]["url"] == reverse("web:media", args=[picture.pk]) == media.media_url(picture)
    assert result["picture"]["caption"] == "a paper boat on a pond" and result["meta"].startswith("Picture · $")
    question, answer = conversation.messages.order_by("id")
    assert (question.role, question.content) == (Role.USER, "/image a paper boat on a pond")
    assert (answer.status, answer.pk, picture.message_id) == (MessageStatus.COMPLETE, result["message_id"], answer.pk)
    [request] = fake_openai.image_requests()
    record = UsageRecord.objects.get(kind=UsageKind.IMAGE)
    assert record.cost_usd == gpt_image_cost(request.usage) and record.message_id == answer.pk
    page = client.get(reverse("web:conversation", args=[conversation.pk])).content.decode()
    assert f'src="{result["picture"]["url"]}"' in page and "Picture · $" in page
    assert 'class="picture-edit"' in page
    # A picture answer is not read out: its play button would have nothing to say.
    assert reverse("web:speech", args=[answer.pk]) not in page


def test_typing_image_and_editing_a_picture_on_the_page(fake_openai):
    """ "/image" typed in the composer draws; with edit_of the stored picture is sent to images.edit."""
    conversation = ConversationFactory()
    client = client_for(conversation.user)
    draw(client, conversation, "/image a green apple")
    first = MediaFile.objects.get()
    status, result = draw(client, conversation, "make it red", edit_of=str(first.pk))
    assert status == 200 and result["type"] == "done"
    generate, edit = fake_openai.image_requests()
    assert generate.body["prompt"] == "a green apple" and edit.body["prompt"] == "make it red"
    assert edit.form["images"][0]["size"] == first.size_bytes
    assert conversation.messages.filter(role=Role.USER).last().content == "/image make it red"
    edited = UsageRecord.objects.filter(kind=UsageKind.IMAGE).order_by("id").last()
    assert edited.image_input_tokens == 194 and edited.cost_usd == gpt_image_cost(edit.usage)


def test_picture_refusals_on_the_page(fake_openai):
    """An empty prompt or someone else's picture is refused before anything is stored; a safety refusal is stored."""
    conversation = ConversationFactory()
    client = client_for(conversation.user)
    status, result = draw(client, conversation, "/image   ")
    assert status == 400 and "Say what to draw" in result["message"]
    other = ConversationFactory()
    async_to_sync(media.image_generate)(conversation=other, prompt="theirs", requested_by=other.user)
    theirs = MediaFile.objects.get()
    status, result = draw(client, conversation, "change it", edit_of=str(theirs.pk))
    assert status == 400 and "no longer in this conversation" in result["message"]
    assert conversation.messages.count() == 0
    fake_openai.enqueue(Behaviour(status=400, error_code="moderation_blocked"), endpoint="images")
    status, result = draw(client, conversation, "something forbidden")
    assert status == 200 and result["type"] == "error" and "safety rules" in result["message"]
    assert list(conversation.messages.values_list("status", flat=True)) == [MessageStatus.FAILED] * 2


def test_another_persons_file_is_refused_staff_and_the_owner_may_fetch_it(fake_openai):
    """A media URL is served to its owner and to staff only; anyone else gets 404, nobody signed in a redirect."""
    conversation = ConversationFactory()
    async_to_sync(media.image_generate)(conversation=conversation, prompt="a secret", requested_by=conversation.user)
    item = MediaFile.objects.get()
    url = reverse("web:media", args=[item.pk])
    owner = client_for(conversation.user).get(url)
    assert owner.status_code == 200 and owner.content == on_disk(item).read_bytes()
    assert owner["Content-Type"] == "image/png" and owner["Cache-Control"] == "private, max-age=86400"
    assert owner["X-Content-Type-Options"] == "nosniff"
    assert client_for(UserFactory()).get(url).status_code == 404
    assert client_for(UserFactory(is_staff=True)).get(url).status_code == 200
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


def test_play_reads_an_answer_out_once_then_plays_the_kept_recording(fake_openai):
    """The play button's endpoint makes the recording on first use (one speech charge); later uses reuse it."""
    conversation = ConversationFactory()
    answer = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="**Hello** there")
    client = client_for(conversation.user)
    url = reverse("web:speech", args=[answer.pk])
    first = json.loads(client.post(url).content)
    second = json.loads(client.post(url).content)
    assert first["type"] == second["type"] == "done" and first["url"] == second["url"]
    assert Decimal(first["cost_usd"]) > 0 and second["cost_usd"] is None
    [request] = fake_openai.speech_requests()
    assert request.body["input"] == "Hello there" and request.body["stream_format"] == "sse"
    record = UsageRecord.objects.get(kind=UsageKind.SPEECH)
    usage = request.usage
    assert record.cost_usd == (usage["input_tokens"] * Decimal("0.60") + usage["output_tokens"] * 12) / MILLION
    recording = MediaFile.objects.get(kind=MediaKind.SPEECH)
    assert client.get(first["url"]).content[:4] == b"OggS"
    page = client.get(reverse("web:conversation", args=[conversation.pk])).content.decode()
    assert f'data-audio="{first["url"]}"' in page and recording.message_id == answer.pk
    stranger = client_for(UserFactory())
    assert stranger.post(url).status_code == 404 and stranger.get(first["url"]).status_code == 404


def test_play_failures_are_sentences(fake_openai):
    """An over-budget person or a voice the model does not know gets a sentence, and nothing is kept."""
    conversation = ConversationFactory(persona=PersonaFactory(voice="robot"))
    answer = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="Hi")
    response = client_for(conversation.user).post(reverse("web:speech", args=[answer.pk]))
    assert response.status_code == 502 and "robot" in json.loads(response.content)["message"]
    conversation.user.jarvis_profile.daily_budget_usd = Decimal("0")
    conversation.user.jarvis_profile.save()
    response = client_for(conversation.user).post(reverse("web:speech", args=[answer.pk]))
    assert response.status_code == 400 and "daily budget" in json.loads(response.content)["message"]
    assert MediaFile.objects.count() == 0 and len(fake_openai.speech_requests()) == 1


def test_a_tool_draws_with_one_call_and_several_pictures_fit_one_answer(fake_openai):
    """`media.image_generate` returns the stored picture and its ledger row; two for one answer both count."""
    conversation = ConversationFactory()
    answer = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, status=MessageStatus.PENDING)
    made = [
        async_to_sync(media.image_generate)(
            conversation=conversation, prompt=prompt, requested_by=conversation.user, message=answer
        )
        for prompt in ("a cat", "a dog")
    ]
    assert [item.media.message_id for item in made] == [answer.pk, answer.pk]
    assert [item.usage.kind for item in made] == [UsageKind.IMAGE] * 2
    assert [item.media.usage_id for item in made] == [item.usage.pk for item in made]
    for item, request in zip(made, fake_openai.image_requests(), strict=True):
        assert item.usage.cost_usd == gpt_image_cost(request.usage) and on_disk(item.media).is_file()
    Message.objects.filter(pk=answer.pk).update(status=MessageStatus.COMPLETE, content="Here are **both**.")
    page = client_for(conversation.user).get(reverse("web:conversation", args=[conversation.pk])).content.decode()
    # Pictures a tool drew go with the answer's own text, which can be read out.
    assert "<strong>both</strong>" in page and page.count('<figure class="picture"') == 2
    assert reverse("web:speech", args=[answer.pk]) in page


def test_admin_transcript_shows_pictures_and_recordings(fake_openai):
    """The conversation's transcript in the admin shows the picture and a player for the recording."""
    conversation = ConversationFactory()
    client = client_for(conversation.user)
    draw(client, conversation, "a map of the harbour")
    answer = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="Read me")
    client.post(reverse("web:speech", args=[answer.pk]))
    picture, recording = MediaFile.objects.order_by("kind")
    staff = client_for(UserFactory(is_staff=True, is_superuser=True))
    page = staff.get(reverse("admin:botapp_conversation_change", args=[conversation.pk])).content.decode()
    assert f'<img class="picture" src="{media.media_url(picture)}"' in page
    assert f'<audio class="recording" controls preload="none" src="{media.media_url(recording)}"' in page
    listing = staff.get(reverse("admin:botapp_mediafile_changelist")).content.decode()
    assert "a map of the harbour" not in listing and media.media_url(picture) in listing


def test_an_unpriced_image_model_is_listed_on_the_dashboard(fake_openai, settings):
    """A picture from a model with no price shows in the usage dashboard's list of unpriced models."""
    settings.OPENAI_IMAGE_MODEL = "gpt-image-unknown"
    conversation = ConversationFactory()
    draw(client_for(conversation.user), conversation, "a lamp")
    staff = client_for(UserFactory(is_staff=True, is_superuser=True))
    page = staff.get(reverse("admin:botapp_usage_dashboard")).content.decode()
    warning = page[page.index('id="unpriced-warning"') :]
    assert "<strong>gpt-image-unknown</strong> (1 call)" in warning[:1000]


@pytest.mark.parametrize("mode", ["delete", "anonymise"])
def test_retention_removes_old_pictures_and_recordings_with_their_files(fake_openai, settings, mode):
    """Old pictures and recordings, rows and files, are removed by the retention job; new ones and the ledger stay."""
    old_chat, new_chat = ConversationFactory(), ConversationFactory()
    for conversation in (old_chat, new_chat):
        draw(client_for(conversation.user), conversation, "a tree")
        answer = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="Words")
        client_for(conversation.user).post(reverse("web:speech", args=[answer.pk]))
    long_ago = timezone.now() - timedelta(days=40)
    old_files = [on_disk(item) for item in MediaFile.objects.filter(conversation=old_chat)]
    assert len(old_files) == 2 and all(path.is_file() for path in old_files)
    Message.objects.filter(conversation=old_chat).update(created_at=long_ago)
    MediaFile.objects.filter(conversation=old_chat).update(created_at=long_ago)
    Conversation.objects.filter(pk=old_chat.pk).update(updated_at=long_ago)
    settings.RETENTION_DAYS, settings.RETENTION_MODE = 30, mode
    report = tasks.messages_retention()
    assert "2 generated file(s) deleted" in report
    assert not any(path.exists() for path in old_files)
    assert MediaFile.objects.filter(conversation=new_chat).count() == 2
    assert all(on_disk(item).is_file() for item in MediaFile.objects.all())
    assert UsageRecord.objects.filter(kind__in=[UsageKind.IMAGE, UsageKind.SPEECH]).count() == 4


def test_deleting_a_conversation_deletes_its_files(fake_openai):
    """A person deleting a conversation on the page deletes its pictures' files too; the ledger keeps the cost."""
    conversation = ConversationFactory()
    draw(client_for(conversation.user), conversation, "a kite")
    path = on_disk(MediaFile.objects.get())
    conversation_delete(conversation=conversation)
    assert not path.exists() and UsageRecord.objects.filter(kind=UsageKind.IMAGE).count() == 1


@pytest.fixture
def s3_bucket(settings):
    """An S3-compatible server (moto's, on 127.0.0.1) with a bucket, and Jarvis's storage pointed at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = {"aws_access_key_id": "test-key", "aws_secret_access_key": "test-secret", "region_name": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, **credentials)
    client.create_bucket(Bucket="jarvis-media")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "jarvis-media",
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
                "access_key": "test-key",
                "secret_key": "test-secret",
                "location": "jarvis-media",
                "default_acl": "private",
                "file_overwrite": False,
            },
        },
    }
    try:
        yield client
    finally:
        server.stop()


def test_files_go_to_an_s3_bucket_when_configured(fake_openai, s3_bucket):
    """With the S3 storage the picture is an object in the bucket, served through Jarvis, deleted with its row."""
    conversation = ConversationFactory()
    client = client_for(conversation.user)
    draw(client, conversation, "a harbour crane")
    item = MediaFile.objects.get()
    assert type(default_storage._wrapped).__name__ == "S3Storage"
    key = f"jarvis-media/{item.file.name}"
    stored = s3_bucket.get_object(Bucket="jarvis-media", Key=key)["Body"].read()
    assert stored[:8] == b"\x89PNG\r\n\x1a\n" and not on_disk(item).exists()
    assert client.get(media.media_url(item)).content == stored
    conversation_delete(conversation=conversation)
    assert s3_bucket.list_objects_v2(Bucket="jarvis-media").get("KeyCount") == 0


async def test_a_cancelled_request_still_keeps_and_charges_the_picture(fake_openai):
    """A browser that goes away while a picture is made does not lose it: the picture is stored and charged."""
    conversation = await sync_to_async(ConversationFactory)()
    client = AsyncClient()
    await client.aforce_login(conversation.user)
    fake_openai.enqueue(Behaviour(delay=1.0), endpoint="images")
    request = asyncio.ensure_future(client.post(reverse("web:image", args=[conversation.pk]), {"text": "a slow boat"}))
    deadline = asyncio.get_running_loop().time() + 20
    while not fake_openai.image_requests():
        assert asyncio.get_running_loop().time() < deadline, "the picture was never asked for"
        await asyncio.sleep(0.05)
    request.cancel()
    released = Conversation.objects.filter(pk=conversation.pk, answering_token="")
    while not (await MediaFile.objects.aexists() and await released.aexists()):
        assert asyncio.get_running_loop().time() < deadline, "the picture was not stored"
        await asyncio.sleep(0.05)
    assert await UsageRecord.objects.filter(kind=UsageKind.IMAGE).acount() == 1
    answer = await Message.objects.aget(role=Role.ASSISTANT)
    assert answer.status == MessageStatus.COMPLETE


def test_per_picture_prices_are_shown_and_edited_in_the_admin(db):
    """The price page of dall-e-3 lists its seeded per-picture prices; they are edited on their own admin page."""
    staff = client_for(UserFactory(is_staff=True, is_superuser=True))
    price = ModelPrice.objects.get(model="dall-e-3")
    page = staff.get(reverse("admin:botapp_modelprice_change", args=[price.pk])).content.decode()
    assert "1024x1024 hd: $0.08" in page and f"?price__id__exact={price.pk}" in page
    row = ModelImagePrice.objects.get(price=price, size="1024x1024", quality="standard")
    form = {"price": price.pk, "size": "1024x1024", "quality": "standard", "usd_per_image": "0.050"}
    assert staff.post(reverse("admin:botapp_modelimageprice_change", args=[row.pk]), form).status_code == 302
    assert ModelImagePrice.objects.get(pk=row.pk).usd_per_image == Decimal("0.05")
