"""The dashboard's caches of daily ledger totals (per day and group, per day and person): checked against the
ledger, rebuilt when they no longer match."""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta

from django.db import transaction
from django.utils import timezone

from botapp.models import UsageDailyPersonTotal, UsageDailyTotal
from botapp.selectors import (
    DAY_GROUP,
    ledger_day_groups,
    usage_daily_totals_stale_days,
    usage_daily_totals_state,
)

logger = logging.getLogger(__name__)

SUMS = ("calls", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd")


def usage_daily_totals_ensure(*, start: datetime, end: datetime) -> datetime:
    """Make the cached totals of the finished local days in [start, end) match the ledger; return where they end.

    `start` must be a local midnight. Today is never cached. The ledger is append-only, so when the
    cached call count of the days equals the number of ledger rows in them, every cached sum is right;
    otherwise (a day just finished, rows arrived late, the days were never cached, the time zone changed)
    the days from the first to the last whose counts differ are rebuilt: usually yesterday alone.
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
    if cached != actual:
        _rebuild(*_stale_span(start=start, end=until, cached=cached))
    return until


def _stale_span(*, start: datetime, end: datetime, cached: int) -> tuple[datetime, datetime]:
    """The part of [start, end) to rebuild: from the first to the last local day whose count is off.

    Counting the ledger per day costs a scan of the range, which only pays when some days are cached.
    """
    if not cached:
        return start, end
    stale = usage_daily_totals_stale_days(start=start, end=end)
    if not stale:
        return start, end
    zone = timezone.get_current_timezone()
    return (
        datetime.combine(stale[0], time.min, tzinfo=zone),
        datetime.combine(stale[-1] + timedelta(days=1), time.min, tzinfo=zone),
    )


def _rebuild(start: datetime, end: datetime) -> None:
    """Replace the cached day and person totals of the local days in [start, end) with sums of the ledger."""
    zone = str(timezone.get_current_timezone())
    first, last = timezone.localdate(start), timezone.localdate(end - timedelta(microseconds=1))
    # One read of the ledger for both caches, so they always agree with each other and the check covers both.
    groups = list(ledger_day_groups(start=start, end=end, per_person=True))
    with transaction.atomic():
        for model in (UsageDailyTotal, UsageDailyPersonTotal):
            model.objects.filter(zone=zone, day__gte=first, day__lte=last).delete()
        UsageDailyTotal.objects.bulk_create(
            [
                UsageDailyTotal(zone=zone, **dict(zip(DAY_GROUP, key, strict=True)), **sums)
                for key, sums in _added_up(groups, DAY_GROUP).items()
            ],
            batch_size=1000,
        )
        UsageDailyPersonTotal.objects.bulk_create(
            [
                UsageDailyPersonTotal(zone=zone, day=day, user_id=user_id, **sums)
                for (day, user_id), sums in _added_up(groups, ("day", "user_id")).items()
            ],
            batch_size=1000,
        )
    logger.info(
        "Rebuilt the daily usage totals from %s to %s (%s ledger rows)",
        first,
        last,
        sum(group["calls"] for group in groups),
    )


def _added_up(groups: list[dict], keys: tuple[str, ...]) -> dict[tuple, dict]:
    """The sums of `groups` added up per the values of `keys`: coarser groups without reading the ledger again."""
    totals: dict[tuple, dict] = {}
    for group in groups:
        into = totals.setdefault(tuple(group[key] for key in keys), dict.fromkeys(SUMS, 0))
        for name in SUMS:
            into[name] += group[name] or 0
    return totals
