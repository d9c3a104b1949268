"""The browser page's views: sign-in, conversations, isolation between people, CSRF, usage and linking."""

from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from botapp.conversations import conversation_start
from botapp.linking import link_code_create
from botapp.models import (
    Channel,
    Conversation,
    Message,
    MessageStatus,
    ModelPrice,
    Persona,
    Profile,
    Role,
    TelegramIdentity,
    UsageKind,
    UsageRecord,
)
from botapp.usage import usage_record_create
from tests.factories import BotFactory, ConversationFactory, PersonaFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


class _MarkupAudit(HTMLParser):
    """Collects every element or attribute of a page that could run script."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and not (values.get("src") or "").startswith("/static/"):
            self.found.append(f"<script {values}>")
        if tag in {"iframe", "object", "embed", "img", "svg", "math", "style"} and not (
            tag == "img" and (values.get("src") or "").startswith("data:image/")
        ):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.found.append(f"{tag}[{name}]")
            if name in {"href", "src", "action", "formaction"} and (value or "").strip().lower().startswith(
                ("javascript:", "data:text", "vbscript:")
            ):
                self.found.append(f"{tag}[{name}={value}]")


def dangerous_markup(html: str) -> list[str]:
    audit = _MarkupAudit()
    audit.feed(html)
    return audit.found


@pytest.fixture
def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_every_page_needs_a_signed_in_person(conversation):
    """Without signing in, pages and actions send the visitor to the login page and change nothing."""
    client = Client()
    for url in [
        reverse("web:home"),
        reverse("web:conversation", args=[conversation.pk]),
        reverse("web:usage"),
        reverse("web:link"),
    ]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    response = client.post(reverse("web:send", args=[conversation.pk]), {"text": "hi"})
    assert response.status_code == 302
    response = client.post(reverse("web:delete", args=[conversation.pk]))
    assert response.status_code == 302
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.exists()


def test_sign_in_and_out_with_the_login_form(user):
    """The login form signs a person in with username and password; a wrong password is told clearly."""
    client = Client()
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b'name="password"' in page.content
    wrong = client.post(reverse("login"), {"username": user.username, "password": "nope"})
    assert b"do not match" in wrong.content
    response = client.post(reverse("login"), {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get(reverse("web:home")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("web:home")).status_code == 302


def test_conversation_list_is_own_latest_first_with_titles(signed_in, user):
    """The list shows only the person's conversations, latest first, by title or first question."""
    now = timezone.now()
    old = ConversationFactory(user=user, title="Old plans", updated_at=now - timedelta(days=2))
    new = ConversationFactory(user=user, updated_at=now)
    Message.objects.create(conversation=new, role=Role.USER, content="What is the weather on Mars?")
    ConversationFactory(user=UserFactory(), title="Somebody else's secret")
    content = signed_in.get(reverse("web:home")).content.decode()
    assert "Somebody else" not in content
    assert content.index("What is the weather on Mars?") < content.index("Old plans")
    assert reverse("web:conversation", args=[old.pk]) in content


def test_new_conversation_with_a_chosen_persona(signed_in, user):
    """Starting a conversation makes a web conversation with the chosen active persona, no bot."""
    pirate = PersonaFactory(name="Pirate")
    hidden = PersonaFactory(name="Retired", is_active=False)
    page = signed_in.get(reverse("web:home")).content.decode()
    assert "Pirate" in page and "Retired" not in page
    response = signed_in.post(reverse("web:conversation_create"), {"persona": pirate.pk})
    conversation = Conversation.objects.get(user=user)
    assert response["Location"] == reverse("web:conversation", args=[conversation.pk])
    assert (conversation.channel, conversation.bot, conversation.persona) == (Channel.WEB, None, pirate)
    signed_in.post(reverse("web:conversation_create"), {"persona": hidden.pk})
    assert Conversation.objects.filter(user=user).count() == 1


def test_rename_change_persona_and_delete(signed_in, conversation):
    """The owner renames a conversation, changes its persona and deletes it; its cost stays in the ledger."""
    poet = PersonaFactory(name="Poet")
    signed_in.post(reverse("web:rename", args=[conversation.pk]), {"title": "  Trip to Kyoto "})
    signed_in.post(reverse("web:persona", args=[conversation.pk]), {"persona": poet.pk})
    conversation.refresh_from_db()
    assert (conversation.title, conversation.persona) == ("Trip to Kyoto", poet)
    answer = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="Hi")
    usage_record_create(
        user=conversation.user, kind=UsageKind.CHAT, model="gpt-4o-mini", channel=Channel.WEB,
        conversation=conversation, message=answer, input_tokens=1000, output_tokens=1000,
    )  # fmt: skip
    response = signed_in.post(reverse("web:delete", args=[conversation.pk]))
    assert response["Location"] == reverse("web:home")
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(pk=answer.pk).exists()
    [record] = UsageRecord.objects.all()
    assert record.cost_usd == Decimal("0.00075") and record.conversation is None


def test_another_persons_conversation_is_404_for_reads_and_writes(signed_in):
    """Someone else's conversation does not exist for you: every read and write is a 404 and changes nothing."""
    theirs = ConversationFactory(user=UserFactory(), title="Theirs")
    Message.objects.create(conversation=theirs, role=Role.USER, content="private words")
    poet = PersonaFactory(name="Poet")
    pk = theirs.pk
    assert signed_in.get(reverse("web:conversation", args=[pk])).status_code == 404
    assert signed_in.post(reverse("web:rename", args=[pk]), {"title": "Mine now"}).status_code == 404
    assert signed_in.post(reverse("web:persona", args=[pk]), {"persona": poet.pk}).status_code == 404
    assert signed_in.post(reverse("web:send", args=[pk]), {"text": "hello"}).status_code == 404
    assert signed_in.post(reverse("web:delete", args=[pk])).status_code == 404
    theirs.refresh_from_db()
    assert (theirs.title, theirs.persona.name) == ("Theirs", "Jarvis")
    assert list(theirs.messages.values_list("content", flat=True)) == ["private words"]


def test_post_without_csrf_token_is_refused(user, conversation):
    """A POST without the CSRF token is a 403 and stores nothing; with the token header it goes through."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(reverse("web:send", args=[conversation.pk]), {"text": "hello"}).status_code == 403
    assert client.post(reverse("web:conversation_create"), {"persona": conversation.persona_id}).status_code == 403
    assert client.post(reverse("web:delete", args=[conversation.pk])).status_code == 403
    assert not Message.objects.exists() and Conversation.objects.count() == 1
    client.get(reverse("web:conversation", args=[conversation.pk]))
    token = client.cookies["csrftoken"].value
    response = client.post(reverse("web:rename", args=[conversation.pk]), {"title": "ok"}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == "ok"


def test_history_renders_markdown_and_escapes_hostile_input(signed_in, conversation):
    """Stored questions and answers show Markdown as HTML, but no script, handler or javascript: link survives."""
    Message.objects.create(
        conversation=conversation, role=Role.USER, content='<script>alert("user")</script><b onclick=x()>hi</b>'
    )
    Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        content=(
            "**Bold** and `code`\n\n```python\nprint('x')\n```\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
            '<script>alert("model")</script>\n\n<img src=x onerror="alert(1)">\n\n'
            "[click](javascript:alert(1)) [docs](https://example.com)"
        ),
        status=MessageStatus.COMPLETE,
    )
    content = signed_in.get(reverse("web:conversation", args=[conversation.pk])).content.decode()
    assert "<strong>Bold</strong>" in content and '<code class="language-python">' in content
    assert "<li>one</li>" in content and "<td>1</td>" in content
    assert '<a href="https://example.com" target="_blank" rel="noopener nofollow noreferrer">docs</a>' in content
    assert "&lt;script&gt;alert(&quot;user&quot;)&lt;/script&gt;" in content
    assert dangerous_markup(content) == []
    assert "Content-Security-Policy" in signed_in.get(reverse("web:home")).headers


def test_failed_and_incomplete_answers_show_their_state(signed_in, conversation):
    """A failed answer shows its error sentence and an incomplete one is marked, with what it cost."""
    Message.objects.create(conversation=conversation, role=Role.USER, content="Q1", status=MessageStatus.FAILED)
    Message.objects.create(
        conversation=conversation, role=Role.ASSISTANT, status=MessageStatus.FAILED, error="The AI service broke."
    )
    Message.objects.create(
        conversation=conversation, role=Role.ASSISTANT, content="Half an ans", status=MessageStatus.INCOMPLETE,
        error="Stopped.", input_tokens=10, output_tokens=3,
    )  # fmt: skip
    content = signed_in.get(reverse("web:conversation", args=[conversation.pk])).content.decode()
    assert "The AI service broke." in content
    assert "Incomplete answer: Stopped." in content and "Half an ans" in content
    assert "10 tokens in · 3 out" in content


def test_telegram_conversation_is_read_only_in_the_browser(signed_in, user):
    """A Telegram conversation is shown but not sent to from the browser (answers would not reach Telegram)."""
    conversation = ConversationFactory(user=user, channel=Channel.TELEGRAM, bot=BotFactory(), telegram_chat_id=5)
    page = signed_in.get(reverse("web:conversation", args=[conversation.pk])).content.decode()
    assert 'id="composer"' not in page and "continue it there" in page
    response = signed_in.post(reverse("web:send", args=[conversation.pk]), {"text": "hi"})
    assert response.status_code == 409 and "Telegram" in response.json()["message"]
    assert not conversation.messages.exists()


def test_usage_page_shows_chart_models_and_budget(signed_in, user):
    """The usage page charts cost and tokens per day, sums per model, and shows what is left of the budget."""
    Profile.objects.update_or_create(user=user, defaults={"daily_budget_usd": Decimal("1.00")})
    usage_record_create(user=user, kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB,
                        input_tokens=100_000, output_tokens=10_000)  # fmt: skip
    usage_record_create(user=user, kind=UsageKind.CHAT, model="gpt-4o-mini", channel=Channel.TELEGRAM,
                        input_tokens=1000, output_tokens=1000, at=timezone.now() - timedelta(days=3))  # fmt: skip
    usage_record_create(user=UserFactory(), kind=UsageKind.CHAT, model="gpt-4.1", channel=Channel.WEB,
                        input_tokens=1_000_000)  # fmt: skip
    response = signed_in.get(reverse("web:usage"))
    content = response.content.decode()
    # gpt-4o: 100k × $2.50/M + 10k × $10/M = $0.35; gpt-4o-mini: 1k × $0.15/M + 1k × $0.60/M = $0.00075.
    assert "$0.35" in content and "$0.00075" in content
    assert "gpt-4.1" not in content
    assert "$0.65 left of $1.00" in content
    chart = response.context["cost_chart"]
    assert len(chart.segments) == 2 and not chart.empty
    tallest = max(chart.segments, key=lambda segment: segment.height)
    assert "$0.35" in tallest.title
    # Two days with use: two cost bars and two input-token bars (series 0), two output-token bars (series 1).
    assert content.count('<rect class="bar series-0"') == 4
    assert content.count('<rect class="bar series-1"') == 2
    assert signed_in.get(reverse("web:usage") + "?days=7").context["days"] == 7
    assert signed_in.get(reverse("web:usage") + "?days=oops").context["days"] == 30


def test_link_page_joins_telegram_conversations(signed_in, user):
    """A code from /link moves the Telegram identity's conversations into the web account; a bad code says why."""
    telegram_user = UserFactory(username="tg_42", password=None)
    identity = TelegramIdentity.objects.create(user=telegram_user, telegram_id=42, username="ada")
    chat = ConversationFactory(user=telegram_user, channel=Channel.TELEGRAM, bot=BotFactory(), telegram_chat_id=42,
                               title="From my phone")  # fmt: skip
    bad = signed_in.post(reverse("web:link"), {"code": "WRONG123"})
    assert "unknown or has expired" in bad.content.decode()
    code = link_code_create(identity=identity).code
    response = signed_in.post(reverse("web:link"), {"code": code.lower()})
    assert response["Location"] == reverse("web:home")
    chat.refresh_from_db()
    assert chat.user == user
    assert "From my phone" in signed_in.get(reverse("web:home")).content.decode()
    assert "@ada" in signed_in.get(reverse("web:link")).content.decode()


def test_pages_follow_the_browsers_language(signed_in, conversation):
    """With Accept-Language zh-CN the page and the funnel's sentences are in Simplified Chinese."""
    page = signed_in.get(reverse("web:conversation", args=[conversation.pk]), HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    content = page.content.decode()
    assert '<html lang="zh-hans">' in content
    assert "发送" in content and "Send" not in content
    refused = signed_in.post(reverse("web:send", args=[conversation.pk]), {"text": "   "}, HTTP_ACCEPT_LANGUAGE="zh-CN")
    assert refused.status_code == 400
    assert "消息" in refused.json()["message"]
    english = signed_in.get(reverse("web:usage"), HTTP_ACCEPT_LANGUAGE="en-GB")
    assert "Your usage" in english.content.decode()


# --- The page's newer endpoints -------------------------------------------------------------------


def test_home_opens_on_an_empty_focused_box_with_the_default_persona_chosen(signed_in):
    """The home page is a new conversation: a message box with autofocus, the default persona preselected."""
    PersonaFactory(name="Aardvark")
    page = signed_in.get(reverse("web:home")).content.decode()
    assert 'id="id_text"' in page and "autofocus" in page
    assert '<option value="' in page
    jarvis = Persona.objects.get(name="Jarvis")
    assert f'<option value="{jarvis.pk}" selected>Jarvis</option>' in page
    assert page.index(">Jarvis<") < page.index(">Aardvark<")


def test_the_bots_or_the_sites_default_persona_starts_conversations_never_the_first_by_name(user):
    """Without a choice a conversation gets its bot's default persona, else the site's default, not "Aardvark"."""
    PersonaFactory(name="Aardvark")
    pirate = PersonaFactory(name="Pirate")
    assert conversation_start(user=user, channel=Channel.WEB).persona.name == "Jarvis"
    bot = BotFactory(default_persona=pirate)
    assert conversation_start(user=user, channel=Channel.TELEGRAM, bot=bot, telegram_chat_id=1).persona == pirate
    Persona.objects.filter(name="Jarvis").update(is_default=False)
    pirate.is_default = True
    pirate.save()
    assert conversation_start(user=user, channel=Channel.WEB).persona == pirate


def test_a_refused_first_message_leaves_no_empty_conversation(signed_in, user):
    """An empty first message from the home page is refused with a sentence, and no conversation is made."""
    response = signed_in.post(reverse("web:start_send"), {"text": "  "})
    assert response.status_code == 400 and "empty" in response.json()["message"]
    response = signed_in.post(reverse("web:start_send"), {"text": "hi", "model": "gpt-4o"})
    assert response.status_code == 400 and "not offered" in response.json()["message"]
    assert not Conversation.objects.filter(user=user).exists()


def test_export_of_ones_own_conversation_as_markdown_and_json(signed_in, conversation):
    """One's own conversation downloads as Markdown or JSON (the admin's exporters); anyone else's is a 404."""
    conversation.title = "Trip to Kyoto"
    conversation.save()
    Message.objects.create(conversation=conversation, role=Role.USER, content="Where to stay?")
    Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="Near **Gion**.")
    markdown = signed_in.get(reverse("web:export", args=[conversation.pk, "md"]))
    assert markdown["Content-Type"].startswith("text/markdown")
    assert "filename*=UTF-8''trip-to-kyoto.md" in markdown["Content-Disposition"]
    assert "# Trip to Kyoto" in markdown.content.decode() and "Near **Gion**." in markdown.content.decode()
    document = signed_in.get(reverse("web:export", args=[conversation.pk, "json"])).json()
    assert [m["content"] for m in document["conversations"][0]["messages"]] == ["Where to stay?", "Near **Gion**."]
    assert signed_in.get(reverse("web:export", args=[conversation.pk, "exe"])).status_code == 404
    theirs = ConversationFactory(user=UserFactory())
    assert signed_in.get(reverse("web:export", args=[theirs.pk, "md"])).status_code == 404


def test_title_endpoint_names_the_conversation_as_the_list_does(signed_in, conversation):
    """The page asks for the title after the first answer: the first question in plain words until titled."""
    Message.objects.create(conversation=conversation, role=Role.USER, content="**What** is `x`?")
    url = reverse("web:title", args=[conversation.pk])
    assert signed_in.get(url).json() == {"title": "What is x?", "titled": False}
    conversation.title = "About x"
    conversation.save()
    assert signed_in.get(url).json() == {"title": "About x", "titled": True}


def test_only_offered_models_may_be_chosen_and_the_choice_is_answered_as_json(signed_in, conversation):
    """The model menu lists offered models with prices; a model not offered is refused; the persona's model is the
    empty choice. The page's script gets JSON, a page without script a redirect."""
    ModelPrice.objects.filter(model="gpt-4.1-nano").update(offered=True)
    page = signed_in.get(reverse("web:conversation", args=[conversation.pk])).content.decode()
    assert "gpt-4.1-nano · $0.10 in · $0.40 out per 1M tokens" in page and "gpt-4o ·" not in page
    url = reverse("web:model", args=[conversation.pk])
    chosen = signed_in.post(url, {"model": "gpt-4.1-nano"}, HTTP_ACCEPT="application/json")
    assert chosen.status_code == 200 and "gpt-4.1-nano" in chosen.json()["message"]
    refused = signed_in.post(url, {"model": "gpt-4o"}, HTTP_ACCEPT="application/json")
    assert refused.status_code == 400 and "not offered" in refused.json()["message"]
    conversation.refresh_from_db()
    assert conversation.model == "gpt-4.1-nano"
    assert signed_in.post(url, {"model": ""})["Location"] == reverse("web:conversation", args=[conversation.pk])
    conversation.refresh_from_db()
    assert conversation.model == ""


def test_regenerate_and_edit_are_refused_where_they_cannot_work(signed_in, user, conversation):
    """Nothing to regenerate, a message of another conversation, or a Telegram conversation: a sentence, no write."""
    refused = signed_in.post(reverse("web:regenerate", args=[conversation.pk]))
    assert refused.status_code == 400 and "nothing to answer again" in refused.json()["message"]
    other = ConversationFactory(user=user)
    foreign = Message.objects.create(conversation=other, role=Role.USER, content="elsewhere")
    response = signed_in.post(reverse("web:edit", args=[conversation.pk, foreign.pk]), {"text": "new words"})
    assert response.status_code == 400 and "no longer in this conversation" in response.json()["message"]
    telegram = ConversationFactory(user=user, channel=Channel.TELEGRAM, bot=BotFactory(), telegram_chat_id=9)
    question = Message.objects.create(conversation=telegram, role=Role.USER, content="hi")
    assert signed_in.post(reverse("web:regenerate", args=[telegram.pk])).status_code == 409
    assert signed_in.post(reverse("web:edit", args=[telegram.pk, question.pk]), {"text": "x"}).status_code == 409
    assert list(Message.objects.order_by("id").values_list("content", "status")) == [
        ("elsewhere", MessageStatus.COMPLETE),
        ("hi", MessageStatus.COMPLETE),
    ]


def test_favicon_and_the_page_icon(signed_in):
    """/favicon.ico is no 404: it leads to the page's icon, which every page links."""
    response = Client().get("/favicon.ico")
    assert response.status_code == 302 and response["Location"].endswith("jarvis/favicon.svg")
    assert 'rel="icon"' in signed_in.get(reverse("web:home")).content.decode()


def test_a_spent_tiny_budget_reads_as_spent(signed_in, user):
    """A $0.001 daily budget is shown as $0.001 (not $0.00), and its meter marks the spent end as bad."""
    Profile.objects.update_or_create(user=user, defaults={"daily_budget_usd": Decimal("0.001")})
    usage_record_create(user=user, kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, output_tokens=1000)
    content = signed_in.get(reverse("web:usage")).content.decode()
    assert "$0 left of $0.001" in content
    assert 'low="0.0005' in content and 'high="0.0009' in content and 'optimum="0"' in content
