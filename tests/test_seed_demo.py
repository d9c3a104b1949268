"""`manage.py seed_demo`: realistic demo data in bulk, one ledger row per answer, with a progress bar."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Count, F, Sum

from botapp.demo import UNPRICED_MODEL
from botapp.models import (
    Bot,
    BotUser,
    Conversation,
    Message,
    MessageStatus,
    Role,
    TelegramIdentity,
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
    assert not UsageRecord.objects.filter(message__status=MessageStatus.FAILED).exists()
    assert UsageRecord.objects.values("message").annotate(n=Count("id")).filter(n__gt=1).count() == 0, (
        "one ledger row per answer"
    )
    assert Bot.objects.filter(name__startswith="Demo bot").count() == 2
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
