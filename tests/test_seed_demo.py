"""`manage.py seed_demo`: realistic demo data in bulk, one ledger row per answer (or a ledger of a given
length, with title and transcription rows), with a progress bar."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db.models import Count, F, Sum

from botapp.bootstrap import bots_configured
from botapp.demo import UNPRICED_MODEL, ledger_rows_range
from botapp.models import (
    Bot,
    BotUser,
    Channel,
    Conversation,
    Message,
    MessageStatus,
    Role,
    TelegramIdentity,
    UsageKind,
    UsageRecord,
)
from botapp.usage import cost_of, price_in_force


def seed(*args: str) -> str:
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_seed_demo_creates_consistent_data() -> None:
    """Messages, people, bots and one correctly priced ledger row per successful answer, with progress shown."""
    output = seed("--messages", "2000", "--batch-size", "500", "--seed", "7")
    assert output.count("\r[") == 4 and "2,000/2,000 messages" in output
    assert "Created" in output and "rows/s" in output
    assert Message.objects.count() == 2000
    assert Message.objects.filter(role=Role.USER).count() == 1000
    answers = Message.objects.filter(role=Role.ASSISTANT)
    answered = answers.exclude(status=MessageStatus.FAILED)
    assert UsageRecord.objects.count() == answered.count() > 900
    assert set(UsageRecord.objects.values_list("kind", flat=True)) == {UsageKind.CHAT}, "by default, chat rows only"
    assert not UsageRecord.objects.filter(message__status=MessageStatus.FAILED).exists()
    assert UsageRecord.objects.values("message").annotate(n=Count("id")).filter(n__gt=1).count() == 0, (
        "one ledger row per answer"
    )
    assert Bot.objects.filter(name__startswith="Demo bot").count() == 2
    # Their tokens are made up: a real `./jarvis up` afterwards must not start them.
    assert not Bot.objects.filter(name__startswith="Demo bot", enabled=True).exists()
    assert bots_configured() == []
    assert TelegramIdentity.objects.count() >= 10
    assert BotUser.objects.count() >= TelegramIdentity.objects.count()
    # Every person's messages belong to their own conversations.
    assert not Message.objects.filter(role=Role.USER).exclude(sender=F("conversation__user")).exists()
    for record in UsageRecord.objects.filter(priced=True)[:50]:
        price = price_in_force(model=record.model)
        assert record.cost_usd == cost_of(
            price=price,
            input_tokens=record.input_tokens,
            cached_input_tokens=record.cached_input_tokens,
            output_tokens=record.output_tokens,
        )
    assert set(UsageRecord.objects.filter(priced=False).values_list("model", flat=True)) <= {UNPRICED_MODEL}
    totals = UsageRecord.objects.aggregate(tokens=Sum("output_tokens"))
    assert totals["tokens"] == answered.aggregate(tokens=Sum("output_tokens"))["tokens"]
    assert Conversation.objects.filter(is_active=True).count() == 0


@pytest.mark.django_db
def test_seed_demo_runs_twice_without_clashing() -> None:
    """A second run adds more data instead of failing on unique names or Telegram ids."""
    seed("--messages", "200", "--seed", "1")
    seed("--messages", "200", "--seed", "1")
    assert Message.objects.count() == 400
    assert Bot.objects.filter(name__startswith="Demo bot").count() == 4


@pytest.mark.django_db
def test_seed_demo_refuses_nonsense() -> None:
    """Bad numbers get a CommandError sentence, and nothing is created."""
    with pytest.raises(CommandError, match="at least 2"):
        seed("--messages", "1")
    with pytest.raises(CommandError, match="--batch-size"):
        seed("--messages", "100", "--batch-size", "5")
    assert not Message.objects.exists()


def assert_priced_from_its_price_row(record: UsageRecord) -> None:
    """A priced row's unit prices are its price row's, and its cost follows from them exactly."""
    price = record.price
    assert price is not None and record.model.startswith(price.model), record
    assert (record.input_price_per_mtok, record.cached_input_price_per_mtok) == (
        price.input_per_mtok,
        price.cached_input_per_mtok,
    )
    assert (record.output_price_per_mtok, record.audio_price_per_minute) == (
        price.output_per_mtok,
        price.audio_per_minute,
    )
    assert isinstance(record.cost_usd, Decimal)
    assert record.cost_usd == cost_of(
        price=price,
        input_tokens=record.input_tokens,
        cached_input_tokens=record.cached_input_tokens,
        output_tokens=record.output_tokens,
        audio_seconds=record.audio_seconds,
    )


@pytest.mark.django_db
def test_seed_demo_ledger_rows_makes_a_ledger_that_long() -> None:
    """--ledger-rows 2000 on 2,000 messages: chat, title and transcription rows, 2,000 within 1 %, all priced."""
    output = seed("--messages", "2000", "--ledger-rows", "2000", "--batch-size", "500", "--seed", "7")
    assert output.count("\r[") == 4 and "2,000/2,000 messages" in output
    total = UsageRecord.objects.count()
    assert abs(total - 2000) <= 20
    assert f"{total:,} ledger rows" in output
    kinds = dict(UsageRecord.objects.values_list("kind").annotate(n=Count("id")))
    assert set(kinds) == {UsageKind.CHAT, UsageKind.TITLE, UsageKind.TRANSCRIPTION}
    answered = Message.objects.filter(role=Role.ASSISTANT).exclude(status=MessageStatus.FAILED)
    assert kinds[UsageKind.CHAT] == answered.count()
    # A title row per conversation with a complete answer, like the title job's: no message.
    assert kinds[UsageKind.TITLE] == Conversation.objects.filter(messages__in=answered).distinct().count()
    titles = UsageRecord.objects.filter(kind=UsageKind.TITLE)
    assert not titles.exclude(message=None).exists()
    assert titles.values("conversation").distinct().count() == kinds[UsageKind.TITLE]
    answer_models = dict(Message.objects.filter(role=Role.ASSISTANT).values_list("conversation", "model"))
    for conversation_id, model in titles.values_list("conversation", "model"):
        assert model == answer_models[conversation_id], "titled with the conversation's model"
    # Transcriptions: on questions of their own conversation, audio only, at the transcription model.
    voiced = UsageRecord.objects.filter(kind=UsageKind.TRANSCRIPTION)
    assert voiced.count() == kinds[UsageKind.TRANSCRIPTION] > 800
    assert not voiced.exclude(message__role=Role.USER).exists()
    assert not voiced.exclude(conversation=F("message__conversation")).exists()
    assert set(voiced.values_list("model", flat=True)) == {settings.OPENAI_TRANSCRIPTION_MODEL}
    assert not voiced.filter(audio_seconds__lte=0).exists()
    assert voiced.aggregate(tokens=Sum("input_tokens") + Sum("output_tokens"))["tokens"] == 0
    # One charge of each kind per message.
    assert (
        not UsageRecord.objects.exclude(message=None).values("message", "kind").annotate(n=Count("id")).filter(n__gt=1)
    )
    for record in UsageRecord.objects.select_related("price"):
        if record.priced:
            assert_priced_from_its_price_row(record)
        else:
            assert (record.model, record.price, record.cost_usd) == (UNPRICED_MODEL, None, Decimal("0"))
    assert voiced.aggregate(cost=Sum("cost_usd"))["cost"] > 0


@pytest.mark.django_db
def test_seed_demo_ledger_rows_voices_telegram_questions_first() -> None:
    """When few transcriptions are needed they are all Telegram voice messages: the web page takes no audio."""
    seed("--messages", "2000", "--ledger-rows", "1400", "--seed", "3")
    assert abs(UsageRecord.objects.count() - 1400) <= 14
    voiced = UsageRecord.objects.filter(kind=UsageKind.TRANSCRIPTION)
    assert voiced.count() > 200
    assert set(voiced.values_list("channel", flat=True)) == {Channel.TELEGRAM}
    assert not voiced.filter(bot=None).exists()


@pytest.mark.django_db
def test_seed_demo_ledger_rows_out_of_reach() -> None:
    """A ledger length the messages cannot carry gets a sentence with the range, and nothing is created."""
    fewest, most = ledger_rows_range(2000)
    assert (fewest, most) == (1090, 2090)
    with pytest.raises(CommandError, match="at most one transcription per question") as error:
        seed("--messages", "2000", "--ledger-rows", str(most + 100))
    assert "1,090 to 2,090 ledger rows" in str(error.value)
    with pytest.raises(CommandError, match="1,090 to 2,090"):
        seed("--messages", "2000", "--ledger-rows", "1000")
    with pytest.raises(CommandError, match="not 0"):
        seed("--messages", "2000", "--ledger-rows", "0")
    assert not Message.objects.exists() and not Bot.objects.exists() and not UsageRecord.objects.exists()
