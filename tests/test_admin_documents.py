"""Knowledge bases in the admin: upload, attach a persona, watch indexing, use from Telegram, re-index, remove."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from botapp.documents.models import Document, DocumentState, KnowledgeBase, MessageExcerpt
from botapp.models import Channel, Conversation, Message, Role, UsageKind, UsageRecord
from tests.documents_support import make_docx, make_pdf
from tests.factories import PersonaFactory, UserFactory
from tests.telegram_support import TOKEN, Running

pytest_plugins = ["tests.telegram_support", "tests.documents_support"]
pytestmark = pytest.mark.django_db(transaction=True)

HANDBOOK = [
    ("h1", "Company handbook"),
    ("h2", "Holidays"),
    ("p", "Every employee has 27 days of paid holiday a year; up to five days carry over to the next year."),
    ("h2", "Expenses"),
    ("p", "Train travel is reimbursed in second class; taxis only after 22:00 or with heavy luggage."),
]


def staff_client() -> Client:
    admin = UserFactory(username="boss", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    client.user = admin
    return client


def create_knowledge_base(client: Client, persona_id: int) -> KnowledgeBase:
    """Fill in the admin's add form as an admin would: a name, a persona, two files."""
    response = client.post(
        reverse("admin:botapp_knowledgebase_add"),
        {
            "name": "Handbook",
            "description": "Company rules",
            "owner": "",
            "personas": [persona_id],
            "files": [
                SimpleUploadedFile("handbook.docx", make_docx(HANDBOOK)),
                SimpleUploadedFile("faq.pdf", make_pdf(["Wifi: the office network is called Jarvis-Guest."])),
            ],
            "documents-TOTAL_FORMS": "0",
            "documents-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    assert response.status_code == 200, response.content[:500]
    assert b"2 files are queued for indexing" in response.content
    return KnowledgeBase.objects.get(name="Handbook")


async def test_a_knowledge_base_made_in_the_admin_answers_in_telegram(jarvis: Running, q_sync):
    """An admin uploads files to a knowledge base for a persona; a Telegram chat with that persona is answered
    from it, cites it, and the transcript shows the excerpts; the owner pays the indexing, the person the question."""
    client = await sync_to_async(staff_client)()
    persona = await sync_to_async(PersonaFactory)(name="HR")
    jarvis.bot.default_persona = persona
    await jarvis.bot.asave(update_fields=["default_persona"])
    base = await sync_to_async(create_knowledge_base)(client, persona.pk)
    assert base.owner_id == client.user.pk
    states = await sync_to_async(lambda: sorted(base.documents.values_list("file_name", "state")))()
    assert states == [("faq.pdf", DocumentState.READY), ("handbook.docx", DocumentState.READY)]

    page = await sync_to_async(client.get)(reverse("admin:botapp_knowledgebase_change", args=[base.pk]))
    assert b"ready: 1 pages" in page.content or b"ready: 1 parts" in page.content
    assert b"handbook.docx" in page.content

    jarvis.telegram.push_text(TOKEN, 901, "How many days of paid holiday do I get?")
    [answer] = await jarvis.answered(901)
    assert answer.text.startswith("Echo: How many days of paid holiday do I get?")
    assert "📎 Sources:" in answer.text and "handbook.docx" in answer.text and "Holidays" in answer.text
    request = [s for s in jarvis.openai.chat_requests() if s.body.get("stream")][-1].body
    assert any("27 days of paid holiday" in m["content"] for m in request["messages"])

    indexing = await sync_to_async(list)(UsageRecord.objects.filter(kind=UsageKind.EMBEDDING, channel=Channel.SYSTEM))
    assert len(indexing) == 2 and {row.user_id for row in indexing} == {client.user.pk}
    question = await UsageRecord.objects.aget(kind=UsageKind.EMBEDDING, channel=Channel.TELEGRAM)
    asker = await sync_to_async(lambda: Message.objects.get(role=Role.USER).sender_id)()
    assert question.user_id == asker != client.user.pk

    conversation = await Conversation.objects.aget(telegram_chat_id=901)
    transcript = await sync_to_async(client.get)(reverse("admin:botapp_conversation_change", args=[conversation.pk]))
    assert b"excerpt" in transcript.content and b"27 days of paid holiday" in transcript.content
    assert await MessageExcerpt.objects.filter(file_name="handbook.docx").aexists()


def test_reindex_and_remove_files_in_the_admin(q_sync, fake_openai):
    """The re-index action indexes a file again; ticking Delete in the inline removes it and its chunks."""
    client = staff_client()
    persona = PersonaFactory(name="HR")
    base = create_knowledge_base(client, persona.pk)
    faq = base.documents.get(file_name="faq.pdf")
    version = faq.version
    response = client.post(
        reverse("admin:botapp_document_changelist"),
        {"action": "reindex", "_selected_action": [faq.pk]},
        follow=True,
    )
    assert b"1 file(s) queued for indexing" in response.content
    faq.refresh_from_db()
    assert faq.version > version and faq.state == DocumentState.READY

    documents = list(base.documents.order_by("pk"))
    form = {
        "name": "Handbook",
        "description": "Company rules",
        "owner": client.user.pk,
        "personas": [persona.pk],
        "documents-TOTAL_FORMS": str(len(documents)),
        "documents-INITIAL_FORMS": str(len(documents)),
    }
    for index, document in enumerate(documents):
        form[f"documents-{index}-id"] = document.pk
        form[f"documents-{index}-knowledge_base"] = base.pk
        if document.pk == faq.pk:
            form[f"documents-{index}-DELETE"] = "on"
    response = client.post(reverse("admin:botapp_knowledgebase_change", args=[base.pk]), form, follow=True)
    assert response.status_code == 200
    assert list(base.documents.values_list("file_name", flat=True)) == ["handbook.docx"]
    assert not Document.objects.filter(pk=faq.pk).exists()


def test_progress_is_visible_while_a_file_waits_for_the_worker(fake_openai):
    """Without a worker running, the file shows "queued" with a progress bar, and the JSON the page polls agrees."""
    client = staff_client()
    base = create_knowledge_base(client, PersonaFactory(name="HR").pk)
    page = client.get(reverse("admin:botapp_knowledgebase_change", args=[base.pk]))
    assert page.content.count(b'data-busy="1"') == 2 and b"<progress" in page.content
    ids = ",".join(str(pk) for pk in base.documents.values_list("pk", flat=True))
    states = client.get(reverse("admin:botapp_document_progress") + f"?ids={ids}").json()
    assert {state["label"] for state in states.values()} == {"queued"}
    assert all(state["busy"] for state in states.values())


async def test_a_question_before_the_knowledge_base_is_indexed_is_told_so(jarvis: Running):
    """While every file of the persona's knowledge base is still queued, the chat is told so, not answered blind."""
    client = await sync_to_async(staff_client)()
    persona = await sync_to_async(PersonaFactory)(name="HR")
    jarvis.bot.default_persona = persona
    await jarvis.bot.asave(update_fields=["default_persona"])
    await sync_to_async(create_knowledge_base)(client, persona.pk)
    jarvis.telegram.push_text(TOKEN, 902, "How many holidays?")
    [answer] = await jarvis.answered(902)
    assert "still being indexed" in answer.text and "Ask again in a moment" in answer.text
    assert jarvis.openai.chat_requests() == []
