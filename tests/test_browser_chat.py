"""End to end in headless Chromium: the real app under uvicorn, the fake OpenAI server, a person using the page."""

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from botapp.models import Channel, Message, MessageStatus, Profile, Role, UsageKind, UsageRecord, UsageStatus
from botapp.usage import usage_record_create
from botapp.web.views import format_usd
from tests.asgi_server import AsgiServer
from tests.browser_support import browser_fixture  # noqa: F401  (fixture)
from tests.factories import ConversationFactory, UserFactory
from tests.fakes.openai_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, openai_server) -> Iterator[AsgiServer]:
    with AsgiServer(openai_base_url=openai_server.base_url) as server:
        yield server


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(locale="en-US", viewport={"width": 1200, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page: Page, server: AsgiServer, username: str) -> None:
    page.goto(f"{server.url}/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator(".new-conversation")).to_be_visible()


def screenshot_path(tmp_path: Path, name: str) -> str:
    """Where to keep a screenshot: JARVIS_SCREENSHOT_DIR to look at it later, else the test's temp dir."""
    folder = Path(os.environ.get("JARVIS_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


def wait_for_status(message_id: int, status: str, timeout: float = 10.0) -> Message:
    deadline = time.monotonic() + timeout
    while True:
        message = Message.objects.get(pk=message_id)
        if message.status == status or time.monotonic() > deadline:
            return message
        time.sleep(0.1)


def test_sign_in_chat_stream_stop_reload_usage_and_isolation(page, asgi_server, fake_openai, tmp_path):
    """A person signs in, sees an answer stream in, stops one, finds both after reload, and sees the cost."""
    person = UserFactory(username="ada")
    stranger_chat = ConversationFactory(user=UserFactory(username="bob"), title="Bob's diary")
    answer = "Good evening. Here is **the plan**:\n\n- first\n- second\n"
    fake_openai.enqueue(
        Behaviour(text=answer, chunk_chars=3, chunk_delay=0.05),
        Behaviour(text="blah " * 300, chunk_chars=5, chunk_delay=0.03),
    )
    sign_in(page, asgi_server, "ada")
    page.click(".new-conversation button[type=submit]")
    expect(page.locator("#composer")).to_be_visible()

    page.fill("#id_text", "What is the plan?")
    page.press("#id_text", "Enter")
    expect(page.locator(".conversation-head h1")).to_have_text("What is the plan?")
    streaming = page.locator(".msg-assistant .body.streaming")
    expect(streaming).to_contain_text("Good")
    # While it streams the answer is plain text: the Markdown has not been turned into HTML yet.
    assert page.locator(".msg-assistant strong").count() == 0
    expect(page.locator(".msg-assistant.status-complete strong")).to_have_text("the plan")
    expect(page.locator(".msg-assistant.status-complete li")).to_have_count(2)
    expect(page.locator(".msg-assistant.status-complete .meta")).to_contain_text("$")
    expect(page.locator("[data-role=stop]")).to_be_hidden()

    page.fill("#id_text", "Now talk for a long time")
    page.click("[data-role=send]")
    expect(page.locator(".msg-assistant .body.streaming")).to_contain_text("blah blah blah")
    page.click("[data-role=stop]")
    expect(page.locator(".msg-assistant.status-incomplete .msg-note")).to_contain_text("Stopped")
    stopped_id = int(page.locator(".msg-assistant.status-incomplete").get_attribute("data-message-id"))
    stopped = wait_for_status(stopped_id, MessageStatus.INCOMPLETE)
    assert stopped.status == MessageStatus.INCOMPLETE
    assert 0 < len(stopped.content) < len("blah " * 300)
    stopped_record = UsageRecord.objects.get(message_id=stopped_id)
    assert stopped_record.status == UsageStatus.INCOMPLETE and stopped_record.cost_usd > 0

    page.reload()
    history = page.locator("#messages")
    expect(history.locator(".msg-user .body")).to_have_text(["What is the plan?", "Now talk for a long time"])
    expect(history.locator(".msg-assistant.status-complete strong")).to_have_text("the plan")
    expect(history.locator(".msg-assistant.status-incomplete .msg-note")).to_contain_text("Incomplete answer")
    expect(page.locator(".conversation-list .current")).to_contain_text("What is the plan?")
    page.screenshot(path=screenshot_path(tmp_path, "desktop-conversation.png"))

    page.click("nav >> text=Usage")
    total = UsageRecord.objects.filter(user=person).aggregate(total=Sum("cost_usd"))["total"]
    assert total > Decimal("0")
    expect(page.locator("h2").first).to_be_visible()
    expect(page.locator("body")).to_contain_text(f"total {format_usd(total)}")
    expect(page.locator("table.numbers").first).to_contain_text("gpt-4o-mini")
    expect(page.locator("svg.chart rect.bar").first).to_be_attached()

    response = page.goto(f"{asgi_server.url}/c/{stranger_chat.pk}/")
    assert response.status == 404
    expect(page.locator("body")).not_to_contain_text("Bob's diary")


def test_hostile_markup_from_person_or_model_never_runs(page, asgi_server, fake_openai):
    """Script, event handlers and javascript: links, from the person or the model, stay inert text."""
    UserFactory(username="eve")
    payload = (
        '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> [x](javascript:window.__pwned=3)'
    )
    fake_openai.enqueue(Behaviour(text=f"Sure: {payload}", chunk_chars=7))
    sign_in(page, asgi_server, "eve")
    page.click(".new-conversation button[type=submit]")
    page.fill("#id_text", payload)
    page.press("#id_text", "Enter")
    expect(page.locator(".msg-assistant.status-complete")).to_contain_text("Sure:")
    for _ in range(2):
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#messages img, #messages script").count() == 0
        assert page.locator("#messages a[href^='javascript']").count() == 0
        expect(page.locator(".msg-user")).to_contain_text("<script>window.__pwned=2</script>")
        page.reload()
        expect(page.locator(".msg-assistant")).to_contain_text("onerror")


def test_bad_input_is_told_in_the_page_and_the_conversation_stays(page, asgi_server, fake_openai):
    """An empty message is refused in the page; a spent budget is explained; what was said stays."""
    person = UserFactory(username="carol")
    conversation = ConversationFactory(user=person, title="Groceries")
    Message.objects.create(conversation=conversation, role=Role.USER, content="Milk?")
    Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="Yes, **milk**.")
    Profile.objects.update_or_create(user=person, defaults={"daily_budget_usd": Decimal("0")})
    sign_in(page, asgi_server, "carol")
    page.goto(f"{asgi_server.url}/c/{conversation.pk}/")
    page.click("[data-role=send]")
    expect(page.locator("#composer-alert")).to_contain_text("empty")
    page.fill("#id_text", "And bread?")
    page.press("#id_text", "Enter")
    expect(page.locator(".msg-assistant.status-failed .msg-error")).to_contain_text("daily budget")
    assert fake_openai.chat_requests() == []
    page.reload()
    expect(page.locator(".msg-assistant strong")).to_have_text("milk")
    expect(page.locator(".msg-user .body")).to_have_text(["Milk?", "And bread?"])
    expect(page.locator(".msg-error").first).to_contain_text("daily budget")


def test_phone_screen_in_chinese(browser, asgi_server, fake_openai, tmp_path):
    """On a 390×844 phone with a Chinese browser the page is in Chinese and nothing is wider than the screen."""
    person = UserFactory(username="li")
    conversation = ConversationFactory(user=person, title="周末计划")
    Message.objects.create(conversation=conversation, role=Role.USER, content="帮我列一个周末计划，并给一段示例代码。")
    Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        content=(
            "好的，这是计划：\n\n1. 周六上午：爬山\n2. 周六下午：看书\n3. 周日：做饭\n\n"
            "| 时间 | 活动 | 地点 |\n|---|---|---|\n| 周六 | 爬山 | 香山公园 |\n\n"
            "```python\nfor day in ['周六', '周日']:\n    print(f'{day}: 休息一下，享受一个非常非常长的周末时光')\n```"
        ),
        input_tokens=120,
        output_tokens=80,
    )
    for days_ago, tokens in [(0, 40_000), (1, 12_000), (3, 90_000), (8, 25_000)]:
        usage_record_create(user=person, kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB,
                            input_tokens=tokens, output_tokens=tokens // 4,
                            at=timezone.now() - timedelta(days=days_ago))  # fmt: skip
    context = browser.new_context(
        locale="zh-CN", viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    context.set_default_timeout(10_000)
    phone = context.new_page()
    try:
        sign_in(phone, asgi_server, "li")
        phone.goto(f"{asgi_server.url}/c/{conversation.pk}/")
        expect(phone.locator("[data-role=send]")).to_have_text("发送")
        expect(phone.locator(".back")).to_be_visible()
        expect(phone.locator(".sidebar")).to_be_hidden()
        expect(phone.locator("#composer")).to_be_in_viewport()
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.screenshot(path=screenshot_path(tmp_path, "phone-conversation-zh.png"))
        phone.goto(f"{asgi_server.url}/usage/")
        expect(phone.locator("h1")).to_have_text("您的用量")
        expect(phone.locator("svg.chart").first.locator("rect.bar")).to_have_count(4)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.screenshot(path=screenshot_path(tmp_path, "phone-usage-zh.png"), full_page=True)
    finally:
        context.close()
