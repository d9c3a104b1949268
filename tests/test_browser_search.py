"""Searching one's own conversations in headless Chromium: the box above the list, the results, the way back.

The real app runs under uvicorn with the fake OpenAI server; the person chats first, then finds the conversation
by a word only the answer said, on a phone in Chinese and on a desktop in English.
"""

import pytest
from playwright.sync_api import expect

from botapp.models import Conversation, Message, MessageStatus
from botapp.search import messages_index
from tests.browser_support import DESKTOP_EN, PHONE_ZH, Screen, eventually, open_context, screenshot_path, sign_in
from tests.factories import ConversationFactory, UserFactory
from tests.fakes.openai_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.browser_support"]

# What the person asks, what the answer says, a word only the answer says (in another form), what no one says.
CHATS = {
    "zh": ("公司的年假政策是什么？", "每位员工每年有十五天带薪年假，可以分开休。", "带薪", "签证"),
    "en": (
        "What should I pack for Lisbon?",
        "Bring an umbrella and comfortable walking shoes.",
        "umbrellas",
        "volcano",
    ),
}


@pytest.mark.parametrize("screen", [pytest.param(PHONE_ZH, id="phone-zh"), pytest.param(DESKTOP_EN, id="desktop-en")])
def test_a_person_finds_their_conversation_by_a_word_of_the_answer(browser, asgi_server, fake_openai, screen: Screen,
                                                                   tmp_path):  # fmt: skip
    """A word only the answer said finds the conversation, with the word marked; someone else's never shows up;
    the result opens the conversation at that answer; a word nobody said says so."""
    question, answer, word, unsaid = CHATS["zh" if screen.chinese else "en"]
    person = UserFactory(username=f"finder-{screen.name}")
    other = ConversationFactory(user=UserFactory(username=f"other-{screen.name}"), title="Not yours")
    asked = Message.objects.create(conversation=other, role="user", content=question)
    said = Message.objects.create(conversation=other, role="assistant", content=answer)
    messages_index(asked, said)
    fake_openai.enqueue(Behaviour(text=answer))

    page = open_context(browser, screen).new_page()
    sign_in(page, asgi_server, person.username)
    page.keyboard.type(question)
    page.keyboard.press("Enter")
    expect(page.locator(".msg-assistant.status-complete")).to_contain_text(answer)
    conversation = Conversation.objects.get(user=person)
    reply = eventually(lambda: conversation.messages.filter(role="assistant", status=MessageStatus.COMPLETE).first())

    if screen.mobile:
        page.click(".list-toggle")
    expect(page.locator("#search-q")).to_be_in_viewport()
    expect(page.locator("#search-q")).to_have_attribute(
        "placeholder", "搜索对话" if screen.chinese else "Search conversations"
    )
    page.fill("#search-q", word)
    page.keyboard.press("Enter")

    results = page.locator("#conversation-list.search-results li")
    expect(results).to_have_count(1)
    expect(results.first.locator("mark").first).to_be_visible()
    expect(results.first.locator(".snippet")).to_contain_text(answer[:8])
    expect(page.locator("#search-head")).to_contain_text(
        f"有 1 个对话提到“{word}”" if screen.chinese else f"One conversation says “{word}”"
    )
    expect(page.locator("#sidebar")).to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth") <= screen.viewport["width"]
    page.screenshot(path=screenshot_path(tmp_path, f"search-{screen.name}.png"), scale="css")

    results.first.locator("a").click()
    expect(page).to_have_url(f"{asgi_server.url}/c/{conversation.pk}/#message-{reply.pk}")
    found = page.locator(f"#message-{reply.pk}")
    expect(found).to_have_class("msg msg-assistant status-complete found")
    expect(found).to_be_in_viewport()

    page.goto(f"{asgi_server.url}/search/?q={unsaid}")
    expect(page.locator("#conversation-list .empty")).to_have_text(
        "您的对话里没有找到这些词。换个说法试试。"
        if screen.chinese
        else "None of your conversations says that. Try other words."
    )
    page.context.close()
