"""Reads for the Telegram adapter: usage for /stats, the menus, stored turns, and the work a restart must finish."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, Sum
from django.utils import timezone

from botapp.models import (
    Bot,
    Channel,
    Conversation,
    MediaFile,
    MediaKind,
    Message,
    MessageStatus,
    ModelPrice,
    Persona,
    ProcessedUpdate,
    Role,
    UsageRecord,
)
from botapp.selectors import models_offered, persona_model, personas_offered
from botapp.usage import BudgetPeriod, budget_periods, price_in_force

# An answer left pending longer ago than this is not worth sending any more after a restart.
RECOVERY_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class UsageTotal:
    tokens: int
    cost_usd: Decimal


@dataclass(frozen=True)
class UsageSummary:
    today: UsageTotal
    month: UsageTotal
    all_time: UsageTotal
    periods: list[BudgetPeriod]


def _total(*, user: AbstractBaseUser, since: datetime | None) -> UsageTotal:
    rows = UsageRecord.objects.filter(user=user)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    sums = rows.aggregate(input=Sum("input_tokens"), output=Sum("output_tokens"), cost=Sum("cost_usd"))
    return UsageTotal(tokens=(sums["input"] or 0) + (sums["output"] or 0), cost_usd=sums["cost"] or Decimal("0"))


def usage_summary(*, user: AbstractBaseUser) -> UsageSummary:
    """Tokens and cost today, this month and ever, with the budgets: what /stats shows."""
    periods = budget_periods(user=user)
    daily, monthly = periods
    return UsageSummary(
        today=_total(user=user, since=daily.starts),
        month=_total(user=user, since=monthly.starts),
        all_time=_total(user=user, since=None),
        periods=periods,
    )


def stored_question(*, conversation: Conversation, telegram_message_id: int) -> tuple[Message, Message | None] | None:
    """A Telegram message already stored in the conversation and its latest answer; None when never stored."""
    question = (
        conversation.messages.filter(role=Role.USER, telegram_message_id=telegram_message_id).order_by("-id").first()
    )
    if question is None:
        return None
    answer = conversation.messages.filter(role=Role.ASSISTANT, id__gt=question.id).order_by("-id").first()
    return question, answer


def answer_picture(*, answer: Message) -> MediaFile | None:
    """The picture an answer drew, to show it again after a restart."""
    return MediaFile.objects.filter(message=answer, kind=MediaKind.IMAGE).order_by("id").first()


def persona_offered(*, pk: int) -> Persona | None:
    """The persona a /mode button names, while it is still offered."""
    return personas_offered().filter(pk=pk).first()


def chat_models(*, conversation: Conversation) -> tuple[str, list[ModelPrice]]:
    """The persona's own model and the models people may choose (each with its price in force), for /model."""
    return persona_model(conversation.persona), models_offered()


def model_sees_images(*, conversation: Conversation) -> bool:
    """Whether the model answering the conversation accepts pictures."""
    price = price_in_force(model=conversation.effective_model)
    return bool(price and price.supports_images)


def pending_replies(*, bot: Bot, idle_for: timedelta | None = None) -> list[Message]:
    """Answers of this bot's chats left pending (the process died while writing them), oldest first.

    With `idle_for`: only those pending at least that long in a conversation nobody holds the lease of, which
    nothing is writing any more (a running process's own answers hold the lease while they are written).
    """
    now = timezone.now()
    rows = Message.objects.filter(
        conversation__bot=bot,
        conversation__channel=Channel.TELEGRAM,
        conversation__telegram_chat_id__isnull=False,
        role=Role.ASSISTANT,
        status=MessageStatus.PENDING,
        created_at__gte=now - RECOVERY_WINDOW,
    )
    if idle_for is not None:
        rows = rows.filter(
            Q(conversation__answering_until__isnull=True) | Q(conversation__answering_until__lt=now),
            created_at__lte=now - idle_for,
        )
    return list(rows.select_related("conversation").order_by("id"))


def unfinished_updates(*, bot: Bot) -> list[ProcessedUpdate]:
    """Updates written down but never finished, in the order Telegram sent them."""
    return list(
        ProcessedUpdate.objects.filter(
            bot=bot, state=ProcessedUpdate.State.RECEIVED, created_at__gte=timezone.now() - RECOVERY_WINDOW
        ).order_by("update_id")
    )
