"""Pictures and the play button in headless Chromium: the real app under uvicorn, the fake OpenAI server."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from botapp.models import MediaFile, MediaKind, UsageKind, UsageRecord
from tests.asgi_server import AsgiServer
from tests.browser_support import screenshot_path, sign_in
from tests.factories import UserFactory

pytest_plugins = ["tests.browser_support"]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served-media")


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, openai_server, media_root) -> Iterator[AsgiServer]:
    with AsgiServer(openai_base_url=openai_server.base_url, extra_env={"MEDIA_ROOT": str(media_root)}) as server:
        yield server


def poll(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The value of `check()` once it is truthy, polling with a generous deadline."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.1)
    return value


def test_draw_change_listen_and_reload_in_chromium(page: Page, asgi_server, fake_openai, media_root, tmp_path):
    """A person draws with /image, changes the picture, listens to an answer, reloads and finds it all kept."""
    UserFactory(username="cleo")
    sign_in(page, asgi_server, "cleo")
    # The home page opens on an empty message box: the first message (or file, or picture) starts the conversation.
    expect(page.locator("#composer")).to_be_visible()

    page.fill("#id_text", "/image a red kite over the sea")
    page.press("#id_text", "Enter")
    first = page.locator(".msg-assistant.status-complete figure.picture").first
    expect(first.locator("figcaption")).to_have_text("a red kite over the sea")
    expect(page.locator(".msg-user .body").first).to_have_text("/image a red kite over the sea")
    expect(page.locator(".msg-assistant .meta").first).to_contain_text("Picture · $")
    # The browser really fetched and decoded the picture through the owner-only media URL.
    poll(lambda: first.locator("img").evaluate("img => img.complete && img.naturalWidth") == 64)
    assert fake_openai.chat_requests() == []

    first.locator("button.picture-edit").click()
    expect(page.locator("[data-role=editing]")).to_contain_text("a red kite over the sea")
    page.fill("#id_text", "make the kite green")
    page.click("[data-role=draw]")
    expect(page.locator("figure.picture")).to_have_count(2)
    expect(page.locator("figure.picture figcaption").nth(1)).to_have_text("make the kite green")
    expect(page.locator("[data-role=editing]")).to_be_hidden()
    generate, edit = fake_openai.image_requests()
    assert generate.path.endswith("/generations") and edit.path.endswith("/edits")

    page.fill("#id_text", "Say something nice")
    page.press("#id_text", "Enter")
    answer = page.locator(".msg-assistant.status-complete").nth(2)
    expect(answer.locator(".body")).to_have_text("Echo: Say something nice")
    play = answer.locator("button.play")
    expect(play).to_be_visible()
    play.click()
    audio = answer.locator(".speech audio")
    expect(audio).to_have_count(1)
    # Chromium decoded the OGG/Opus recording: it knows how long it is.
    duration = poll(lambda: audio.evaluate("a => a.readyState >= 1 && a.duration"))
    assert 0.9 <= duration <= 1.1
    assert len(fake_openai.speech_requests()) == 1
    assert UsageRecord.objects.filter(kind=UsageKind.SPEECH).count() == 1
    recording = MediaFile.objects.get(kind=MediaKind.SPEECH)
    assert (media_root / recording.file.name).is_file()
    page.screenshot(path=screenshot_path(tmp_path, "media-chat.png"), full_page=True)

    page.reload()
    expect(page.locator("figure.picture img")).to_have_count(2)
    kept = page.locator(".msg-assistant button.play[data-audio]")
    expect(kept).to_have_count(1)
    kept.click()
    poll(lambda: page.locator(".speech audio").evaluate("a => a.readyState >= 1 && a.duration"))
    assert len(fake_openai.speech_requests()) == 1

    picture = MediaFile.objects.filter(kind=MediaKind.IMAGE).order_by("id").first()
    assert page.request.get(f"{asgi_server.url}/media/{picture.pk}/").status == 200
    UserFactory(username="dora")
    stranger = page.context.browser.new_context()
    try:
        other = stranger.new_page()
        sign_in(other, asgi_server, "dora")
        response = other.request.get(f"{asgi_server.url}/media/{picture.pk}/")
        assert response.status == 404
    finally:
        stranger.close()
