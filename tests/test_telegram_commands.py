"""The bot's commands in English and Simplified Chinese, inline mode, and the command menu."""

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from botapp.crypto import token_digest
from botapp.models import Conversation, MessageStatus, ModelPrice, Persona, Role, TelegramLinkCode, WebSignInLink
from botapp.usage import profile_for
from tests.factories import PersonaFactory, UserFactory
from tests.fakes.openai_server import Behaviour
from tests.telegram_support import TOKEN, USERNAME, Running

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)


async def test_start_greets_by_name_in_chinese_and_english(jarvis: Running):
    """/start greets the person by their first name (no "sir"), in Chinese for a Chinese client, and names /web."""
    jarvis.telegram.push_text(TOKEN, 601, "/start", language_code="zh-hans", first_name="小明")
    jarvis.telegram.push_text(TOKEN, 602, "/start", language_code="en", first_name="Ada")
    [chinese] = await jarvis.answered(601)
    [english] = await jarvis.answered(602)
    assert chinese.text.startswith("您好，小明！我是 Jarvis，您的助理。")
    assert english.text.startswith("Hello Ada, I am Jarvis, your assistant.")
    assert "sir" not in english.text and "先生" not in chinese.text
    assert "/web" in english.text and "/web" in chinese.text
    assert jarvis.openai.chat_requests() == []


async def test_help_lists_the_commands_in_the_users_language(jarvis: Running):
    """/help lists every command, translated for a Chinese client."""
    jarvis.telegram.push_text(TOKEN, 603, "/help", language_code="zh")
    [text] = await jarvis.answered(603)
    for command in ("/new", "/mode", "/model", "/stats", "/retry", "/caps", "/web", "/link"):
        assert command in text.text
    assert "开始新的对话" in text.text


async def test_command_menu_is_registered_in_english_and_chinese(jarvis: Running):
    """setMyCommands at start-up: an English default menu and a Chinese one."""
    english = jarvis.telegram.commands(TOKEN)
    chinese = jarvis.telegram.commands(TOKEN, language_code="zh")
    assert [c["command"] for c in english] == [c["command"] for c in chinese]
    assert {"start", "help", "new", "mode", "model", "stats", "retry", "caps", "web", "link"} <= {
        c["command"] for c in english
    }
    assert english[0]["description"] != chinese[0]["description"]


async def test_new_starts_a_fresh_conversation(jarvis: Running):
    """/new (and /reset) starts a conversation without the earlier messages; the old one is kept."""
    jarvis.telegram.push_text(TOKEN, 604, "Remember the number 42")
    await jarvis.answered(604, 1)
    jarvis.telegram.push_text(TOKEN, 604, "/reset")
    await jarvis.answered(604, 2)
    jarvis.telegram.push_text(TOKEN, 604, "Which number?")
    await jarvis.answered(604, 3)
    last = jarvis.openai.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in last if m["role"] != "system"] == ["Which number?"]
    assert await Conversation.objects.filter(telegram_chat_id=604).acount() == 2


async def test_mode_offers_personas_and_the_choice_changes_the_prompt(jarvis: Running):
    """/mode shows a button per active persona; pressing one switches the conversation's system prompt."""
    pirate = await sync_to_async(PersonaFactory)(name="Pirate", system_prompt="Talk like a pirate.")
    await sync_to_async(PersonaFactory)(name="Hidden", is_active=False)
    jarvis.telegram.push_text(TOKEN, 605, "/mode")
    [menu] = await jarvis.answered(605)
    buttons = [row[0] for row in menu.reply_markup["inline_keyboard"]]
    names = [b["text"].removeprefix("✓ ") for b in buttons]
    assert "Pirate" in names and "Jarvis" in names and "Hidden" not in names
    choice = next(b for b in buttons if b["text"] == "Pirate")
    jarvis.telegram.push_callback_query(TOKEN, 605, menu.message_id, choice["callback_data"])
    await jarvis.telegram.await_for(lambda: jarvis.telegram.calls("answerCallbackQuery"))
    await jarvis.settled()
    jarvis.telegram.push_text(TOKEN, 605, "Hello")
    await jarvis.answered(605, 2)
    system = jarvis.openai.chat_requests()[-1].body["messages"][0]
    assert system == {"role": "system", "content": pirate.system_prompt}
    assert (await Conversation.objects.aget(telegram_chat_id=605)).persona_id == pirate.pk


async def test_stats_shows_tokens_cost_and_budget(jarvis: Running, settings):
    """/stats reports today's, this month's and all-time tokens and cost, and the budget left."""
    settings.DEFAULT_DAILY_BUDGET_USD = "1.00"
    jarvis.openai.enqueue(Behaviour(text="ok", usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    jarvis.telegram.push_text(TOKEN, 606, "Spend something")
    await jarvis.answered(606, 1)
    jarvis.telegram.push_text(TOKEN, 606, "/stats")
    stats = (await jarvis.answered(606, 2))[-1].text
    # 1000 × $0.15/M + 500 × $0.60/M = $0.00045, shown as it is.
    assert stats.count("1,500 tokens, $0.00045") == 3, stats
    assert "$0.9996 left of $1.00" in stats or "$0.9995 left of $1.00" in stats, stats
    assert "unlimited" in stats  # no monthly budget


async def test_a_tenth_of_a_cent_budget_reads_the_same_in_stats_the_page_and_the_admin(jarvis: Running):
    """A $0.001 daily budget reads "$0.001" in /stats, on the person's usage page and in the admin's people list."""
    jarvis.telegram.push_text(TOKEN, 616, "/stats")
    await jarvis.answered(616, 1)
    person = await sync_to_async(get_user_model().objects.get)(telegram__telegram_id=616)
    profile = await sync_to_async(profile_for)(person)
    profile.daily_budget_usd = Decimal("0.001")
    await profile.asave(update_fields=["daily_budget_usd"])
    jarvis.telegram.push_text(TOKEN, 616, "/stats")
    stats = (await jarvis.answered(616, 2))[-1].text

    def pages() -> tuple[str, str]:
        page, admin = Client(), Client()
        page.force_login(person)
        admin.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
        usage = page.get(reverse("web:usage")).content.decode()
        people = admin.get(reverse("admin:auth_user_changelist"), {"q": person.username}).content.decode()
        return usage, people

    usage, people = await sync_to_async(pages)()
    assert "$0.001 left of $0.001" in stats, stats
    assert "$0.001 left of $0.001" in usage
    assert "$0.001 a day" in people


async def test_retry_answers_the_last_question_again(jarvis: Running):
    """/retry asks the model again; the earlier answer is kept on record as superseded."""
    jarvis.openai.enqueue(Behaviour(text="First try"), Behaviour(text="Second try"))
    jarvis.telegram.push_text(TOKEN, 607, "Question")
    await jarvis.answered(607, 1)
    jarvis.telegram.push_text(TOKEN, 607, "/retry")
    answers = await jarvis.answered(607, 2)
    assert [a.text for a in answers] == ["First try", "Second try"]
    statuses = await sync_to_async(
        lambda: list(
            Conversation.objects.get(telegram_chat_id=607)
            .messages.filter(role=Role.ASSISTANT)
            .order_by("id")
            .values_list("status", flat=True)
        )
    )()
    assert statuses == [MessageStatus.SUPERSEDED, MessageStatus.COMPLETE]


async def test_retry_with_nothing_to_retry_says_so(jarvis: Running):
    """/retry in a new chat explains there is nothing to answer again, without a model call."""
    jarvis.telegram.push_text(TOKEN, 608, "/retry")
    [answer] = await jarvis.answered(608)
    assert "nothing to answer again" in answer.text
    assert jarvis.openai.chat_requests() == []


async def test_caps_and_inline_caps_shout_like_the_seed(jarvis: Running):
    """/caps shouts its arguments back; inline mode offers the same in capitals."""
    jarvis.telegram.push_text(TOKEN, 609, "/caps i love you")
    [answer] = await jarvis.answered(609)
    assert answer.text == "I LOVE YOU"
    update = jarvis.telegram.push_inline_query(TOKEN, "make me loud", user_id=609)
    [call] = await jarvis.telegram.await_for(lambda: jarvis.telegram.calls("answerInlineQuery"))
    assert call.params["inline_query_id"] == update["inline_query"]["id"]
    [result] = call.params["results"]
    assert result["input_message_content"]["message_text"] == "MAKE ME LOUD"


async def test_unknown_command_gets_a_reply(jarvis: Running):
    """An unknown command is answered (the seed's spirit), without a model call."""
    jarvis.telegram.push_text(TOKEN, 610, "/frobnicate", language_code="zh-CN")
    [answer] = await jarvis.answered(610)
    assert "这是嘛意思" in answer.text and "/help" in answer.text
    assert jarvis.openai.chat_requests() == []


async def test_link_gives_a_code_and_names_the_web_page(jarvis: Running, settings):
    """/link replies with a fresh one-time code and the address of the page (SITE_URL) where it is entered."""
    settings.SITE_URL = "https://jarvis.example"
    jarvis.telegram.push_text(TOKEN, 611, "/link")
    [answer] = await jarvis.answered(611)
    code = await TelegramLinkCode.objects.select_related("identity").aget()
    assert code.identity.telegram_id == 611
    assert code.code in answer.text and "https://jarvis.example/link/" in answer.text
    assert "/web" in answer.text


async def test_web_sends_a_one_time_sign_in_link_in_private_only(jarvis: Running, settings):
    """/web answers with a sign-in link on SITE_URL, without a link preview (Telegram would open it); only a digest
    is stored. In a group it is refused and no link is made."""
    settings.SITE_URL = "https://jarvis.example/"
    jarvis.telegram.push_text(TOKEN, 614, "/web", language_code="zh-CN")
    [answer] = await jarvis.answered(614)
    [url] = [word for word in answer.text.split() if word.startswith("https://")]
    assert url.startswith("https://jarvis.example/accounts/telegram/")
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert len(token) >= 40 and "只能使用一次" in answer.text
    [sent] = [c for c in jarvis.telegram.calls("sendMessage") if c.chat_id == 614]
    assert sent.params["link_preview_options"]["is_disabled"] is True
    link = await WebSignInLink.objects.select_related("identity").aget()
    assert link.identity.telegram_id == 614 and token not in link.token_digest
    assert link.token_digest == token_digest(token)
    jarvis.telegram.push_text(TOKEN, -100614, f"/web@{USERNAME}", user_id=614)
    [refused] = await jarvis.answered(-100614)
    assert "private chat" in refused.text or "私聊" in refused.text
    assert await WebSignInLink.objects.acount() == 1


async def test_model_lists_offered_models_with_prices_and_the_choice_answers(jarvis: Running):
    """/model offers the persona's model and each model an admin offers, with its price; the choice answers the next
    message. Without offered models it says which model answers."""
    jarvis.telegram.push_text(TOKEN, 615, "/model")
    [none] = await jarvis.answered(615)
    assert "gpt-4o-mini" in none.text and none.reply_markup is None
    await ModelPrice.objects.filter(model__in=["gpt-4.1-nano", "gpt-4o"]).aupdate(offered=True)
    jarvis.telegram.push_text(TOKEN, 615, "/model")
    menu = (await jarvis.answered(615, 2))[-1]
    labels = [row[0]["text"] for row in menu.reply_markup["inline_keyboard"]]
    assert labels == [
        "✓ Persona's model (gpt-4o-mini)",
        "gpt-4.1-nano · $0.10 in · $0.40 out per 1M tokens",
        "gpt-4o · $2.50 in · $10.00 out per 1M tokens",
    ]
    nano = menu.reply_markup["inline_keyboard"][1][0]
    jarvis.telegram.push_callback_query(TOKEN, 615, menu.message_id, nano["callback_data"])
    await jarvis.telegram.await_for(lambda: jarvis.telegram.calls("answerCallbackQuery"))
    await jarvis.settled()
    assert (await Conversation.objects.aget(telegram_chat_id=615)).model == "gpt-4.1-nano"
    jarvis.telegram.push_text(TOKEN, 615, "Hello")
    await jarvis.answered(615, 3)
    assert jarvis.openai.chat_requests()[-1].body["model"] == "gpt-4.1-nano"
    # A model that is not offered cannot be chosen, even by a hand-made button.
    jarvis.telegram.push_callback_query(TOKEN, 615, menu.message_id, "model:gpt-5")
    await jarvis.telegram.await_for(lambda: len(jarvis.telegram.calls("answerCallbackQuery")) == 2)
    refusal = jarvis.telegram.calls("answerCallbackQuery")[-1].params
    assert refusal["show_alert"] is True and "gpt-5" in refusal["text"]
    assert (await Conversation.objects.aget(telegram_chat_id=615)).model == "gpt-4.1-nano"


async def test_persona_list_is_read_from_the_database(jarvis: Running):
    """The default persona is offered by /mode and marked as the current one."""
    jarvis.telegram.push_text(TOKEN, 612, "/mode")
    [menu] = await jarvis.answered(612)
    jarvis_persona = await Persona.objects.aget(name="Jarvis")
    current = [b for row in menu.reply_markup["inline_keyboard"] for b in row if b["text"].startswith("✓ ")]
    assert [b["callback_data"] for b in current] == [f"persona:{jarvis_persona.pk}"]
