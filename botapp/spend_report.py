"""The daily spend report: one day's spend by kind, model and person, sent to the admins on Telegram."""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone

from botapp.models import Bot, UsageRecord
from botapp.telegram.client import sentences_send
from botapp.usage import format_usd

logger = logging.getLogger(__name__)


def default_bot() -> Bot | None:
    """The bot that speaks for Jarvis itself: the enabled bot named "default", else the oldest enabled one."""
    bots = Bot.objects.filter(enabled=True)
    return bots.filter(name="default").first() or bots.order_by("pk").first()


def spend_report_text(*, day: date) -> str:
    """The report of one day's spend, in the server's time zone: totals, by kind, by model, top people."""
    zone = timezone.get_current_timezone()
    start = timezone.make_aware(datetime.combine(day, time.min), zone)
    end = start + timedelta(days=1)
    rows = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
    totals = rows.aggregate(cost=Sum("cost_usd"), calls=Count("id"))
    month_start = timezone.make_aware(datetime.combine(day.replace(day=1), time.min), zone)
    month = UsageRecord.objects.filter(created_at__gte=month_start, created_at__lt=end).aggregate(cost=Sum("cost_usd"))[
        "cost"
    ]
    lines = [
        f"Jarvis spend report for {day:%Y-%m-%d} ({zone})",
        f"Total: {format_usd(totals['cost'])} in {totals['calls']} model call(s). "
        f"This month so far: {format_usd(month)}.",
    ]
    if totals["calls"]:
        by_kind = rows.values("kind").annotate(cost=Sum("cost_usd"), calls=Count("id")).order_by("-cost", "kind")
        lines.append(
            "By kind: " + ", ".join(f"{r['kind']} {format_usd(r['cost'])} ({r['calls']})" for r in by_kind) + "."
        )
        by_model = rows.values("model").annotate(cost=Sum("cost_usd"), calls=Count("id")).order_by("-cost", "model")
        lines.append(
            "By model: " + ", ".join(f"{r['model']} {format_usd(r['cost'])} ({r['calls']})" for r in by_model) + "."
        )
        people = (
            rows.filter(user__isnull=False)
            .values("user__username")
            .annotate(cost=Sum("cost_usd"))
            .order_by("-cost", "user__username")[:5]
        )
        lines.append("Top people: " + ", ".join(f"{r['user__username']} {format_usd(r['cost'])}" for r in people) + ".")
        unpriced = rows.filter(priced=False).values_list("model", flat=True).distinct()
        if unpriced:
            lines.append(
                "No price known for: " + ", ".join(sorted(unpriced)) + ". Add them under Model prices in the admin."
            )
    return "\n".join(lines)


def _admin_chat_ids() -> list[int]:
    ids = []
    for raw in settings.ADMIN_TELEGRAM_IDS:
        try:
            ids.append(int(str(raw).strip()))
        except ValueError:
            logger.warning("ADMIN_TELEGRAM_IDS holds %r, which is not a Telegram user id; it is skipped", raw)
    return ids


def spend_report_deliver(*, day: date | None = None) -> str:
    """Send `day`'s spend report (yesterday's by default) to ADMIN_TELEGRAM_IDS through the default bot."""
    report_day = day or timezone.localdate() - timedelta(days=1)
    chat_ids = _admin_chat_ids()
    if not chat_ids:
        return "No report sent: ADMIN_TELEGRAM_IDS is empty. Put the admins' Telegram user ids there."
    bot = default_bot()
    if bot is None:
        return "No report sent: there is no enabled bot. Set TELEGRAM_BOT_TOKEN or add a bot in the admin."
    text = spend_report_text(day=report_day)
    sent, failed = async_to_sync(sentences_send)(token=bot.token, chat_ids=chat_ids, text=text)
    for failure in failed:
        logger.warning("Spend report not delivered to %s", failure)
    return f"Spend report for {report_day} sent to {len(sent)} of {len(chat_ids)} admin(s) via bot {bot.name}."
