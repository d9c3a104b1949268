"""Tool steps on the web page, in headless Chromium: a collapsible step per call while it streams, sources linked."""

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from botapp.models import ToolCall
from tests.asgi_server import AsgiServer
from tests.browser_support import screenshot_path, sign_in
from tests.factories import UserFactory
from tests.fakes.openai_server import Behaviour
from tests.fakes.tool_servers import ARTICLE_TITLE
from tests.tools_helpers import BUILTINS, persona_with_tools

pytest_plugins = ["tests.browser_support", "tests.tools_support"]
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def tools_asgi_server(django_db_setup, openai_server, web_server) -> Iterator[AsgiServer]:
    """The web app with web search on the fake SearXNG, allowed to read the loopback site."""
    env = {"SEARXNG_URL": web_server.url, "TOOLS_ALLOW_PRIVATE_URLS": "true", "TOOLS_TIMEOUT": "10"}
    with AsgiServer(openai_base_url=openai_server.base_url, extra_env=env) as server:
        yield server


def test_tool_steps_stream_in_collapse_and_survive_a_reload(page, tools_asgi_server, fake_openai, fake_web, tmp_path):
    """Each call is a step that appears while the answer is written; it opens to its links; sources follow."""
    UserFactory(username="grace")
    persona_with_tools(*BUILTINS)
    article = f"{fake_web.url}/article"
    fake_openai.enqueue(
        Behaviour(
            tool_calls=[
                {"name": "web_search", "arguments": {"query": "moon landing"}},
                {"name": "read_web_page", "arguments": {"url": article}},
            ]
        ),
        Behaviour(text="Jarvis landed on the Moon on **Tuesday**.", delay=2.0, chunk_chars=4, chunk_delay=0.05),
    )
    sign_in(page, tools_asgi_server, "grace")
    # The home page opens on an empty message box: the first message (or file, or picture) starts the conversation.
    page.fill("#id_text", "What happened on the Moon?")
    page.press("#id_text", "Enter")

    steps = page.locator(".msg-assistant .tool-step")
    expect(steps).to_have_count(2)
    expect(steps.nth(0).locator("summary")).to_contain_text("Searched the web: moon landing")
    expect(steps.nth(1).locator("summary")).to_contain_text(f"Read {fake_web.url[7:].split(':')[0]}")
    expect(page.locator(".msg-assistant.status-pending")).to_have_count(1)  # the steps show before the answer
    expect(page.locator(".msg-assistant.status-complete strong")).to_have_text("Tuesday")

    search_links = steps.nth(0).locator(".tool-sources a")
    expect(search_links.first).to_be_hidden()
    steps.nth(0).locator("summary").click()
    expect(search_links).to_have_count(3)
    expect(search_links.first).to_be_visible()
    expect(search_links.first).to_have_attribute("rel", "noopener noreferrer nofollow")
    sources = page.locator(".msg-assistant .sources a")
    expect(sources).to_have_text([ARTICLE_TITLE])
    expect(sources.first).to_have_attribute("href", article)
    page.screenshot(path=screenshot_path(tmp_path, "tool-steps.png"))
    assert ToolCall.objects.filter(status="ok").count() == 2

    page.reload()
    expect(page.locator(".msg-assistant .tool-step")).to_have_count(2)
    expect(page.locator(".msg-assistant .tool-step.status-ok summary").nth(1)).to_contain_text("Read 127.0.0.1")
    expect(page.locator(".msg-assistant .sources a")).to_have_attribute("href", article)


def test_a_failed_step_shows_its_sentence(page, tools_asgi_server, fake_openai, fake_web):
    """A refused address is a red step that opens to the sentence saying why."""
    UserFactory(username="hopper")
    persona_with_tools(*BUILTINS)
    fake_openai.enqueue(
        Behaviour(tool_calls=[{"name": "read_web_page", "arguments": {"url": "ftp://example.com/file"}}]),
        Behaviour(text="I could not read that."),
    )
    sign_in(page, tools_asgi_server, "hopper")
    # The home page opens on an empty message box: the first message (or file, or picture) starts the conversation.
    page.fill("#id_text", "Read ftp://example.com/file")
    page.press("#id_text", "Enter")
    step = page.locator(".msg-assistant .tool-step.status-refused, .msg-assistant .tool-step.status-error")
    expect(step).to_have_count(1)
    step.locator("summary").click()
    expect(step.locator(".tool-error")).to_contain_text("only reads http and https")
    expect(page.locator(".msg-assistant.status-complete")).to_contain_text("I could not read that.")
