"""The dashboard's cache of daily ledger totals: checked against the ledger, rebuilt when it no longer matches."""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta

from django.db import transaction
from django.utils import timezone

from botapp.models import UsageDailyTotal
from botapp.selectors import ledger_day_groups, usage_daily_totals_state

logger = logging.getLogger(__name__)


def usage_daily_totals_ensure(*, start: datetime, end: datetime) -> datetime:
    """Make the cached totals of the finished local days in [start, end) match the ledger; return where they end.

    `start` must be a local midnight. Today is never cached. The ledger is append-only, so when the
    cached call count of the days equals the number of ledger rows in them, every cached sum is right;
    otherwise (rows arrived late, the days were never cached, the time zone changed) they are rebuilt.
    """
    zone = timezone.get_current_timezone()
    local_start = timezone.localtime(start, zone)
    if local_start.time() != time.min:
        return start
    today = datetime.combine(timezone.localdate(), time.min, tzinfo=zone)
    until = max(start, min(end, today))
    if until <= start:
        return start
    cached, actual = usage_daily_totals_state(start=start, end=until)
    if cached == actual:
        return until
    first, last = timezone.localdate(start), timezone.localdate(until - timedelta(microseconds=1))
    groups = list(ledger_day_groups(start=start, end=until))
    with transaction.atomic():
        UsageDailyTotal.objects.filter(zone=str(zone), day__gte=first, day__lte=last).delete()
        UsageDailyTotal.objects.bulk_create(
            [
                UsageDailyTotal(
                    zone=str(zone),
                    day=group["day"],
                    model=group["model"],
                    bot_id=group["bot_id"],
                    channel=group["channel"],
                    priced=group["priced"],
                    calls=group["calls"],
                    input_tokens=group["input_tokens"] or 0,
                    cached_input_tokens=group["cached_input_tokens"] or 0,
                    output_tokens=group["output_tokens"] or 0,
                    cost_usd=group["cost_usd"] or 0,
                )
                for group in groups
            ],
            batch_size=1000,
        )
    logger.info("Rebuilt the daily usage totals from %s to %s (%s ledger rows)", first, last, actual)
    return until
