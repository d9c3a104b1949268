"""The admin pages: staff-only access, people, conversations, read-only ledger, personas and prices, at scale."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from botapp.admin.base import EstimatedCountPaginator
from botapp.models import (
    BotUser,
    Broadcast,
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
from botapp.search import messages_index
from botapp.usage import format_usd, usage_record_create
from tests.admin_support import (  # noqa: F401  (fixtures)
    assert_login_page,
    fast_passwords_fixture,
    member_client_fixture,
    staff_client_fixture,
)
from tests.factories import BotFactory, ConversationFactory, PersonaFactory, UserFactory

pytestmark = pytest.mark.usefixtures("fast_passwords")

TOKEN = "424242424:AAsecretTokenThatMustNeverAppear-Zq9"
User = get_user_model()


def say(conversation: Conversation, question: str, answer: str, *, tokens: tuple[int, int] = (100, 50)) -> Message:
    """A question and its priced answer in `conversation`, indexed for search as the funnel does; returns the answer."""
    asked = Message.objects.create(
        conversation=conversation, role=Role.USER, sender=conversation.user, content=question, token_count=5
    )
    reply = Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        content=answer,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        model="gpt-4o-mini",
    )
    usage_record_create(
        user=conversation.user,
        kind=UsageKind.CHAT,
        model="gpt-4o-mini",
        channel=conversation.channel,
        conversation=conversation,
        message=reply,
        bot=conversation.bot,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )
    messages_index(asked, reply)
    return reply


@pytest.fixture
def world(db) -> dict:
    """One of everything the admin shows."""
    persona = PersonaFactory(name="Poet", model="gpt-4o")
    bot = BotFactory(name="helper", token=TOKEN, default_persona=persona)
    alice = UserFactory(username="alice")
    identity = TelegramIdentity.objects.create(user=alice, telegram_id=777001, username="alice_tg", first_name="Alice")
    Profile.objects.create(user=alice, monthly_budget_usd=Decimal("5"))
    BotUser.objects.create(bot=bot, identity=identity)
    chat = ConversationFactory(
        user=alice, channel=Channel.TELEGRAM, bot=bot, telegram_chat_id=777001, persona=persona, title="Haiku"
    )
    answer = say(chat, "Write a haiku about rain", "Grey sky softly weeps")
    web = ConversationFactory(user=alice, title="Taxes")
    say(web, "How do taxes work?", "Carefully.")
    broadcast = Broadcast.objects.create(bot=bot, text="Hello everyone")
    return {
        "persona": persona,
        "bot": bot,
        "alice": alice,
        "identity": identity,
        "chat": chat,
        "web": web,
        "answer": answer,
        "broadcast": broadcast,
        "record": UsageRecord.objects.get(message=answer),
    }


def admin_urls(world: dict) -> list[str]:
    return [
        reverse("admin:index"),
        reverse("admin:auth_user_changelist"),
        reverse("admin:auth_user_change", args=[world["alice"].pk]),
        reverse("admin:botapp_conversation_changelist"),
        reverse("admin:botapp_conversation_change", args=[world["chat"].pk]),
        reverse("admin:botapp_message_changelist"),
        reverse("admin:botapp_message_change", args=[world["answer"].pk]),
        reverse("admin:botapp_usagerecord_changelist"),
        reverse("admin:botapp_usagerecord_change", args=[world["record"].pk]),
        reverse("admin:botapp_bot_changelist"),
        reverse("admin:botapp_bot_add"),
        reverse("admin:botapp_bot_change", args=[world["bot"].pk]),
        reverse("admin:botapp_persona_changelist"),
        reverse("admin:botapp_persona_add"),
        reverse("admin:botapp_persona_change", args=[world["persona"].pk]),
        reverse("admin:botapp_modelprice_changelist"),
        reverse("admin:botapp_modelprice_add"),
        reverse("admin:botapp_broadcast_changelist"),
        reverse("admin:botapp_broadcast_change", args=[world["broadcast"].pk]),
        reverse("admin:botapp_botuser_changelist"),
        reverse("admin:botapp_telegramidentity_changelist"),
        reverse("admin:botapp_usage_dashboard"),
    ]


def test_every_page_opens_for_staff_and_never_shows_the_token(staff_client, world) -> None:
    """Each admin page answers 200 for staff, and no page holds the bot token in full (only its mask)."""
    for url in admin_urls(world):
        response = staff_client.get(url)
        assert response.status_code == 200, url
        assert TOKEN not in response.content.decode(), url
    page = staff_client.get(reverse("admin:botapp_bot_change", args=[world["bot"].pk])).content.decode()
    assert world["bot"].token_hint in page
    assert world["bot"].token_encrypted not in page


def test_every_page_sends_others_to_the_login_page(client, member_client, world) -> None:
    """Anonymous visitors and signed-in people who are not staff get the login page on every admin URL."""
    for url in admin_urls(world):
        assert_login_page(client.get(url), url)
        assert_login_page(member_client.get(url), url)


def test_actions_are_staff_only(member_client, world) -> None:
    """A non-staff POST of an admin action is sent to the login page and changes nothing."""
    url = reverse("admin:auth_user_changelist")
    response = member_client.post(url, {"action": "block", "_selected_action": [world["alice"].pk]})
    assert_login_page(response, url)
    assert not Profile.objects.get(user=world["alice"]).is_blocked
    url = reverse("admin:botapp_conversation_changelist")
    for action in ("export_json", "export_markdown"):
        response = member_client.post(url, {"action": action, "_selected_action": [world["chat"].pk]})
        assert_login_page(response, url)
        assert "Grey sky" not in response.content.decode()


# --- People -------------------------------------------------------------------------------------


def test_user_list_shows_telegram_identity_and_this_months_totals(staff_client, world) -> None:
    """The people list shows the Telegram account and this month's messages, tokens and cost."""
    old = ConversationFactory(user=world["alice"], title="Old")
    last_month = timezone.now() - timedelta(days=40)
    Message.objects.create(
        conversation=old, role=Role.USER, sender=world["alice"], content="old", created_at=last_month
    )
    usage_record_create(
        user=world["alice"], kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, input_tokens=10**6, at=last_month
    )
    response = staff_client.get(reverse("admin:auth_user_changelist"))
    alice = next(row for row in response.context["cl"].result_list if row.pk == world["alice"].pk)
    this_month = UsageRecord.objects.filter(user=world["alice"], created_at__gte=timezone.now().replace(day=1))
    assert alice.month_messages == 2
    assert alice.month_tokens == 300
    assert alice.month_cost == sum(record.cost_usd for record in this_month)
    page = response.content.decode()
    assert "@alice_tg" in page
    assert format_usd(alice.month_cost) in page


def test_user_list_queries_do_not_grow_with_people(staff_client, world, django_assert_max_num_queries) -> None:
    """Forty people with conversations and spend cost the same handful of queries as one (no N+1)."""
    for index in range(40):
        person = UserFactory(username=f"p{index}")
        TelegramIdentity.objects.create(user=person, telegram_id=900000 + index, username=f"p{index}")
        Profile.objects.create(user=person)
        say(ConversationFactory(user=person), "hi", "hello")
    with django_assert_max_num_queries(10):
        response = staff_client.get(reverse("admin:auth_user_changelist"))
    assert len(response.context["cl"].result_list) == 42


def test_block_and_unblock_actions(staff_client, world) -> None:
    """Blocking sets the flag (creating a missing profile); unblocking clears it."""
    bob = UserFactory(username="bob")
    url = reverse("admin:auth_user_changelist")
    response = staff_client.post(url, {"action": "block", "_selected_action": [world["alice"].pk, bob.pk]}, follow=True)
    assert "2 people blocked." in response.content.decode()
    assert Profile.objects.get(user=world["alice"]).is_blocked
    assert Profile.objects.get(user=bob).is_blocked
    staff_client.post(url, {"action": "unblock", "_selected_action": [bob.pk]})
    assert not Profile.objects.get(user=bob).is_blocked
    assert Profile.objects.get(user=world["alice"]).is_blocked


def test_budget_fields_are_edited_on_the_user_page(staff_client, world) -> None:
    """The profile inline on the user page saves budgets and the blocked flag; a negative budget is refused."""
    alice = world["alice"]
    profile = Profile.objects.get(user=alice)
    url = reverse("admin:auth_user_change", args=[alice.pk])
    form = {
        "username": "alice",
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "jarvis_profile-TOTAL_FORMS": "1",
        "jarvis_profile-INITIAL_FORMS": "1",
        "jarvis_profile-MIN_NUM_FORMS": "0",
        "jarvis_profile-MAX_NUM_FORMS": "1",
        "jarvis_profile-0-id": profile.pk,
        "jarvis_profile-0-user": alice.pk,
        "jarvis_profile-0-daily_budget_usd": "0.5",
        "jarvis_profile-0-monthly_budget_usd": "-1",
        "jarvis_profile-0-is_blocked": "on",
        "telegram-TOTAL_FORMS": "1",
        "telegram-INITIAL_FORMS": "1",
        "telegram-MIN_NUM_FORMS": "0",
        "telegram-MAX_NUM_FORMS": "1",
        "telegram-0-id": world["identity"].pk,
        "telegram-0-user": alice.pk,
    }
    response = staff_client.post(url, form)
    assert response.status_code == 200
    assert "Ensure this value is greater than or equal to 0." in response.content.decode()
    form["jarvis_profile-0-monthly_budget_usd"] = "12"
    response = staff_client.post(url, form)
    assert response.status_code == 302, response.context["errors"] if response.context else response
    profile.refresh_from_db()
    assert (profile.daily_budget_usd, profile.monthly_budget_usd, profile.is_blocked) == (
        Decimal("0.5"),
        Decimal("12"),
        True,
    )


# --- Conversations ------------------------------------------------------------------------------


def listed(response: object) -> set[str]:
    return {str(conversation) for conversation in response.context["cl"].result_list}


def test_conversation_filters_and_search(staff_client, world) -> None:
    """Channel, bot, persona and date filters, and search by user and by message text, find the right chats."""
    url = reverse("admin:botapp_conversation_changelist")
    assert listed(staff_client.get(url, {"channel__exact": "telegram"})) == {"Haiku"}
    assert listed(staff_client.get(url, {"channel__exact": "web"})) == {"Taxes"}
    assert listed(staff_client.get(url, {"bot__id__exact": world["bot"].pk})) == {"Haiku"}
    assert listed(staff_client.get(url, {"persona__id__exact": world["persona"].pk})) == {"Haiku"}
    Conversation.objects.filter(pk=world["web"].pk).update(created_at=timezone.now() - timedelta(days=60))
    today = timezone.localdate()
    dates = {"created_at__gte": today.isoformat(), "created_at__lt": (today + timedelta(days=1)).isoformat()}
    assert listed(staff_client.get(url, dates)) == {"Haiku"}
    assert listed(staff_client.get(url, {"q": "alice"})) == {"Haiku", "Taxes"}
    assert listed(staff_client.get(url, {"q": "alice_tg"})) == {"Haiku", "Taxes"}
    assert listed(staff_client.get(url, {"q": "weeps"})) == {"Haiku"}
    assert listed(staff_client.get(url, {"q": "taxes work"})) == {"Taxes"}
    assert listed(staff_client.get(url, {"q": "nobody-says-this"})) == set()


def test_conversation_page_reads_like_a_transcript(staff_client, world) -> None:
    """The detail page shows each message in order with its tokens and its cost from the ledger."""
    chat = world["chat"]
    second = say(chat, "Another one", "Puddles hold the moon", tokens=(300, 20))
    response = staff_client.get(reverse("admin:botapp_conversation_change", args=[chat.pk]))
    page = response.content.decode()
    order = [page.index(text) for text in ("Write a haiku", "Grey sky softly weeps", "Another one", "Puddles hold")]
    assert order == sorted(order)
    transcript = response.context["transcript"]
    assert [message.pk for message in transcript] == list(chat.messages.order_by("id").values_list("pk", flat=True))
    cost = UsageRecord.objects.get(message=second).cost_usd
    assert transcript[-1].cost == cost
    assert format_usd(cost) in page
    assert "300 in / 20 out tokens" in page
    assert response.context["conversation_cost"] == sum(
        r.cost_usd for r in UsageRecord.objects.filter(conversation=chat)
    )


def test_conversation_export_markdown_and_json(staff_client, world) -> None:
    """The export actions return the selected conversations with every message, as Markdown and as JSON."""
    url = reverse("admin:botapp_conversation_changelist")
    selected = [world["chat"].pk, world["web"].pk]
    response = staff_client.post(url, {"action": "export_json", "_selected_action": selected})
    assert response["Content-Type"].startswith("application/json")
    document = json.loads(response.content)
    assert [c["title"] for c in document["conversations"]] == ["Haiku", "Taxes"]
    haiku = document["conversations"][0]
    assert (haiku["user"], haiku["channel"], haiku["bot"], haiku["persona"]) == ("alice", "telegram", "helper", "Poet")
    assert [(m["role"], m["content"]) for m in haiku["messages"]] == [
        ("user", "Write a haiku about rain"),
        ("assistant", "Grey sky softly weeps"),
    ]
    response = staff_client.post(url, {"action": "export_markdown", "_selected_action": [world["chat"].pk]})
    markdown = response.content.decode()
    assert response["Content-Type"].startswith("text/markdown")
    assert markdown.startswith("# Haiku")
    assert "## User" in markdown and "Write a haiku about rain" in markdown
    assert "## Assistant" in markdown and "Grey sky softly weeps" in markdown
    assert "Taxes" not in markdown


def test_conversation_list_queries_do_not_grow(staff_client, world, django_assert_max_num_queries) -> None:
    """Forty conversations with messages and costs are listed in a bounded number of queries."""
    for index in range(40):
        say(ConversationFactory(user=world["alice"], title=f"c{index}", bot=world["bot"]), "q", "a")
    with django_assert_max_num_queries(12):
        response = staff_client.get(reverse("admin:botapp_conversation_changelist"))
    rows = response.context["cl"].result_list
    assert len(rows) == 42
    assert all(row.message_count == 2 for row in rows)


# --- The ledger and messages are read-only ------------------------------------------------------


def test_messages_and_usage_records_are_read_only(staff_client, world) -> None:
    """No add, change or delete for messages and ledger rows, and the pages offer no save button."""
    for name, pk in (("message", world["answer"].pk), ("usagerecord", world["record"].pk)):
        change = reverse(f"admin:botapp_{name}_change", args=[pk])
        page = staff_client.get(change).content.decode()
        assert 'name="_save"' not in page
        assert staff_client.post(change, {"content": "edited"}).status_code == 403
        assert staff_client.get(reverse(f"admin:botapp_{name}_add")).status_code == 403
        assert staff_client.post(reverse(f"admin:botapp_{name}_delete", args=[pk]), {"post": "yes"}).status_code == 403
    assert Message.objects.get(pk=world["answer"].pk).content == "Grey sky softly weeps"
    assert UsageRecord.objects.filter(pk=world["record"].pk).exists()
    with pytest.raises(TypeError):
        world["record"].save()


def test_a_price_change_never_rewrites_past_costs(staff_client, world) -> None:
    """Editing a price in the admin leaves the ledger's costs alone; new calls use the new price."""
    record = world["record"]
    price = ModelPrice.objects.filter(model="gpt-4o-mini").latest("valid_from")
    url = reverse("admin:botapp_modelprice_change", args=[price.pk])
    form = {
        "model": "gpt-4o-mini",
        "input_per_mtok": "100",
        "output_per_mtok": "200",
        "audio_per_minute": "0",
        "valid_from_0": price.valid_from.strftime("%Y-%m-%d"),
        "valid_from_1": price.valid_from.strftime("%H:%M:%S"),
    }
    response = staff_client.post(url, form)
    assert response.status_code == 302
    assert UsageRecord.objects.get(pk=record.pk).cost_usd == record.cost_usd
    new = usage_record_create(
        user=world["alice"], kind=UsageKind.CHAT, model="gpt-4o-mini", channel=Channel.WEB, input_tokens=10**6
    )
    assert new.cost_usd == Decimal("100")


# --- Personas and prices ------------------------------------------------------------------------


def test_persona_with_an_unknown_model_is_refused(staff_client, db) -> None:
    """A persona naming a model without a price row gets the error on the form and is not saved."""
    form = {
        "name": "Oracle",
        "system_prompt": "Foresee.",
        "model": "gpt-99",
        "temperature": "0.7",
        "max_output_tokens": "100",
        "is_active": "on",
    }
    response = staff_client.post(reverse("admin:botapp_persona_add"), form)
    assert response.status_code == 200
    assert "Unknown model “gpt-99”: add it under Model prices first." in response.content.decode()
    assert not Persona.objects.filter(name="Oracle").exists()
    form["model"] = "gpt-4o"
    assert staff_client.post(reverse("admin:botapp_persona_add"), form).status_code == 302
    assert Persona.objects.get(name="Oracle").model == "gpt-4o"


def test_negative_prices_are_refused(staff_client, db) -> None:
    """A negative price is an error on the price form and nothing is stored."""
    form = {
        "model": "my-model",
        "input_per_mtok": "-1",
        "output_per_mtok": "2",
        "audio_per_minute": "0",
        "valid_from_0": "2026-02-01",
        "valid_from_1": "00:00:00",
    }
    response = staff_client.post(reverse("admin:botapp_modelprice_add"), form)
    assert response.status_code == 200
    assert "Ensure this value is greater than or equal to 0." in response.content.decode()
    assert not ModelPrice.objects.filter(model="my-model").exists()
    form["input_per_mtok"] = "1"
    assert staff_client.post(reverse("admin:botapp_modelprice_add"), form).status_code == 302
    assert ModelPrice.objects.filter(model="my-model").exists()


# --- Large tables -------------------------------------------------------------------------------


def test_changelists_never_count_a_whole_large_table(staff_client, world, monkeypatch) -> None:
    """Past the cap, the message list is paged without a full COUNT(*) of the table and says it has more."""
    monkeypatch.setattr(EstimatedCountPaginator, "CAP", 5)
    for index in range(4):
        say(world["web"], f"question {index}", f"answer {index}")
    assert Message.objects.count() == 12
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(reverse("admin:botapp_message_changelist"))
    assert response.status_code == 200
    counts = [
        q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper() and "botapp_message" in q["sql"]
    ]
    assert counts, "the paginator counts something"
    assert all("LIMIT" in sql.upper() for sql in counts), counts
    # Unfiltered, the table's size is estimated (highest id here, or PostgreSQL's statistics); never below it.
    assert response.context["cl"].result_count >= 12
    filtered = staff_client.get(reverse("admin:botapp_message_changelist"), {"role__exact": "user"})
    assert filtered.context["cl"].result_count == 6


def test_message_and_ledger_lists_are_bounded_in_queries(staff_client, world, django_assert_max_num_queries) -> None:
    """Fifty messages and ledger rows are listed with a fixed number of queries (no N+1)."""
    for index in range(25):
        say(world["chat"], f"q{index}", f"a{index}")
    for name in ("message", "usagerecord", "broadcast", "botuser", "telegramidentity", "bot"):
        with django_assert_max_num_queries(10):
            response = staff_client.get(reverse(f"admin:botapp_{name}_changelist"))
        assert response.status_code == 200
    assert len(response.context["cl"].result_list) >= 1


def test_failed_message_shows_its_error_in_the_transcript(staff_client, world) -> None:
    """A failed answer appears in the transcript with its status and error sentence."""
    Message.objects.create(
        conversation=world["chat"],
        role=Role.ASSISTANT,
        status=MessageStatus.FAILED,
        error="The model provider did not answer in time.",
    )
    page = staff_client.get(reverse("admin:botapp_conversation_change", args=[world["chat"].pk])).content.decode()
    assert "The model provider did not answer in time." in page
    assert "Failed" in page
