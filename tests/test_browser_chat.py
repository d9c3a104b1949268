"""End to end in headless Chromium: the real app under uvicorn, the fake OpenAI server, a person using the page.

Each item of the page is tried on a phone and a desktop, in English and in Chinese (two of the four
combinations per test, the other two in the test next to it).
"""

import json
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connections
from django.db.models import Sum
from django.utils import timezone
from playwright.sync_api import Page, expect

from botapp import tasks
from botapp.models import (
    Channel,
    Conversation,
    Message,
    MessageStatus,
    ModelPrice,
    Profile,
    Role,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from botapp.usage import format_usd, usage_record_create
from tests.browser_support import (
    OTHER_PAIRS,
    PHONE_ZH,
    SCREEN_PAIRS,
    Screen,
    box,
    eventually,
    open_context,
    screenshot_path,
    sign_in,
)
from tests.factories import ConversationFactory, PersonaFactory, UserFactory
from tests.fakes.openai_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.browser_support"]


def wait_for_status(message_id: int, status: str, timeout: float = 30.0) -> Message:
    """The message once it has `status` (the app writes it in its own process)."""

    def reached() -> Message | None:
        message = Message.objects.get(pk=message_id)
        return message if message.status == status else None

    return eventually(reached, timeout=timeout)


def run_as_worker(job, *args) -> None:
    """Run a background job as the worker would: in a thread of its own, with its own database connection."""

    def work() -> None:
        try:
            job(*args)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)


def open_page(browser, screen: Screen, **options) -> Page:
    return open_context(browser, screen, **options).new_page()


def following_the_answer(page: Page) -> bool:
    """The newest words are on screen: scrolled to the end, the answer's last line above the message box."""
    at_end = page.evaluate("(() => { const s = document.getElementById('scroller');"
                           " return s.scrollHeight - s.scrollTop - s.clientHeight < 2; })()")  # fmt: skip
    body = box(page, ".msg-assistant:last-child .body")
    composer = box(page, "#composer")
    viewport = page.viewport_size
    return at_end and body["bottom"] <= composer["top"] + 1 and composer["bottom"] <= viewport["height"] + 1


# --- Opening the page and the first message -----------------------------------------------------


@pytest.mark.parametrize("screen", SCREEN_PAIRS)
def test_first_message_from_the_home_page_starts_a_conversation_with_the_default_persona(
    browser, asgi_server, fake_openai, screen, tmp_path
):
    """The page opens on a focused, empty box; the first message starts a conversation with the default persona
    (not the alphabetically first one), and a clean title appears in the list, then the job's title, unreloaded."""
    person = UserFactory(username=f"first-{screen.name}")
    PersonaFactory(name="Aardvark")
    fake_openai.enqueue(
        Behaviour(text="Kyoto in **three** days:\n\n1. Temples\n2. Food", chunk_chars=4, chunk_delay=0.02),
        Behaviour(text="Three days in Kyoto"),
    )
    page = open_page(browser, screen)
    sign_in(page, asgi_server, person.username)
    expect(page.locator("#id_text")).to_be_focused()  # once the deferred scripts have run
    expect(page.locator("#id_text")).to_have_value("")
    expect(page.locator("#id_persona option:checked")).to_have_text("Jarvis")
    expect(page.locator("#empty-hint h2")).to_have_text("我能帮您做什么？" if screen.chinese else "How can I help?")
    page.screenshot(path=screenshot_path(tmp_path, f"home-{screen.name}.png"), scale="css")

    page.keyboard.type("**Plan** my `trip` to [Kyoto](https://kyoto.example), please")
    page.keyboard.press("Enter")
    expect(page.locator(".msg-assistant.status-complete li")).to_have_count(2)
    conversation = Conversation.objects.get(user=person)
    assert (conversation.persona.name, conversation.channel) == ("Jarvis", Channel.WEB)
    expect(page).to_have_url(f"{asgi_server.url}/c/{conversation.pk}/")
    listed = page.locator("#conversation-list li.current .title")
    expect(listed).to_have_text("Plan my trip to Kyoto, please")
    expect(page.locator("#conversation-title")).to_have_text("Plan my trip to Kyoto, please")

    run_as_worker(tasks.conversation_title, conversation.pk)
    conversation.refresh_from_db()
    assert conversation.title == "Three days in Kyoto"
    # The page asks for the title by itself: no reload.
    expect(listed).to_have_text("Three days in Kyoto")
    expect(page.locator("#conversation-title")).to_have_text("Three days in Kyoto")
    if screen.mobile:
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
        page.click(".list-toggle")
        expect(page.locator("#sidebar")).to_be_in_viewport()
        page.keyboard.press("Escape")
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.context.close()


# --- Following the streaming answer -------------------------------------------------------------


@pytest.mark.parametrize("screen", SCREEN_PAIRS)
def test_the_streaming_answer_stays_in_view_and_renders_markdown_as_it_comes(
    browser, asgi_server, fake_openai, screen, tmp_path
):
    """While an answer streams, its newest line stays on screen above the message box, its Markdown already
    rendered; after it, the cost line is in view; a person who scrolls up is left there until they come back."""
    person = UserFactory(username=f"stream-{screen.name}")
    conversation = ConversationFactory(user=person, title="Long plans")
    for index in range(6):
        Message.objects.create(conversation=conversation, role=Role.USER, content=f"Earlier question {index}")
        Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="An earlier answer.\n" * 6)
    steps = "".join(f"{i}. Step **{i}** of the plan, with enough words to wrap on a phone.\n" for i in range(1, 41))
    fake_openai.enqueue(
        Behaviour(text="## The plan\n\n" + steps, chunk_chars=24, chunk_delay=0.03),
        Behaviour(text="## Again\n\n" + steps, chunk_chars=24, chunk_delay=0.03),
    )
    page = open_page(browser, screen)
    sign_in(page, asgi_server, person.username)
    page.goto(f"{asgi_server.url}/c/{conversation.pk}/")
    page.fill("#id_text", "What is the plan?")
    page.press("#id_text", "Enter")

    streaming = page.locator(".msg-assistant.status-pending")
    # Markdown becomes HTML while the answer is still being written, not at the end.
    expect(streaming.locator("h2")).to_have_text("The plan")
    expect(streaming.locator("strong").first).to_have_text("1")
    newest = page.locator("#messages > li:last-child li")
    for count in (8, 18, 28):
        eventually(lambda count=count: newest.count() >= count)
        eventually(lambda: following_the_answer(page))
        if count == 8:
            page.screenshot(path=screenshot_path(tmp_path, f"streaming-{screen.name}.png"), scale="css")
    meta = page.locator("#messages > li:last-child.status-complete .meta")
    expect(meta).to_be_visible()
    eventually(lambda: following_the_answer(page) and box(page, ".msg-assistant:last-child .meta")["top"] >= 0)
    expect(meta).to_be_in_viewport()

    # A person who scrolls up to read is not pulled down; the button brings them back.
    page.fill("#id_text", "Once more")
    page.press("#id_text", "Enter")
    eventually(lambda: newest.count() >= 5)
    page.eval_on_selector("#scroller", "s => { s.scrollTop = 0; }")
    eventually(lambda: newest.count() >= 25)
    assert page.eval_on_selector("#scroller", "s => s.scrollTop") < 50
    expect(page.locator("#jump")).to_be_visible()
    page.click("#jump")
    eventually(lambda: following_the_answer(page))
    expect(page.locator("#jump")).to_be_hidden()
    expect(page.locator(".msg-assistant.status-complete")).to_have_count(8)
    page.context.close()


@pytest.mark.parametrize("screen", OTHER_PAIRS)
def test_code_is_highlighted_and_code_and_answers_can_be_copied(browser, asgi_server, fake_openai, screen, tmp_path):
    """Code blocks are highlighted on the server and get a copy button; each answer copies as its Markdown."""
    person = UserFactory(username=f"copy-{screen.name}")
    answer = "Like this:\n\n```python\ndef greet(name):\n    return f'Hello {name}'\n```\n\nThen call **greet**."
    fake_openai.enqueue(Behaviour(text=answer, chunk_chars=6))
    page = open_page(browser, screen, permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, asgi_server, person.username)
    page.fill("#id_text", "How do I greet?")
    page.press("#id_text", "Enter")
    done = page.locator(".msg-assistant.status-complete")
    expect(done.locator("pre code span.k").first).to_have_text("def")
    expect(done.locator("pre span.nf")).to_have_text("greet")
    # Pygments' colours apply: a keyword is not drawn in the text's colour.
    keyword = done.locator("pre span.k").first.evaluate("e => getComputedStyle(e).color")
    assert keyword != done.locator("p").first.evaluate("e => getComputedStyle(e).color")
    page.screenshot(path=screenshot_path(tmp_path, f"code-{screen.name}.png"), scale="css")

    done.locator(".code-copy").click()
    expect(done.locator(".code-copy")).to_have_text("已复制" if screen.chinese else "Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def greet(name):\n    return f'Hello {name}'\n"
    done.locator("[data-action=copy]").click()
    eventually(lambda: page.evaluate("navigator.clipboard.readText()") == answer)
    page.reload()
    page.locator(".msg-assistant [data-action=copy]").click()
    eventually(lambda: page.evaluate("navigator.clipboard.readText()") == answer)
    expect(page.locator(".msg-assistant .code-copy")).to_be_visible()
    page.context.close()


# --- Regenerate and edit ------------------------------------------------------------------------


@pytest.mark.parametrize("screen", OTHER_PAIRS)
def test_regenerate_and_edit_keep_the_replaced_answers_on_record(browser, asgi_server, fake_openai, screen):
    """Regenerate answers the last question again; editing a question asks it anew. What they replace leaves the
    page and the context but stays on record (superseded), and each answer is billed once."""
    person = UserFactory(username=f"redo-{screen.name}")
    fake_openai.enqueue(
        Behaviour(text="Blue."), Behaviour(text="Green, this time."), Behaviour(text="Apples.", chunk_delay=0.01)
    )
    page = open_page(browser, screen)
    sign_in(page, asgi_server, person.username)
    page.fill("#id_text", "Name a colour")
    page.press("#id_text", "Enter")
    expect(page.locator(".msg-assistant.status-complete .body")).to_have_text("Blue.")

    page.locator(".msg-assistant .regenerate").click()
    expect(page.locator(".msg-assistant.status-complete .body")).to_have_text("Green, this time.")
    expect(page.locator(".msg-assistant")).to_have_count(1)
    conversation = Conversation.objects.get(user=person)
    rows = list(conversation.messages.order_by("id").values_list("role", "content", "status"))
    assert rows == [
        ("user", "Name a colour", MessageStatus.COMPLETE),
        ("assistant", "Blue.", MessageStatus.SUPERSEDED),
        ("assistant", "Green, this time.", MessageStatus.COMPLETE),
    ]

    page.locator(".msg-user [data-action=edit]").click()
    editor = page.locator(".msg-user .editor textarea")
    expect(editor).to_have_value("Name a colour")
    editor.fill("Name a fruit")
    page.locator(".msg-user .editor button.primary").click()
    expect(page.locator(".msg-assistant.status-complete .body")).to_have_text("Apples.")
    expect(page.locator(".msg-user .body")).to_have_text(["Name a fruit"])
    rows = list(conversation.messages.order_by("id").values_list("content", "status"))
    assert rows == [
        ("Name a colour", MessageStatus.SUPERSEDED),
        ("Blue.", MessageStatus.SUPERSEDED),
        ("Green, this time.", MessageStatus.SUPERSEDED),
        ("Name a fruit", MessageStatus.COMPLETE),
        ("Apples.", MessageStatus.COMPLETE),
    ]
    # The edited question was asked without the replaced turn in its context.
    asked = fake_openai.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in asked if m["role"] != "system"] == ["Name a fruit"]
    charged = UsageRecord.objects.filter(conversation=conversation, kind=UsageKind.CHAT)
    assert sorted(charged.values_list("message__content", flat=True)) == ["Apples.", "Blue.", "Green, this time."]
    page.reload()
    expect(page.locator(".msg .body")).to_have_text(["Name a fruit", "Apples."])
    page.context.close()


# --- Choosing the model, exporting --------------------------------------------------------------


@pytest.mark.parametrize("screen", SCREEN_PAIRS)
def test_a_person_chooses_an_offered_model_with_its_price_and_exports_the_conversation(
    browser, asgi_server, fake_openai, screen
):
    """Only the models an admin offers are listed, each with its price; the choice answers the next message.
    The conversation downloads as Markdown and as JSON."""
    person = UserFactory(username=f"model-{screen.name}")
    ModelPrice.objects.filter(model__in=["gpt-4.1-nano", "gpt-5-mini"]).update(offered=True)
    ModelPrice.objects.create(model="local-llama", input_per_mtok=0, output_per_mtok=0, offered=False)
    conversation = ConversationFactory(user=person, title="Cheap talk")
    fake_openai.enqueue(Behaviour(text="Tiny answer."))
    page = open_page(browser, screen)
    sign_in(page, asgi_server, person.username)
    page.goto(f"{asgi_server.url}/c/{conversation.pk}/")
    options = page.locator("#id_model option")
    if screen.chinese:
        expected = [
            "角色的模型（gpt-4o-mini）",
            "gpt-4.1-nano · 输入 $0.10 · 输出 $0.40 / 百万 token",
            "gpt-5-mini · 输入 $0.25 · 输出 $2.00 / 百万 token",
        ]
    else:
        expected = [
            "Persona's model (gpt-4o-mini)",
            "gpt-4.1-nano · $0.10 in · $0.40 out per 1M tokens",
            "gpt-5-mini · $0.25 in · $2.00 out per 1M tokens",
        ]
    expect(options).to_have_text(expected)
    page.select_option("#id_model", "gpt-4.1-nano")
    expect(page.locator("#composer-note")).to_contain_text("gpt-4.1-nano")
    conversation.refresh_from_db()
    assert conversation.model == "gpt-4.1-nano"
    page.fill("#id_text", "Say something small")
    page.press("#id_text", "Enter")
    expect(page.locator(".msg-assistant.status-complete .body")).to_have_text("Tiny answer.")
    assert fake_openai.chat_requests()[-1].body["model"] == "gpt-4.1-nano"
    assert UsageRecord.objects.get(conversation=conversation).model == "gpt-4.1-nano"

    page.click("#conversation-settings summary")
    with page.expect_download() as markdown:
        page.click("#conversation-settings a[href$='export.md']")
    text = Path(markdown.value.path()).read_text()
    assert "# Cheap talk" in text and "Say something small" in text and "Tiny answer." in text
    with page.expect_download() as as_json:
        page.click("#conversation-settings a[href$='export.json']")
    document = json.loads(Path(as_json.value.path()).read_text())
    [exported] = document["conversations"]
    assert [m["content"] for m in exported["messages"]] == ["Say something small", "Tiny answer."]
    page.context.close()


# --- Dark mode, Esc -----------------------------------------------------------------------------


@pytest.mark.parametrize("screen", SCREEN_PAIRS)
def test_dark_mode_follows_the_system_setting(browser, asgi_server, screen, tmp_path):
    """With the system in dark mode the page is dark, code included; in light mode it is light."""
    person = UserFactory(username=f"dark-{screen.name}")
    conversation = ConversationFactory(user=person, title="Night")
    Message.objects.create(conversation=conversation, role=Role.USER, content="Show me code")
    Message.objects.create(
        conversation=conversation, role=Role.ASSISTANT, content="```python\nimport this\n```", output_tokens=5
    )
    backgrounds = {}
    for scheme in ("dark", "light"):
        page = open_page(browser, screen, color_scheme=scheme)
        sign_in(page, asgi_server, person.username)
        page.goto(f"{asgi_server.url}/c/{conversation.pk}/")
        expect(page.locator(".msg-assistant pre span.kn")).to_have_text("import")
        backgrounds[scheme] = (
            page.evaluate("getComputedStyle(document.body).backgroundColor"),
            page.locator(".msg-assistant").evaluate("e => getComputedStyle(e).backgroundColor"),
            page.locator(".msg-assistant pre span.kn").evaluate("e => getComputedStyle(e).color"),
        )
        if scheme == "dark":
            page.screenshot(path=screenshot_path(tmp_path, f"dark-{screen.name}.png"), scale="css")
        page.context.close()
    assert backgrounds["dark"][0] == "rgb(21, 24, 30)" and backgrounds["dark"][1] == "rgb(30, 34, 42)"
    assert backgrounds["light"][0] == "rgb(246, 247, 249)" and backgrounds["light"][1] == "rgb(255, 255, 255)"
    assert backgrounds["dark"][2] != backgrounds["light"][2]


@pytest.mark.parametrize("screen", SCREEN_PAIRS)
def test_escape_stops_an_answer(browser, asgi_server, fake_openai, screen):
    """Esc stops the answer being written, like the Stop button: what was written is kept, incomplete, billed."""
    person = UserFactory(username=f"esc-{screen.name}")
    fake_openai.enqueue(Behaviour(text="blah " * 400, chunk_chars=5, chunk_delay=0.05))
    page = open_page(browser, screen)
    sign_in(page, asgi_server, person.username)
    page.fill("#id_text", "Talk for a long time")
    page.press("#id_text", "Enter")
    expect(page.locator(".msg-assistant.status-pending .body")).to_contain_text("blah blah blah")
    page.keyboard.press("Escape")
    note = page.locator(".msg-assistant.status-incomplete .msg-note")
    expect(note).to_contain_text("已停止" if screen.chinese else "Stopped")
    stopped = wait_for_status(int(page.locator(".msg-assistant").get_attribute("data-message-id")), "incomplete")
    assert 0 < len(stopped.content) < len("blah " * 400)
    assert UsageRecord.objects.get(message=stopped).status == UsageStatus.INCOMPLETE
    expect(page.locator("[data-role=stop]")).to_be_hidden()
    page.context.close()


# --- What was there before: stop, reload, usage, isolation, hostile markup, bad input, phone ----------------


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
    page.fill("#id_text", "What is the plan?")
    page.press("#id_text", "Enter")
    expect(page.locator("#conversation-title")).to_have_text("What is the plan?")
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
    assert 0 < len(stopped.content) < len("blah " * 300)
    stopped_record = UsageRecord.objects.get(message_id=stopped_id)
    assert stopped_record.status == UsageStatus.INCOMPLETE and stopped_record.cost_usd > 0

    page.reload()
    history = page.locator("#messages")
    expect(history.locator(".msg-user .body")).to_have_text(["What is the plan?", "Now talk for a long time"])
    expect(history.locator(".msg-assistant.status-complete strong")).to_have_text("the plan")
    expect(history.locator(".msg-assistant.status-incomplete .msg-note")).to_contain_text("Incomplete answer")
    expect(page.locator(".conversation-list .current")).to_contain_text("What is the plan?")
    page.screenshot(path=screenshot_path(tmp_path, "desktop-conversation.png"), scale="css")

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
    assert page.request.get(f"{asgi_server.url}/c/{stranger_chat.pk}/export.md").status == 404


def test_hostile_markup_from_person_or_model_never_runs(page, asgi_server, fake_openai):
    """Script, event handlers and javascript: links, from the person or the model, stay inert text."""
    UserFactory(username="eve")
    payload = (
        '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> [x](javascript:window.__pwned=3)'
    )
    fake_openai.enqueue(Behaviour(text=f"Sure: {payload}", chunk_chars=7, chunk_delay=0.02))
    sign_in(page, asgi_server, "eve")
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
    page.click("[data-role=send]")
    expect(page.locator("#composer-alert")).to_contain_text("empty")
    page.goto(f"{asgi_server.url}/c/{conversation.pk}/")
    page.fill("#id_text", "And bread?")
    page.press("#id_text", "Enter")
    expect(page.locator(".msg-assistant.status-failed .msg-error")).to_contain_text("daily budget of $0.")
    assert fake_openai.chat_requests() == []
    page.reload()
    expect(page.locator(".msg-assistant strong")).to_have_text("milk")
    expect(page.locator(".msg-user .body")).to_have_text(["Milk?", "And bread?"])
    expect(page.locator(".msg-error").first).to_contain_text("daily budget")


def test_phone_screen_in_chinese(browser, asgi_server, fake_openai, tmp_path):
    """On a 390×844 phone in Chinese: one-line navigation, nothing wider than the screen, the chart's labels whole
    and readable, the cost column in view, and a spent tiny budget shown as spent."""
    person = UserFactory(username="li", is_staff=True)
    Profile.objects.update_or_create(user=person, defaults={"daily_budget_usd": Decimal("0.001")})
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
    phone = open_page(browser, PHONE_ZH)
    sign_in(phone, asgi_server, "li")
    phone.goto(f"{asgi_server.url}/c/{conversation.pk}/")
    expect(phone.locator("[data-role=send]")).to_have_text("发送")
    expect(phone.locator(".list-toggle")).to_be_visible()
    expect(phone.locator("#sidebar")).not_to_be_in_viewport()
    expect(phone.locator("#composer")).to_be_in_viewport()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    # Each navigation entry is one line, whatever its language.
    lines = phone.locator(".nav a").evaluate_all(
        "links => links.map(a => { const r = document.createRange(); r.selectNodeContents(a);"
        " return new Set([...r.getClientRects()].map(rect => Math.round(rect.top))).size; })"
    )
    assert lines == [1, 1, 1, 1], lines
    phone.screenshot(path=screenshot_path(tmp_path, "phone-conversation-zh.png"), scale="css")

    phone.goto(f"{asgi_server.url}/usage/")
    expect(phone.locator("h1")).to_have_text("您的用量")
    chart = phone.locator("svg.chart").first
    expect(chart.locator("rect.bar")).to_have_count(4)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    # Axis labels lie wholly inside the chart and are at least 11 px tall on the phone.
    labels = chart.locator("text.axis").evaluate_all(
        "texts => { const c = texts[0].ownerSVGElement.getBoundingClientRect();"
        " return texts.map(t => { const r = t.getBoundingClientRect();"
        " return [r.left - c.left, c.right - r.right, r.height]; }); }"
    )
    assert labels and all(left >= 0 and right >= 0 and height >= 11 for left, right, height in labels), labels
    # The cost is the second column: on screen without scrolling sideways.
    cost = phone.locator("table.numbers").first.locator("th").nth(1)
    expect(cost).to_have_text("费用")
    assert cost.evaluate("e => e.getBoundingClientRect().right") <= 390
    # A spent budget of $0.001 reads as such, and its bar is in the "bad" range, not a full green bar.
    expect(phone.locator(".budget").first).to_contain_text("$0.001")
    meter = phone.locator(".budget meter").first
    assert meter.evaluate("m => m.value >= m.high && m.optimum < m.low")
    phone.screenshot(path=screenshot_path(tmp_path, "phone-usage-zh.png"), full_page=True, scale="css")
    phone.context.close()
