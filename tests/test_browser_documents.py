"""Documents on the web page in headless Chromium: attach or drop a file, watch it being read, ask, see sources.

The real app runs under uvicorn and a real `manage.py qcluster` worker reads the files, both on the test
database and the fake OpenAI server, so the page shows the progress a person would see.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from botapp.documents.models import Document, DocumentState, MessageExcerpt
from botapp.models import Message, Role
from tests.asgi_server import ROOT, AsgiServer, database_url_for_tests
from tests.browser_support import sign_in
from tests.documents_support import make_encrypted_pdf, make_pdf
from tests.factories import UserFactory

pytest_plugins = ["tests.browser_support"]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, openai_server) -> Iterator[AsgiServer]:
    with AsgiServer(openai_base_url=openai_server.base_url) as server:
        yield server


@pytest.fixture
def worker(openai_server) -> Iterator[subprocess.Popen]:
    """A django-q2 cluster on the test database: it indexes what the page uploads."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "REDIS_URL": "",
        "Q_WORKERS": "1",
        "OPENAI_API_KEY": "sk-test-key-000000000000",
        "OPENAI_BASE_URL": openai_server.base_url,
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def open_new_conversation(tab: Page, server: AsgiServer, username: str) -> None:
    UserFactory(username=username)
    sign_in(tab, server, username)
    # The home page opens on an empty message box: the first message (or file, or picture) starts the conversation.
    expect(tab.locator("#composer")).to_be_visible()


def test_attach_a_pdf_ask_about_it_and_see_the_sources(page, asgi_server, fake_openai, worker):
    """Attach uploads a PDF; its chip follows the worker to "ready"; the answer cites it, after a reload too."""
    open_new_conversation(page, asgi_server, "grace")
    pdf = make_pdf(["Contents.", "Refunds: tickets are refunded in full up to 48 hours before the show."])
    with page.expect_file_chooser() as chooser:
        page.click("[data-role=attach]")
    chooser.value.set_files([{"name": "tickets.pdf", "mimeType": "application/pdf", "buffer": pdf}])
    chip = page.locator(".document-chip", has_text="tickets.pdf")
    expect(chip).to_have_class("document-chip state-ready", timeout=60_000)
    expect(chip.locator(".label")).to_have_text("ready: 2 pages")

    page.fill("#id_text", "Until when can I get a refund?")
    page.press("#id_text", "Enter")
    answer = page.locator(".msg-assistant.status-complete")
    expect(answer).to_contain_text("Echo: Until when can I get a refund?", timeout=30_000)
    expect(answer.locator(".document-sources")).to_have_text("Sources: [1] tickets.pdf")
    request = [s for s in fake_openai.chat_requests() if s.body.get("stream")][-1]
    assert any("48 hours before the show" in m["content"] for m in request.body["messages"])
    reply = Message.objects.filter(role=Role.ASSISTANT).latest("id")
    assert MessageExcerpt.objects.get(message=reply).file_name == "tickets.pdf"

    page.reload()
    expect(page.locator(".document-chip.state-ready")).to_contain_text("tickets.pdf")
    expect(page.locator(".msg-assistant .document-sources")).to_have_text("Sources: [1] tickets.pdf")


def test_drop_files_on_the_page(page, asgi_server, fake_openai, worker):
    """Dropping files on the conversation uploads them; a file Jarvis cannot read says why, in its chip."""
    open_new_conversation(page, asgi_server, "hedy")
    files = page.evaluate_handle(
        """([notes, locked]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([notes], "notes.md", { type: "text/markdown" }));
            const bytes = Uint8Array.from(atob(locked), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], "locked.pdf", { type: "application/pdf" }));
            return transfer;
        }""",
        ["# Notes\n\nThe team dinner is on Thursday at Luigi's.", _base64(make_encrypted_pdf("secret"))],
    )
    page.dispatch_event("section.conversation", "dragenter", {"dataTransfer": files})
    expect(page.locator("section.conversation.dropping")).to_be_attached()
    page.dispatch_event("section.conversation", "drop", {"dataTransfer": files})
    expect(page.locator(".document-chip", has_text="notes.md")).to_have_class(
        "document-chip state-ready", timeout=60_000
    )
    locked = page.locator(".document-chip", has_text="locked.pdf")
    expect(locked).to_have_class("document-chip state-failed", timeout=60_000)
    expect(locked.locator(".label")).to_contain_text("password")
    assert Document.objects.get(file_name="locked.pdf").state == DocumentState.FAILED

    page.fill("#id_text", "Where is the team dinner?")
    page.press("#id_text", "Enter")
    expect(page.locator(".msg-assistant.status-complete .document-sources")).to_contain_text("notes.md", timeout=30_000)


def test_a_file_jarvis_cannot_take_is_refused_in_the_page(page, asgi_server, fake_openai):
    """An executable is refused before it is stored, with a sentence above the message box."""
    open_new_conversation(page, asgi_server, "radia")
    page.set_input_files(
        "#id_document",
        files=[{"name": "setup.exe", "mimeType": "application/x-msdownload", "buffer": b"MZ" + bytes(99)}],
    )
    expect(page.locator("#composer-alert")).to_contain_text("cannot read “setup.exe”")
    expect(page.locator(".document-chip")).to_have_count(0)
    assert not Document.objects.exists()


def _base64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
