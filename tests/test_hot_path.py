"""What one chat message costs the database: the reads and writes every message makes, bounded and correct.

Each message takes four trips to the database before the model is called (the update, the person, the
question, the lease with the context) and two after (the answer with its ledger row, the Telegram ids).
These tests hold the trips to their query counts, so that a change that adds a query to every message
shows up here, and check that what the merged trips do is still right.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.hashers import make_password
from django.db.models import signals
from django.utils import timezone

from botapp import hot_path, llm
from botapp.conversations import ReplyRefused, _begin, _chat_conversation_checked, _store_answer
from botapp.models import (
    BotUser,
    Conversation,
    MessageStatus,
    ModelPrice,
    ProcessedUpdate,
    Profile,
    TelegramIdentity,
    UsageRecord,
)
from botapp.telegram import services
from botapp.usage import price_in_force
from tests.factories import BotFactory

pytestmark = pytest.mark.django_db

PERSON = {"telegram_id": 4242, "username": "ada", "first_name": "Ada", "last_name": "L", "language_code": "en"}


@pytest.fixture
def bot():
    return BotFactory()


def contact(bot, **changes):
    return services.contact_sync(bot_id=bot.pk, **{**PERSON, **changes})


def accept(bot, person, message_id: int, text: str = "Hello"):
    return services.chat_message_accept(
        bot=person.bot, telegram_chat_id=PERSON["telegram_id"], user=person.user, telegram_message_id=message_id,
        text=text,
    )  # fmt: skip


def test_a_known_person_costs_two_reads(bot, django_assert_num_queries):
    """The bot, then identity, user, profile and membership in one read; nothing is written when nothing changed."""
    first = contact(bot)
    assert first.allowed and BotUser.objects.filter(bot=bot, identity=first.identity).exists()
    with django_assert_num_queries(2):
        again = contact(bot)
    assert again.user.pk == first.user.pk and again.allowed
    with django_assert_num_queries(0):
        assert again.user.jarvis_profile.language_code == "en"


def test_a_returning_person_is_unblocked_and_renamed(bot):
    """Writing again clears "blocked the bot" for broadcasts, and a new Telegram name is stored."""
    first = contact(bot)
    BotUser.objects.filter(bot=bot).update(blocked_bot_at=timezone.now())
    again = contact(bot, first_name="Augusta")
    assert BotUser.objects.get(bot=bot, identity=first.identity).blocked_bot_at is None
    assert again.identity.first_name == "Augusta"


def test_a_blocked_person_is_not_allowed(bot):
    person = contact(bot)
    Profile.objects.filter(user=person.user).update(is_blocked=True)
    assert not contact(bot).allowed


def test_a_message_in_a_known_chat_is_stored_in_one_trip(bot, django_assert_max_num_queries):
    """Conversation, redelivery check, then question and pending answer in one INSERT: five queries at most."""
    person = contact(bot)
    accept(bot, person, 1)
    with django_assert_max_num_queries(7):  # 5, plus the savepoint pair of the test's own transaction
        accepted = accept(bot, person, 2, "Second")
    turn = accepted.turn
    assert turn.reply.pk > turn.user_message.pk
    assert (turn.user_message.content, turn.reply.status) == ("Second", MessageStatus.PENDING)
    again = accept(bot, person, 2, "Second")
    assert again.turn is None and again.stored[0].pk == turn.user_message.pk


def test_the_lease_is_taken_with_the_context_and_let_go_with_the_answer(bot, django_assert_max_num_queries):
    """`_begin` takes the lease and builds the context; storing the answer lets the lease go in the same write."""
    person = contact(bot)
    turn = accept(bot, person, 1, "Hello there").turn
    with django_assert_max_num_queries(6):
        context = _begin(turn, "token-1")
    assert context.messages[-1] == {"role": "user", "content": "Hello there"}
    assert _begin(turn, "token-2") is None, "a second answerer waits while the lease is held"
    usage = llm.Usage(input_tokens=context.input_tokens, output_tokens=3, model=context.model)
    record = _store_answer(
        turn, context=context, text="Hi!", usage=usage, status=MessageStatus.COMPLETE, latency_ms=5,
        lease_token="token-1",
    )  # fmt: skip
    conversation = Conversation.objects.get(pk=turn.conversation.pk)
    assert conversation.answering_until is None and conversation.answering_token == ""
    assert record.cost_usd > Decimal("0") and UsageRecord.objects.filter(message=turn.reply).count() == 1


def test_storing_with_someone_elses_token_leaves_their_lease(bot):
    """An answer whose lease ran out and was taken by another process does not free the new holder's lease."""
    person = contact(bot)
    turn = accept(bot, person, 1).turn
    context = _begin(turn, "mine")
    Conversation.objects.filter(pk=turn.conversation.pk).update(answering_token="theirs")
    usage = llm.Usage(input_tokens=10, output_tokens=2, model=context.model)
    _store_answer(
        turn, context=context, text="Hi", usage=usage, status=MessageStatus.COMPLETE, latency_ms=1, lease_token="mine"
    )
    conversation = Conversation.objects.get(pk=turn.conversation.pk)
    assert conversation.answering_token == "theirs" and conversation.answering_until is not None


def test_a_refused_turn_lets_the_lease_go(bot):
    """A spent budget refuses the turn, stores it as failed and leaves the conversation free for the next one."""
    person = contact(bot)
    Profile.objects.filter(user=person.user).update(daily_budget_usd=Decimal("0"))
    person = contact(bot)
    turn = accept(bot, person, 1).turn
    with pytest.raises(ReplyRefused):
        _begin(turn, "token-1")
    conversation = Conversation.objects.get(pk=turn.conversation.pk)
    assert conversation.answering_until is None
    turn.reply.refresh_from_db()
    assert turn.reply.status == MessageStatus.FAILED


def test_updates_are_written_down_once_in_one_statement(bot, django_assert_num_queries):
    """A batch is one INSERT; what was written before comes back as a redelivery, the rest as new."""
    with django_assert_num_queries(1):
        assert services.updates_record(bot_id=bot.pk, updates=[(1, {"update_id": 1}), (2, {"update_id": 2})]) == [1, 2]
    assert services.updates_record(bot_id=bot.pk, updates=[(2, {"update_id": 2}), (3, {"update_id": 3})]) == [3]
    assert not services.update_record(bot_id=bot.pk, update_id=3, payload={"update_id": 3})
    assert ProcessedUpdate.objects.get(bot=bot, update_id=1).payload == {"update_id": 1}


def test_a_question_stored_takes_a_free_lease_and_leaves_a_held_one(bot):
    """Storing with a lease token takes the lease when nobody holds it; a holder's lease stays theirs."""
    person = contact(bot)
    first = services.chat_message_accept(
        bot=person.bot, telegram_chat_id=PERSON["telegram_id"], user=person.user, telegram_message_id=1, text="Hi",
        lease_token="mine",
    ).turn  # fmt: skip
    assert first.leased
    conversation = Conversation.objects.get(pk=first.conversation.pk)
    assert conversation.answering_token == "mine" and conversation.answering_until is not None
    before = conversation.updated_at
    second = services.chat_message_accept(
        bot=person.bot, telegram_chat_id=PERSON["telegram_id"], user=person.user, telegram_message_id=2, text="Hi",
        lease_token="yours",
    ).turn  # fmt: skip
    conversation.refresh_from_db()
    assert not second.leased and conversation.answering_token == "mine" and conversation.updated_at >= before


def test_a_read_compiled_once_gives_what_the_orm_gives(bot):
    """The chat's conversation read through the compiled query is the ORM's: fields, persona and annotations."""
    person = contact(bot)
    accept(bot, person, 1)
    conversation = Conversation.objects.get(bot=bot, telegram_chat_id=PERSON["telegram_id"])
    for _ in range(2):  # compiled the first time, reused the second
        [read] = hot_path.instances(
            "chat_conversation_checked", _chat_conversation_checked, bot_id=bot.pk,
            telegram_chat_id=PERSON["telegram_id"],
        )  # fmt: skip
        assert (read.pk, read.updated_at, read.persona_id) == (
            conversation.pk,
            conversation.updated_at,
            conversation.persona_id,
        )
        assert read.persona == conversation.persona and read.has_tools in (True, False) and read.has_documents is False
    assert (
        hot_path.instances("chat_conversation_checked", _chat_conversation_checked, bot_id=bot.pk, telegram_chat_id=1)
        == []
    )


def test_a_spent_budget_refuses_the_turn_in_the_trip_that_stores_it(bot):
    """Taken in one trip, a turn over budget is stored as failed with the sentence, and the lease is free."""
    person = contact(bot)
    Profile.objects.filter(user=person.user).update(daily_budget_usd=Decimal("0"))
    taken = services.chat_message_take(
        bot_id=bot.pk, telegram_id=PERSON["telegram_id"], username="ada", first_name="Ada", last_name="L",
        language_code="en", telegram_chat_id=PERSON["telegram_id"], telegram_message_id=1, text="Hello",
        first_delivery=True,
    )  # fmt: skip
    assert taken.begun is not None and taken.begun.refusal is not None and taken.begun.context is None
    turn = taken.accepted.turn
    turn.reply.refresh_from_db()
    assert turn.reply.status == MessageStatus.FAILED
    assert Conversation.objects.get(pk=turn.conversation.pk).answering_until is None


def test_new_rows_are_stored_as_save_would_store_them(bot):
    """`hot_path.insert` fills defaults and `auto_now_add`, sets the keys in order, and the stored rows read back
    equal to rows the ORM saved the same way; a new person's password is unusable, as Django makes it."""
    person = contact(bot)
    assert not person.user.has_usable_password() and person.user.password.startswith("!")
    assert len(person.user.password) == len(make_password(None))
    by_orm = Conversation(user=person.user, channel="telegram", bot=bot, telegram_chat_id=1, title="A")
    by_orm.save(force_insert=True)
    fast = [Conversation(user=person.user, channel="telegram", bot=bot, telegram_chat_id=n, title="A") for n in (2, 3)]
    hot_path.insert(*fast)
    assert [c.pk for c in fast] == sorted(c.pk for c in fast) and fast[0].pk > by_orm.pk
    assert all(not c._state.adding for c in fast) and fast[0].created_at is not None

    def stored(pk):
        row = Conversation.objects.values().get(pk=pk)
        return {k: v for k, v in row.items() if k not in {"id", "telegram_chat_id", "created_at", "updated_at"}}

    assert stored(fast[0].pk) == stored(fast[1].pk) == stored(by_orm.pk)
    assert Conversation.objects.get(pk=fast[1].pk).created_at == fast[1].created_at


def test_rows_go_through_the_orm_when_a_receiver_listens(bot):
    """A model with a save receiver is stored through `save()`, so the receiver still runs."""
    person = contact(bot)
    heard = []

    def listener(sender, instance, created, **kwargs):
        heard.append((instance.pk, created))

    signals.post_save.connect(listener, sender=Conversation, dispatch_uid="test-hot-path-listener")
    try:
        conversation = Conversation(user=person.user, channel="telegram", bot=bot, telegram_chat_id=9)
        hot_path.insert(conversation)
        conversation.title = "Named"
        hot_path.update(conversation, ["title"])
    finally:
        signals.post_save.disconnect(sender=Conversation, dispatch_uid="test-hot-path-listener")
    assert heard == [(conversation.pk, True), (conversation.pk, False)]
    assert Conversation.objects.get(pk=conversation.pk).title == "Named"


def test_an_update_writes_only_the_named_fields_and_auto_now(bot):
    """`hot_path.update` writes the named fields (with `auto_now` refreshed) and leaves the rest as stored."""
    identity = contact(bot).identity
    before = identity.updated_at
    identity.username, identity.first_name = "ada2", "changed in memory only"
    hot_path.update(identity, ["username", "updated_at"])
    stored = TelegramIdentity.objects.get(pk=identity.pk)
    assert (stored.username, stored.first_name) == ("ada2", "Ada")
    assert stored.updated_at == identity.updated_at and stored.updated_at > before


def test_the_compiled_price_read_answers_as_the_orm_at_every_moment(db):
    """The price read, compiled once per shape, puts each call's model names and moment in: at every moment it
    finds the row the ORM finds, for a family name and a dated snapshot, before, between and after price changes."""
    now = timezone.now()
    for days, price in ((-30, "1"), (-10, "2"), (5, "3")):
        ModelPrice.objects.create(
            model="acme-chat", input_per_mtok=Decimal(price), output_per_mtok=1, valid_from=now + timedelta(days=days)
        )
    ModelPrice.objects.create(model="acme-chat-2026-01", input_per_mtok=9, output_per_mtok=1, valid_from=now)
    for model in ("acme-chat", "acme-chat-2026-01-15", "acme-chat-2026-01"):
        for days in (-40, -20, -1, 1, 10):
            at = now + timedelta(days=days)
            names = [model.rsplit("-", n)[0] for n in range(model.count("-") + 1)]
            rows = ModelPrice.objects.filter(valid_from__lte=at, model__in=names).order_by("-valid_from")
            expected = min(rows, key=lambda row: names.index(row.model), default=None)
            expected = next((row for row in rows if row.model == expected.model), None) if expected else None
            assert price_in_force(model=model, at=at) == expected, (model, days)
    assert price_in_force(model="acme-chat", at=now + timedelta(days=10)).input_per_mtok == 3
    assert price_in_force(model="acme-chat-2026-01-15", at=now + timedelta(days=1)).input_per_mtok == 9
    assert price_in_force(model="acme-chat", at=now - timedelta(days=40)) is None
