"""Money: the price in force, exact costs, the append-only ledger and per-person budgets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from botapp import hot_path
from botapp.models import (
    Bot,
    Conversation,
    Message,
    ModelImagePrice,
    ModelPrice,
    Profile,
    UsageRecord,
    UsageStatus,
)

logger = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
SECONDS_PER_MINUTE = Decimal(60)
COST_QUANTUM = Decimal("0.000000000001")
# Amounts under a dollar keep this many significant digits (then lose trailing zeros).
SIGNIFICANT_DIGITS = 4
_LOOK_UP = object()


def format_usd(value: Decimal | float | int | None) -> str:
    """Dollars as people read them, everywhere Jarvis shows money: $12.50, $0.35, $0.0125, $0.001, $0.000075.

    A dollar or more is shown in cents; less keeps four significant digits (and at least two decimals), so a
    small budget or a cheap answer never reads as "$0.00".
    """
    value = Decimal(str(value or 0))
    if value == 0:
        return "$0"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= 1:
        return f"{sign}${value:,.2f}"
    decimals = min(12, max(2, SIGNIFICANT_DIGITS - 1 - value.adjusted()))
    digits = f"{value.quantize(Decimal(1).scaleb(-decimals)):f}".rstrip("0")
    whole, _point, decimals = digits.partition(".")
    return f"{sign}${whole}.{decimals.ljust(2, '0')}"


def _family_names(model: str) -> list[str]:
    """ "gpt-4o-mini-2024-07-18" -> itself, "gpt-4o-mini-2024-07", ..., "gpt": the names it may be priced as."""
    parts = model.split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _prices(*, at: datetime, **names: str) -> QuerySet[ModelPrice]:
    return ModelPrice.objects.filter(valid_from__lte=at, model__in=list(names.values())).order_by("-valid_from")


def price_in_force(*, model: str, at: datetime | None = None) -> ModelPrice | None:
    """The price row for `model` at `at`; a dated snapshot ("gpt-4o-2024-08-06") uses its family's price."""
    at = at or timezone.now()
    names = _family_names(model)
    # Read for every answer: compiled once per number of names (botapp.hot_path).
    rows = hot_path.instances(
        f"price_in_force/{len(names)}", _prices, at=at, **{f"name{i}": name for i, name in enumerate(names)}
    )
    if not rows:
        return None
    # The most specific name wins; for that name, the latest row that has started.
    best = min(rows, key=lambda row: names.index(row.model))
    return next(row for row in rows if row.model == best.model)


def cost_of(
    *,
    price: ModelPrice,
    input_tokens: int = 0,
    cached_input_tokens: int = 0,
    output_tokens: int = 0,
    audio_seconds: Decimal = Decimal("0"),
    image_input_tokens: int = 0,
    image_output_tokens: int = 0,
    characters: int = 0,
    images: int = 0,
    image_price_each: Decimal | None = None,
) -> Decimal:
    """The exact cost in USD of a call at `price`.

    Cached and image input tokens are part of `input_tokens`, image output tokens part of `output_tokens`;
    pictures billed one by one cost `image_price_each` each (see `image_price_for`).
    """
    image_in = min(image_input_tokens, input_tokens)
    cached = min(cached_input_tokens, input_tokens - image_in)
    image_out = min(image_output_tokens, output_tokens)
    cached_rate = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
    image_in_rate = price.image_input_per_mtok if price.image_input_per_mtok is not None else price.input_per_mtok
    image_out_rate = price.image_output_per_mtok if price.image_output_per_mtok is not None else price.output_per_mtok
    tokens = (
        (input_tokens - image_in - cached) * price.input_per_mtok
        + cached * cached_rate
        + image_in * image_in_rate
        + (output_tokens - image_out) * price.output_per_mtok
        + image_out * image_out_rate
        + characters * (price.per_mchars or 0)
    ) / MILLION
    audio = audio_seconds * price.audio_per_minute / SECONDS_PER_MINUTE
    pictures = images * (image_price_each or Decimal("0"))
    return (tokens + audio + pictures).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def image_price_for(*, price: ModelPrice, size: str, quality: str) -> ModelImagePrice | None:
    """The per-picture price of `size` and `quality` under `price`: that quality, else any quality.

    A picture asked for without a quality is charged as "standard", the default of models billed this way.
    """
    qualities = [quality, ""] if quality else ["", "standard"]
    rows = {row.quality: row for row in price.image_prices.filter(size=size, quality__in=qualities)}
    return next((rows[q] for q in qualities if q in rows), None)


def usage_record_create(
    *,
    user: AbstractBaseUser | None,
    kind: str,
    model: str,
    channel: str,
    conversation: Conversation | None = None,
    message: Message | None = None,
    bot: Bot | None = None,
    input_tokens: int = 0,
    cached_input_tokens: int = 0,
    output_tokens: int = 0,
    audio_seconds: Decimal = Decimal("0"),
    image_input_tokens: int = 0,
    image_output_tokens: int = 0,
    characters: int = 0,
    images: int = 0,
    image_size: str = "",
    image_quality: str = "",
    status: str = UsageStatus.COMPLETE,
    estimated: bool = False,
    at: datetime | None = None,
    price: ModelPrice | object | None = _LOOK_UP,
    round: int = 1,
) -> UsageRecord:
    """Append one ledger row, priced at the price in force at `at` (now by default).

    A caller that looked the price up when the call began passes it: the call is charged at that price.
    Pictures billed one by one (`images`) are priced by `image_size` and `image_quality`.
    `round` numbers the model calls of one answer (each tool round calls the model again).
    """
    at = at or timezone.now()
    if price is _LOOK_UP:
        price = price_in_force(model=model, at=at)
    record = UsageRecord(
        user=user,
        kind=kind,
        model=model,
        channel=channel,
        conversation=conversation,
        message=message,
        bot=bot,
        round=round,
        input_tokens=input_tokens,
        cached_input_tokens=cached_input_tokens,
        output_tokens=output_tokens,
        audio_seconds=audio_seconds,
        image_input_tokens=image_input_tokens,
        image_output_tokens=image_output_tokens,
        characters=characters,
        images=images,
        image_size=image_size,
        image_quality=image_quality,
        status=status,
        estimated=estimated,
        created_at=at,
    )
    if price is None:
        logger.warning("No price for model %s: usage recorded at $0 and flagged as unpriced", model)
    usage_record_price(record, price)
    hot_path.insert(record)
    return record


def usage_record_price(record: UsageRecord, price: ModelPrice | None) -> UsageRecord:
    """Fill in a new ledger row's unit prices and cost from `price` (None: flagged as unpriced, $0).

    Pictures billed one by one need a per-picture price for their size and quality too; without one the
    row is flagged as unpriced like a model without a price, so it shows in the dashboard's list.
    """
    if price is None:
        record.priced = False
        return record
    each = None
    if record.images:
        picture = image_price_for(price=price, size=record.image_size, quality=record.image_quality)
        if picture is None:
            logger.warning(
                "No price for a %s %s picture of %s: recorded at $0 and flagged as unpriced",
                record.image_size,
                record.image_quality or "(default quality)",
                record.model,
            )
            record.priced = False
            return record
        each = picture.usd_per_image
    record.price = price
    record.input_price_per_mtok = price.input_per_mtok
    record.cached_input_price_per_mtok = price.cached_input_per_mtok
    record.output_price_per_mtok = price.output_per_mtok
    record.audio_price_per_minute = price.audio_per_minute
    record.image_input_price_per_mtok = price.image_input_per_mtok
    record.image_output_price_per_mtok = price.image_output_per_mtok
    record.characters_price_per_m = price.per_mchars
    record.image_price_each = each
    record.cost_usd = cost_of(
        price=price,
        input_tokens=record.input_tokens,
        cached_input_tokens=record.cached_input_tokens,
        output_tokens=record.output_tokens,
        audio_seconds=record.audio_seconds,
        image_input_tokens=record.image_input_tokens,
        image_output_tokens=record.image_output_tokens,
        characters=record.characters,
        images=record.images,
        image_price_each=each,
    )
    return record


# --- Budgets ------------------------------------------------------------------------------------


def profile_for(user: AbstractBaseUser) -> Profile:
    profile, _created = Profile.objects.get_or_create(user=user)
    return profile


def _default(value: str | None) -> Decimal | None:
    return Decimal(value) if value not in (None, "") else None


@dataclass(frozen=True)
class BudgetPeriod:
    """One budget window (today or this month) for one person."""

    name: str
    limit: Decimal | None
    spent: Decimal
    starts: datetime
    resets: datetime

    @property
    def remaining(self) -> Decimal | None:
        return None if self.limit is None else max(self.limit - self.spent, Decimal("0"))

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.spent >= self.limit


def _period_bounds(now: datetime) -> tuple[datetime, datetime, datetime, datetime]:
    local = timezone.localtime(now)
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    day_end = day_start + timedelta(days=1)
    month_start = day_start.replace(day=1)
    month_end = (month_start + timedelta(days=32)).replace(day=1)
    return day_start, day_end, month_start, month_end


def _limits(profile: Profile) -> tuple[Decimal | None, Decimal | None]:
    """The person's daily and monthly limits (None: no limit), their own or the site's defaults."""
    if profile.unlimited_budget:
        return None, None
    daily = profile.daily_budget_usd
    if daily is None:
        daily = _default(settings.DEFAULT_DAILY_BUDGET_USD)
    monthly = profile.monthly_budget_usd
    if monthly is None:
        monthly = _default(settings.DEFAULT_MONTHLY_BUDGET_USD)
    return daily, monthly


def budget_periods(
    *, user: AbstractBaseUser, now: datetime | None = None, profile: Profile | None = None
) -> list[BudgetPeriod]:
    """Today's and this month's limits, spend and reset times, in the server's time zone."""
    now = now or timezone.now()
    profile = profile or profile_for(user)
    day_start, day_end, month_start, month_end = _period_bounds(now)
    daily, monthly = _limits(profile)
    # Both sums in one query: the month contains the day.
    totals = UsageRecord.objects.filter(user=user, created_at__gte=min(day_start, month_start)).aggregate(
        day=Sum("cost_usd", filter=Q(created_at__gte=day_start)),
        month=Sum("cost_usd", filter=Q(created_at__gte=month_start)),
    )
    zero = Decimal("0")
    return [
        BudgetPeriod("daily", daily, totals["day"] or zero, day_start, day_end),
        BudgetPeriod("monthly", monthly, totals["month"] or zero, month_start, month_end),
    ]


def _humanize_wait(delta: timedelta) -> str:
    minutes = max(int(delta.total_seconds() // 60), 1)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return _("%(days)d d %(hours)d h") % {"days": days, "hours": hours}
    if hours:
        return _("%(hours)d h %(minutes)d min") % {"hours": hours, "minutes": minutes}
    return _("%(minutes)d min") % {"minutes": minutes}


def budget_refusal(
    *, user: AbstractBaseUser, now: datetime | None = None, profile: Profile | None = None
) -> str | None:
    """A sentence saying which budget is spent and when it resets, or None if the person may spend."""
    now = now or timezone.now()
    profile = profile or profile_for(user)
    if _limits(profile) == (None, None):
        return None  # nothing to exceed: the ledger is not summed
    for period in budget_periods(user=user, now=now, profile=profile):
        if period.exhausted:
            resets = timezone.localtime(period.resets)
            values = {
                "limit": format_usd(period.limit),
                "when": resets.strftime("%Y-%m-%d %H:%M %Z"),
                "wait": _humanize_wait(period.resets - now),
            }
            if period.name == "daily":
                return _("You have used your daily budget of %(limit)s. It resets at %(when)s (in %(wait)s).") % values
            return _("You have used your monthly budget of %(limit)s. It resets at %(when)s (in %(wait)s).") % values
    return None
