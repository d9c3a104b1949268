"""Searching chat messages: the index the funnel keeps, a person's own search, and the admin's search boxes."""

from __future__ import annotations

import importlib
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from botapp import search, tasks
from botapp.conversations import conversation_reply
from botapp.models import Conversation, Message, MessageStatus, Role
from botapp.search import MESSAGES, conversations_matching, messages_index, snippet
from botapp.web.services import conversation_delete
from tests.admin_support import fast_passwords_fixture, staff_client_fixture  # noqa: F401  (fixtures)
from tests.factories import ConversationFactory, UserFactory
from tests.fakes.openai_server import Behaviour


def say(conversation: Conversation, question: str, answer: str, *, at: timezone.datetime | None = None) -> Message:
    """A question and its answer, indexed as the funnel indexes them when it stores the answer; returns the answer."""
    at = at or timezone.now()
    asked = Message.objects.create(
        conversation=conversation, role=Role.USER, sender=conversation.user, content=question, created_at=at
    )
    reply = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content=answer, created_at=at)
    messages_index(asked, reply)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=at)
    return reply


def indexed() -> set[int]:
    """The ids of the messages in the full-text index."""
    column = "rowid" if connection.vendor == "sqlite" else "id"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {MESSAGES.name}")  # noqa: S608
        return {row[0] for row in cursor.fetchall()}


def found(user, query: str) -> list[int]:
    return [hit.conversation.pk for hit in conversations_matching(user=user, query=query)]


@pytest.fixture
def ada(db):
    return UserFactory(username="ada")


# --- A person's own search ----------------------------------------------------------------------


def test_english_words_find_the_conversation_in_any_form_newest_first(ada) -> None:
    """Stemmed English words find the conversations that say them, the most recently active first, with a snippet."""
    now = timezone.now()
    older = ConversationFactory(user=ada, title="Trip")
    say(older, "What should I pack for Lisbon?", "Bring an umbrella: it rains in spring.", at=now - timedelta(days=3))
    newer = ConversationFactory(user=ada, title="Garden")
    say(newer, "Is it raining tomorrow?", "Yes, light rain all day.", at=now - timedelta(hours=1))
    say(ConversationFactory(user=ada, title="Taxes"), "How do taxes work?", "Carefully.")

    assert found(ada, "rain") == [newer.pk, older.pk]
    assert found(ada, "umbrellas") == [older.pk]
    [hit] = conversations_matching(user=ada, query="UMBRELLA")
    assert "<mark>umbrella</mark>" in hit.snippet and hit.message.role == Role.ASSISTANT
    assert found(ada, "volcano") == []
    assert found(ada, "  ") == []


def test_chinese_words_are_found_by_their_characters(ada) -> None:
    """A Chinese question or answer is found by a word in it, and not by a word it does not contain."""
    leave = ConversationFactory(user=ada, title="")
    say(leave, "公司的年假政策是什么？", "每位员工每年有十五天带薪年假。")
    weekend = ConversationFactory(user=ada, title="周末")
    say(weekend, "帮我列一个周末计划", "周六爬山，周日看书。")

    assert found(ada, "年假") == [leave.pk]
    assert found(ada, "带薪年假") == [leave.pk]
    assert found(ada, "爬山") == [weekend.pk]
    assert found(ada, "签证") == []
    [hit] = conversations_matching(user=ada, query="带薪")
    assert "<mark>带薪</mark>" in hit.snippet
    # The untitled conversation is named by its first question, as in the list beside the page.
    assert hit.conversation.first_question.startswith("公司的年假政策")


def test_only_the_persons_own_conversations_are_searched(ada) -> None:
    """Someone else's conversation that says the same words is never found, nor shown in a snippet."""
    mine = ConversationFactory(user=ada)
    say(mine, "hello there", "Hello, Ada.")
    theirs = ConversationFactory(user=UserFactory(username="bob"))
    say(theirs, "hello there", "Hello, Bob. Your secret plan is safe.")

    assert found(ada, "hello") == [mine.pk]
    assert found(ada, "secret plan") == []
    assert found(theirs.user, "hello") == [theirs.pk]


def test_when_no_message_says_every_word_the_best_partial_matches_are_found(ada) -> None:
    """Words never said together still find the messages that say some of them (best first)."""
    trip = ConversationFactory(user=ada)
    say(trip, "Pack for Lisbon", "Take an umbrella.")
    assert found(ada, "umbrella snowshoes") == [trip.pk]


def test_replaced_answers_are_not_found(ada) -> None:
    """An answer replaced by a retry or an edit is off the page, so the search does not find it either."""
    chat = ConversationFactory(user=ada)
    replaced = say(chat, "Name a colour", "Turquoise.")
    Message.objects.filter(pk=replaced.pk).update(status=MessageStatus.SUPERSEDED)
    assert found(ada, "turquoise") == []
    assert found(ada, "colour") == [chat.pk]


def test_the_snippet_is_escaped_and_cut_around_the_word() -> None:
    """Markup in a message stays text, and a long message shows the part around the word found."""
    text = "<b>bold</b> " + "filler words " * 30 + "the needle is here " + "more words " * 30
    piece = snippet(text, "needle")
    assert "&lt;b&gt;" not in piece and "<b>" not in piece
    assert "<mark>needle</mark>" in piece and piece.startswith("…") and piece.endswith("…")
    assert str(snippet("<script>alert(1)</script> hello", "hello")).startswith("&lt;script&gt;")


# --- Keeping the index in step --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_funnel_indexes_the_question_and_the_answer_when_it_stores_the_answer(fake_openai) -> None:
    """A real turn through the funnel: the question and the answer are both searchable once the answer is stored."""
    from asgiref.sync import sync_to_async

    fake_openai.enqueue(Behaviour(text="每位员工每年有十五天带薪年假。"))
    conversation = await sync_to_async(ConversationFactory)(title="假期")
    reply = await conversation_reply(conversation=conversation, text="What is the annual leave policy?")
    assert reply.text.startswith("每位员工")
    user = await sync_to_async(lambda: conversation.user)()
    assert await sync_to_async(found)(user, "带薪") == [conversation.pk]
    assert await sync_to_async(found)(user, "policies") == [conversation.pk]


def test_a_deleted_conversation_leaves_the_index(ada) -> None:
    """Deleting a conversation on the page takes its messages out of the index, and the search stops finding it."""
    gone = ConversationFactory(user=ada)
    say(gone, "hello", "Goodbye soon.")
    kept = ConversationFactory(user=ada)
    kept_answer = say(kept, "hello", "Still here.")
    conversation_delete(conversation=gone)
    assert found(ada, "hello") == [kept.pk]
    assert indexed() == set(kept.messages.values_list("pk", flat=True)) and kept_answer.pk in indexed()


def test_deleting_a_person_takes_their_messages_out_of_the_index(ada) -> None:
    """A person's account going takes their conversations' words with it (the conversations cascade)."""
    say(ConversationFactory(user=ada), "hello", "Hi.")
    ada.delete()
    assert indexed() == set()


@pytest.mark.parametrize("mode", ["delete", "anonymise"])
def test_retention_takes_old_messages_out_of_the_index(ada, settings, mode) -> None:
    """Messages the retention job deletes or blanks are no longer found; newer ones still are."""
    settings.RETENTION_DAYS, settings.RETENTION_MODE = 30, mode
    chat = ConversationFactory(user=ada)
    say(chat, "Old secret about penguins", "Penguins noted.", at=timezone.now() - timedelta(days=90))
    say(chat, "New question about otters", "Otters noted.")
    old_chat = ConversationFactory(user=ada)
    say(old_chat, "Ancient penguins", "Very old.", at=timezone.now() - timedelta(days=90))
    tasks.messages_retention()
    assert found(ada, "penguins") == []
    assert found(ada, "otters") == [chat.pk]
    assert indexed() == set(chat.messages.filter(content__icontains="otters").values_list("pk", flat=True))


def test_the_migration_indexes_the_messages_stored_before(ada) -> None:
    """Migration 0013 fills the index from the messages already in the table (here: rows never indexed)."""
    chat = ConversationFactory(user=ada)
    Message.objects.create(conversation=chat, role=Role.USER, content="Where is the nearest bakery?")
    Message.objects.create(conversation=chat, role=Role.ASSISTANT, content="")
    assert found(ada, "bakery") == []
    migration = importlib.import_module("botapp.migrations.0013_message_search")
    # The migration's only use of its schema editor: the connection, and a statement to run.
    schema_editor = SimpleNamespace(connection=connection, execute=lambda sql: connection.cursor().execute(sql))
    migration.index_messages(apps, schema_editor)
    assert found(ada, "bakeries") == [chat.pk]
    assert len(indexed()) == 1, "an empty message is not indexed"


# --- The admin's search boxes -------------------------------------------------------------------


def listed(response) -> list[str]:
    return [str(row) for row in response.context["cl"].result_list]


@pytest.fixture
def chats(db) -> dict[str, Conversation]:
    alice = UserFactory(username="alice")
    greeting = ConversationFactory(user=alice, title="Greeting")
    say(greeting, "Say hello to the team", "Hello, team!")
    leave = ConversationFactory(user=UserFactory(username="mei"), title="假期")
    say(leave, "公司的年假政策是什么？", "每位员工每年有十五天带薪年假。")
    rain = ConversationFactory(user=alice, title="Weather")
    say(rain, "Will it rain?", "Light rain after noon.")
    return {"greeting": greeting, "leave": leave, "rain": rain}


@pytest.mark.usefixtures("fast_passwords")
@pytest.mark.parametrize("few", [1000, 0], ids=["listed-by-id", "walked-in-order"])
def test_admin_conversation_search_finds_words_of_messages_in_both_languages(staff_client, chats, few, monkeypatch):
    """The conversations' search box finds message words through the index, and titles and people as before,
    whether it lists a rare word's few conversations by id or walks the list for a common one."""
    monkeypatch.setattr(search, "ADMIN_FEW", few)
    url = reverse("admin:botapp_conversation_changelist")
    assert listed(staff_client.get(url, {"q": "hello"})) == ["Greeting"]
    assert listed(staff_client.get(url, {"q": "年假"})) == ["假期"]
    assert listed(staff_client.get(url, {"q": "带薪年假"})) == ["假期"]
    assert listed(staff_client.get(url, {"q": "假期"})) == ["假期"], "titles are still searched"
    assert set(listed(staff_client.get(url, {"q": "alice"}))) == {"Greeting", "Weather"}
    assert listed(staff_client.get(url, {"q": "raining"})) == ["Weather"]
    assert listed(staff_client.get(url, {"q": "snow"})) == []
    with CaptureQueriesContext(connection) as queries:
        staff_client.get(url, {"q": "hello"})
    content_scans = [q["sql"] for q in queries if "content" in q["sql"] and "LIKE" in q["sql"].upper()]
    assert content_scans == [], "message text is searched through the index, never scanned"


@pytest.mark.usefixtures("fast_passwords")
def test_admin_message_search_finds_words_and_keeps_the_id_lookup(staff_client, chats) -> None:
    """The messages' search box finds words in both languages, `=ID` still lists a conversation's messages."""
    url = reverse("admin:botapp_message_changelist")
    shown = lambda response: {row.content for row in response.context["cl"].result_list}  # noqa: E731
    assert shown(staff_client.get(url, {"q": "hello"})) == {"Say hello to the team", "Hello, team!"}
    assert shown(staff_client.get(url, {"q": "年假政策"})) == {"公司的年假政策是什么？"}
    assert shown(staff_client.get(url, {"q": "带薪"})) == {"每位员工每年有十五天带薪年假。"}
    rain = chats["rain"].pk
    assert shown(staff_client.get(url, {"q": f"={rain}"})) == {"Will it rain?", "Light rain after noon."}
    assert shown(staff_client.get(url, {"q": f"={rain} noon"})) == {"Light rain after noon."}
    assert shown(staff_client.get(url, {"q": f"={chats['greeting'].pk} noon"})) == set()
    assert shown(staff_client.get(url, {"q": "!!!"})) == set()
    with CaptureQueriesContext(connection) as queries:
        staff_client.get(url, {"q": "hello"})
    assert not [q["sql"] for q in queries if "content" in q["sql"] and "LIKE" in q["sql"].upper()]


# --- The page -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("fast_passwords")
def test_the_search_page_lists_own_results_with_snippets(client, ada) -> None:
    """The search box's page lists the person's matching conversations with a marked snippet, escaped."""
    mine = ConversationFactory(user=ada, title="Trip")
    answer = say(mine, "Pack for Lisbon <script>", "Take an umbrella.")
    say(ConversationFactory(user=UserFactory(username="bob"), title="Bob's"), "umbrella", "Bob's umbrella.")
    client.force_login(ada)
    response = client.get(reverse("web:search"), {"q": "umbrella"})
    page = response.content.decode()
    assert response.status_code == 200
    assert f'href="/c/{mine.pk}/#message-{answer.pk}"' in page
    assert "<mark>umbrella</mark>" in page and "Bob" not in page
    assert 'value="umbrella"' in page and "Content-Security-Policy" in response
    assert "One conversation says" in page
    nothing = client.get(reverse("web:search"), {"q": "<i>volcano</i>"}).content.decode()
    assert "None of your conversations says that" in nothing and "<i>volcano" not in nothing
    assert client.get(reverse("web:search"), {"q": " "}).url == reverse("web:home")
