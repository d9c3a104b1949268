"""Documents sent to the bot: read, answered with their text and cited; progress while reading; bad files."""

import pytest
from asgiref.sync import sync_to_async

from botapp.documents.ingest import document_ingest
from botapp.documents.models import Document, DocumentState
from botapp.models import Message, MessageStatus, Role, UsageKind, UsageRecord
from tests.documents_support import make_docx_bomb, make_encrypted_pdf, make_pdf, make_scanned_pdf
from tests.telegram_support import TOKEN, Running

pytest_plugins = ["tests.telegram_support", "tests.documents_support"]
pytestmark = pytest.mark.django_db(transaction=True)


def answer_request(running: Running) -> dict:
    return [s for s in running.openai.chat_requests() if s.body.get("stream")][-1].body


def sent_documents(running: Running) -> str:
    return "\n".join(m["content"] for m in answer_request(running)["messages"] if "<document" in m["content"])


async def test_a_text_file_with_a_caption_is_answered_from_its_text(jarvis: Running, q_sync):
    """A TXT with a caption: the caption is answered with the file's text in the request, and cites the file."""
    text = b"Opening hours: the library opens at 9:30 on weekdays and at 11:00 on Sundays."
    jarvis.telegram.push_document(TOKEN, 801, text, file_name="library.txt", caption="When does it open on Sunday?")
    [answer] = await jarvis.answered(801)
    assert answer.text.startswith("Echo: When does it open on Sunday?")
    assert "📎 Sources: [1] library.txt" in answer.text
    assert "11:00 on Sundays" in sent_documents(jarvis)
    question = await Message.objects.aget(role=Role.USER)
    assert question.content == "When does it open on Sunday?"
    assert question.attachments[0]["name"] == "library.txt"
    # The file was embedded once; a file sent whole needs no search, so the question is not embedded.
    assert await UsageRecord.objects.filter(kind=UsageKind.EMBEDDING).acount() == 1


async def test_a_pdf_with_a_caption_is_answered_and_cites_its_page(jarvis: Running, q_sync):
    """A PDF's text reaches the model with page markers; the answer's source names the file."""
    pdf = make_pdf(["Cover page.", "Prices: a single ticket costs 3.40 euros, a day pass 9 euros."])
    jarvis.telegram.push_document(
        TOKEN, 802, pdf, file_name="tariff.pdf", mime_type="application/pdf", caption="Day pass?"
    )
    [answer] = await jarvis.answered(802)
    sent = sent_documents(jarvis)
    assert "a day pass 9 euros" in sent and "[p. 2]" in sent
    assert "📎 Sources: [1] tariff.pdf" in answer.text


async def test_a_file_alone_is_read_then_the_next_message_uses_it(jarvis: Running, q_sync):
    """Without a caption the bot says the file is ready; the next question is answered with it."""
    jarvis.telegram.push_document(
        TOKEN, 803, "入住时间为下午两点，退房时间为中午十二点。".encode(), file_name="酒店.txt"
    )
    [ready] = await jarvis.answered(803)
    assert "酒店.txt" in ready.text and "Ask me anything about it" in ready.text
    assert jarvis.openai.chat_requests() == []
    jarvis.telegram.push_text(TOKEN, 803, "退房时间是几点？")
    answers = await jarvis.answered(803, 2)
    assert answers[1].text.startswith("Echo: 退房时间是几点？")
    assert "中午十二点" in sent_documents(jarvis)


async def test_a_caption_waits_for_the_file_and_the_chat_sees_the_progress(jarvis: Running):
    """While the worker reads the file the chat shows its state; the caption is answered once it is ready."""
    jarvis.telegram.push_document(
        TOKEN, 804, b"The password of the guest wifi is tulip-garden.", file_name="wifi.md", caption="Wifi password?"
    )
    [status] = await jarvis.wait_answers(804, timeout=15)
    assert status.text == "📄 wifi.md: queued"
    assert jarvis.openai.chat_requests() == []
    document = await Document.objects.aget(file_name="wifi.md")
    await sync_to_async(document_ingest)(document.pk)

    def answered() -> list:
        shown = [m for m in jarvis.answers(804) if not m.deleted]
        return shown if shown and shown[-1].text.startswith("Echo: Wifi password?") else []

    [answer] = await jarvis.telegram.await_for(answered, timeout=20)
    assert "tulip-garden" in sent_documents(jarvis) and "wifi.md" in answer.text


async def test_a_file_over_telegrams_limit_is_refused_without_downloading(jarvis: Running):
    """Over 20 MB: a sentence that says so and where else to upload; nothing downloaded or spent."""
    jarvis.telegram.push_document(TOKEN, 805, b"x", file_name="huge.pdf", file_size=25 * 1024 * 1024)
    [answer] = await jarvis.answered(805)
    assert "huge.pdf" in answer.text and "20 MB" in answer.text
    assert jarvis.telegram.calls("getFile") == [] and jarvis.openai.served == []


async def test_a_file_over_max_document_bytes_is_refused(jarvis: Running, settings):
    """Over MAX_DOCUMENT_BYTES (but under Telegram's limit): a sentence with the limit; nothing stored."""
    settings.MAX_DOCUMENT_BYTES = 1024 * 1024
    jarvis.telegram.push_document(TOKEN, 806, b"x" * 100, file_name="big.txt", file_size=3 * 1024 * 1024)
    [answer] = await jarvis.answered(806)
    assert "big.txt" in answer.text and "up to 1.0 MB" in answer.text
    assert not await Document.objects.aexists()


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("locked.pdf", make_encrypted_pdf("Secret plans"), "password"),
        ("scan.pdf", make_scanned_pdf(), "scanned images"),
        ("bomb.docx", make_docx_bomb(), "archive bomb"),
        ("program.exe", b"MZ\x90\x00" + bytes(5000), "cannot read"),
    ],
)
async def test_bad_files_get_a_sentence_and_the_chat_goes_on(jarvis: Running, q_sync, name, data, words):
    """A bad file with a question: the answer is the reason in a sentence; no model call; the next message works."""
    jarvis.telegram.push_document(TOKEN, 807, data, file_name=name, caption="What does it say?")
    [answer] = await jarvis.answered(807)
    assert answer.text.startswith("⚠️") and words in answer.text and name in answer.text
    assert jarvis.openai.chat_requests() == []
    failed = await Message.objects.aget(role=Role.ASSISTANT)
    assert failed.status == MessageStatus.FAILED
    assert (await Document.objects.aget()).state == DocumentState.FAILED
    jarvis.telegram.push_text(TOKEN, 807, "Hello again")
    answers = await jarvis.answered(807, 2)
    assert answers[1].text == "Echo: Hello again"


async def test_a_text_file_in_gbk_is_answered_in_chinese(jarvis: Running, q_sync):
    """A Chinese text file saved in GBK (not UTF-8) is decoded and answered from."""
    text = "报销规定：出差住宿费每晚不超过五百元，餐费每天不超过一百五十元，需要保留发票。" * 2
    jarvis.telegram.push_document(TOKEN, 808, text.encode("gbk"), file_name="报销.txt", caption="住宿费上限是多少？")
    await jarvis.answered(808)
    assert "不超过五百元" in sent_documents(jarvis)


async def test_a_redelivered_document_is_not_read_twice(jarvis: Running, q_sync):
    """Telegram sending the same update again neither stores the file again nor answers twice."""
    update = jarvis.telegram.push_document(
        TOKEN, 809, b"Menu: soup of the day is tomato.", file_name="menu.txt", caption="Soup?"
    )
    await jarvis.answered(809)
    jarvis.telegram.push_update(TOKEN, update)
    jarvis.telegram.push_text(TOKEN, 809, "next")  # handled after the duplicate, so the duplicate was seen
    answers = await jarvis.answered(809, 2)
    assert [a.text.split("\n")[0] for a in answers] == ["Echo: Soup?", "Echo: next"]
    assert await Document.objects.acount() == 1
