"""Reads: what the web page, the Telegram /stats command and the admin show, in one place."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import (
    Case,
    Count,
    DateField,
    DecimalField,
    F,
    Func,
    IntegerField,
    Model,
    OuterRef,
    Prefetch,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Substr, TruncDate
from django.utils import timezone

from botapp import hot_path
from botapp.models import (
    Bot,
    BotUser,
    Conversation,
    Message,
    MessageStatus,
    ModelPrice,
    Persona,
    Role,
    ToolCall,
    UsageDailyPersonTotal,
    UsageDailyTotal,
    UsageKind,
    UsageRecord,
)

# === Web page: conversations and the signed-in person's usage =====================================


def conversation_list(*, user: AbstractBaseUser) -> QuerySet[Conversation]:
    """The person's conversations, latest first, each with the start of its first question as a fallback title."""
    first_question = (
        Message.objects.filter(conversation=OuterRef("pk"), role=Role.USER)
        .exclude(status=MessageStatus.SUPERSEDED)
        .order_by("id")
    )
    return (
        Conversation.objects.filter(user=user)
        .select_related("persona", "bot")
        # Room for Markdown around the words the list shows (display_title cuts them to length).
        .annotate(first_question=Substr(Subquery(first_question.values("content")[:1]), 1, 300))
        .order_by("-updated_at", "-id")
    )


def conversation_first_question(*, conversation: Conversation) -> str:
    """The text of the conversation's first question still on record ("" when none)."""
    first = (
        conversation.messages.filter(role=Role.USER)
        .exclude(status=MessageStatus.SUPERSEDED)
        .order_by("id")
        .values_list("content", flat=True)
        .first()
    )
    return first or ""


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    """The messages a person sees in a conversation, oldest first, answers with what they cost (every model call
    of the answer) and their tool calls."""
    cost = (
        UsageRecord.objects.filter(message=OuterRef("pk"), kind=UsageKind.CHAT)
        .order_by()
        .values("message")
        .annotate(total=Sum("cost_usd"))
        .values("total")
    )
    return (
        conversation.messages.filter(role__in=(Role.USER, Role.ASSISTANT))
        .exclude(status=MessageStatus.SUPERSEDED)
        .annotate(cost_usd=Subquery(cost, output_field=MONEY))
        .prefetch_related(Prefetch("tool_calls", queryset=ToolCall.objects.order_by("round", "position")))
        .order_by("id")
    )


def personas_offered() -> QuerySet[Persona]:
    """The personas people may choose, the site's default first."""
    return Persona.objects.filter(is_active=True).order_by("-is_default", "name")


def _persona_first_active() -> QuerySet[Persona]:
    return Persona.objects.filter(is_active=True).order_by("-is_default", "created_at", "pk")[:1]


def persona_default(*, bot: Bot | None = None) -> Persona | None:
    """Whom a new conversation talks to: the bot's default persona, else the site's, else the first one made."""
    if bot is not None and bot.default_persona_id:
        return bot.default_persona
    # Read for every new chat: compiled once (botapp.hot_path).
    first_active = hot_path.instances("persona_default", _persona_first_active)
    return next(iter(first_active), None) or Persona.objects.filter(is_default=True).first()


def persona_model(persona: Persona | None) -> str:
    """The model a persona answers with when a conversation has chosen none."""
    return (persona.model if persona else "") or settings.OPENAI_MODEL


def models_offered(*, at: datetime | None = None) -> list[ModelPrice]:
    """The chat models people may choose, each with its price in force, cheapest output first.

    A model is offered when its price row in force is marked so; a model without a price is never offered.
    """
    at = at or timezone.now()
    in_force: dict[str, ModelPrice] = {}
    for price in ModelPrice.objects.filter(valid_from__lte=at).order_by("model", "-valid_from"):
        in_force.setdefault(price.model, price)
    offered = [price for price in in_force.values() if price.offered]
    return sorted(offered, key=lambda price: (price.output_per_mtok, price.input_per_mtok, price.model))


@dataclass(frozen=True)
class DayUsage:
    day: date
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def usage_by_day(*, user: AbstractBaseUser, days: int, today: date | None = None) -> list[DayUsage]:
    """Tokens and cost for each of the last `days` days (today included, days without use as zeros).

    Days are calendar days in the server's time zone, the same days the daily budget counts.
    """
    today = today or timezone.localdate()
    first = today - timedelta(days=days - 1)
    start = timezone.make_aware(datetime.combine(first, time.min))
    rows = (
        UsageRecord.objects.filter(user=user, created_at__gte=start)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), cost_usd=Sum("cost_usd"))
        .order_by("day")
    )
    by_day = {row["day"]: row for row in rows}
    result = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = by_day.get(day)
        result.append(
            DayUsage(
                day=day,
                input_tokens=row["input_tokens"] if row else 0,
                output_tokens=row["output_tokens"] if row else 0,
                cost_usd=row["cost_usd"] if row else Decimal("0"),
            )
        )
    return result


def usage_by_model(*, user: AbstractBaseUser, since: date) -> list[dict]:
    """Calls, tokens, audio and cost per model and kind of call since `since`, most expensive first."""
    start = timezone.make_aware(datetime.combine(since, time.min))
    return list(
        UsageRecord.objects.filter(user=user, created_at__gte=start)
        .values("model", "kind")
        .annotate(
            calls=Count("id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            audio_seconds=Sum("audio_seconds"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("-cost_usd", "model", "kind")
    )


# === Admin: the usage dashboard, the ledger export, totals, transcripts, broadcasts ===============
# Every function here runs a bounded number of queries whatever the size of the tables.

ZERO = Decimal("0")
MONEY = DecimalField(max_digits=24, decimal_places=12)


@dataclass
class UsageTotals:
    """Sums of ledger rows: calls, tokens and cost."""

    calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = ZERO

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, row: dict) -> None:
        self.calls += row["calls"]
        self.input_tokens += row["input_tokens"] or 0
        self.cached_input_tokens += row["cached_input_tokens"] or 0
        self.output_tokens += row["output_tokens"] or 0
        self.cost_usd += row["cost_usd"] or ZERO


@dataclass
class UsageBreakdown:
    """The ledger between two moments, summed per day, model, bot and channel; unpriced models listed."""

    start: datetime
    end: datetime
    total: UsageTotals = field(default_factory=UsageTotals)
    per_day: dict[date, UsageTotals] = field(default_factory=dict)
    per_model: dict[str, UsageTotals] = field(default_factory=dict)
    per_bot_channel: dict[tuple[str, str], UsageTotals] = field(default_factory=dict)
    unpriced_models: dict[str, int] = field(default_factory=dict)


def _ledger_between(*, start: datetime, end: datetime) -> QuerySet[UsageRecord]:
    return UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)


def _ledger_sums() -> dict:
    return {
        "calls": Count("id"),
        "input_tokens": Sum("input_tokens"),
        "cached_input_tokens": Sum("cached_input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cost_usd": Sum("cost_usd"),
    }


def _offset_segments(start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """[(segment end, UTC offset in minutes)] covering [start, end): the zone's offset is constant in each."""
    zone = timezone.get_current_timezone()

    def offset(moment: datetime) -> int:
        return int(moment.astimezone(zone).utcoffset().total_seconds() // 60)

    segments = []
    cursor, current = start, offset(start)
    probe = start
    while probe < end:
        probe = min(probe + timedelta(hours=6), end)
        if probe < end and offset(probe) != current:
            low, high = cursor, probe
            # Find the transition to the minute: DST changes happen on the hour or half hour.
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if offset(middle) == current else (low, middle)
            segments.append((high, current))
            cursor, current = high, offset(high)
    segments.append((end, current))
    return segments


def _local_day(*, start: datetime, end: datetime) -> Func | TruncDate:
    """An expression for the local calendar day of `created_at` that the database computes natively."""
    if connection.vendor != "sqlite":
        return TruncDate("created_at", tzinfo=timezone.get_current_timezone())
    # Django's SQLite TruncDate calls back into Python for every row; SQLite's own date() with the
    # zone's offset is several times faster on a million rows. SQLite stores UTC text datetimes.
    segments = _offset_segments(start, end)

    def shifted(minutes: int) -> Func:
        return Func(F("created_at"), Value(f"{minutes:+d} minutes"), function="date", output_field=DateField())

    if len(segments) == 1:
        return shifted(segments[0][1])
    whens = [When(created_at__lt=until, then=shifted(minutes)) for until, minutes in segments[:-1]]
    return Case(*whens, default=shifted(segments[-1][1]), output_field=DateField())


DAY_GROUP = ("day", "model", "bot_id", "channel", "priced")


def ledger_day_groups(*, start: datetime, end: datetime, per_person: bool = False) -> QuerySet:
    """Ledger rows in [start, end) summed per local day, model, bot, channel and priced flag (dicts).

    `per_person` splits each group by `user_id` too: one read that both daily caches can be built from.
    """
    return (
        _ledger_between(start=start, end=end)
        .annotate(day=_local_day(start=start, end=end))
        .values(*DAY_GROUP, *(("user_id",) if per_person else ()))
        .annotate(**_ledger_sums())
        .order_by()
    )


def usage_daily_totals_state(*, start: datetime, end: datetime) -> tuple[int, int]:
    """(calls the cached daily totals hold, ledger rows that exist) for the whole local days in [start, end)."""
    first, last = timezone.localdate(start), timezone.localdate(end - timedelta(microseconds=1))
    cached = UsageDailyTotal.objects.filter(zone=str(timezone.get_current_timezone()), day__gte=first, day__lte=last)
    return (
        cached.aggregate(calls=Sum("calls"))["calls"] or 0,
        _ledger_between(start=start, end=end).count(),
    )


def usage_daily_totals_stale_days(*, start: datetime, end: datetime) -> list[date]:
    """The local days in [start, end) whose cached call count is not their number of ledger rows, in order."""
    first, last = timezone.localdate(start), timezone.localdate(end - timedelta(microseconds=1))
    cached = dict(
        UsageDailyTotal.objects.filter(zone=str(timezone.get_current_timezone()), day__gte=first, day__lte=last)
        .values("day")
        .annotate(calls=Sum("calls"))
        .values_list("day", "calls")
        .order_by()
    )
    actual = dict(
        _ledger_between(start=start, end=end)
        .annotate(day=_local_day(start=start, end=end))
        .values("day")
        .annotate(calls=Count("id"))
        .values_list("day", "calls")
        .order_by()
    )
    return sorted(day for day in cached.keys() | actual.keys() if cached.get(day) != actual.get(day))


def _cached_day_groups(*, start: datetime, end: datetime) -> Iterator[dict]:
    first, last = timezone.localdate(start), timezone.localdate(end - timedelta(microseconds=1))
    return (
        UsageDailyTotal.objects.filter(zone=str(timezone.get_current_timezone()), day__gte=first, day__lte=last)
        .values(*DAY_GROUP, "calls", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd")
        .iterator()
    )


def usage_breakdown(*, start: datetime, end: datetime, cached_until: datetime | None = None) -> UsageBreakdown:
    """Ledger totals for [start, end) per local day, model, bot + channel.

    Whole days before `cached_until` are read from the daily totals (see botapp.usage_totals, which
    checks them first); the rest is summed from the ledger in one grouped scan.
    """
    live_from = max(start, min(cached_until or start, end))
    rows: list[dict] = []
    if live_from > start:
        rows += _cached_day_groups(start=start, end=live_from)
    if live_from < end:
        rows += ledger_day_groups(start=live_from, end=end)
    bot_names = dict(Bot.objects.values_list("id", "name"))
    result = UsageBreakdown(start=start, end=end)
    day = timezone.localdate(start)
    last_day = timezone.localdate(end - timedelta(microseconds=1))
    while day <= last_day:
        result.per_day[day] = UsageTotals()
        day += timedelta(days=1)
    for row in rows:
        result.total.add(row)
        result.per_day.setdefault(row["day"], UsageTotals()).add(row)
        result.per_model.setdefault(row["model"], UsageTotals()).add(row)
        bot = bot_names.get(row["bot_id"], "") if row["bot_id"] else ""
        result.per_bot_channel.setdefault((bot, row["channel"]), UsageTotals()).add(row)
        if not row["priced"]:
            result.unpriced_models[row["model"]] = result.unpriced_models.get(row["model"], 0) + row["calls"]
    result.per_model = dict(sorted(result.per_model.items(), key=lambda item: -item[1].cost_usd))
    result.per_bot_channel = dict(sorted(result.per_bot_channel.items(), key=lambda item: -item[1].cost_usd))
    return result


@dataclass(frozen=True)
class Spender:
    """One person's ledger totals in a date range."""

    user_id: int | None
    username: str
    totals: UsageTotals


def _cached_person_groups(*, start: datetime, end: datetime) -> QuerySet:
    """The cached per-person totals of the whole local days in [start, end), summed per person (dicts)."""
    first, last = timezone.localdate(start), timezone.localdate(end - timedelta(microseconds=1))
    return (
        UsageDailyPersonTotal.objects.filter(zone=str(timezone.get_current_timezone()), day__gte=first, day__lte=last)
        .values("user_id")
        # The same columns in the same order as the ledger's sums, so the two can be read in one UNION.
        .annotate(**{name: Sum(name) for name in _ledger_sums()})
        .order_by()
    )


def _person_groups(*, start: datetime, end: datetime, cached_until: datetime | None) -> QuerySet:
    """Totals per person for [start, end): whole days before `cached_until` from the cache, the rest from the ledger.

    A person can appear twice (cached days and live ones); the caller adds them up.
    """
    live_from = max(start, min(cached_until or start, end))
    # Grouping by the id alone and naming only the winners afterwards keeps the join off the scan.
    live = _ledger_between(start=live_from, end=end).values("user_id").annotate(**_ledger_sums()).order_by()
    if live_from <= start:
        return live
    cached = _cached_person_groups(start=start, end=live_from)
    return cached if live_from >= end else cached.union(live, all=True)


def usage_top_spenders(
    *, start: datetime, end: datetime, limit: int = 25, cached_until: datetime | None = None
) -> list[Spender]:
    """The people who spent most in [start, end), most first (rows without a person grouped as one).

    Whole days before `cached_until` are read from the per-person daily totals (see botapp.usage_totals,
    which checks them first): summing a million ledger rows per person on every view took seconds.
    """
    per_person: dict[int | None, UsageTotals] = {}
    for row in _person_groups(start=start, end=end, cached_until=cached_until):
        per_person.setdefault(row["user_id"], UsageTotals()).add(row)
    ranked = sorted(per_person.items(), key=lambda item: (-item[1].cost_usd, item[0] or 0))[:limit]
    ids = [user_id for user_id, _totals in ranked if user_id is not None]
    names = dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username")) if ids else {}
    return [Spender(user_id, names.get(user_id, ""), totals) for user_id, totals in ranked]


LEDGER_CSV_COLUMNS = [
    "id",
    "created_at",
    "user_id",
    "username",
    "channel",
    "bot",
    "model",
    "kind",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "audio_seconds",
    "cost_usd",
    "priced",
    "status",
    "estimated",
    "conversation_id",
    "message_id",
]


def usage_ledger_rows(*, start: datetime, end: datetime, chunk_size: int = 5000) -> Iterator[tuple]:
    """Ledger rows in [start, end) oldest first, in LEDGER_CSV_COLUMNS order, read in chunks."""
    columns = [{"username": "user__username", "bot": "bot__name"}.get(name, name) for name in LEDGER_CSV_COLUMNS]
    return (
        _ledger_between(start=start, end=end)
        .order_by("created_at", "id")
        .values_list(*columns)
        .iterator(chunk_size=chunk_size)
    )


def _month_start(now: datetime) -> datetime:
    return timezone.localtime(now).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def users_with_month_totals(queryset: QuerySet, *, now: datetime | None = None) -> QuerySet:
    """`queryset` of users annotated with this month's messages sent, tokens and cost (no N+1)."""
    since = _month_start(now or timezone.now())
    messages = (
        Message.objects.filter(sender=OuterRef("pk"), role=Role.USER, created_at__gte=since)
        .order_by()
        .values("sender")
        .annotate(n=Count("id"))
        .values("n")
    )
    ledger = UsageRecord.objects.filter(user=OuterRef("pk"), created_at__gte=since).order_by().values("user")
    tokens = ledger.annotate(n=Sum(F("input_tokens") + F("output_tokens"))).values("n")
    cost = ledger.annotate(n=Sum("cost_usd")).values("n")
    return queryset.annotate(
        month_messages=Coalesce(Subquery(messages, output_field=IntegerField()), Value(0)),
        month_tokens=Coalesce(Subquery(tokens, output_field=IntegerField()), Value(0)),
        month_cost=Coalesce(Subquery(cost, output_field=MONEY), Value(ZERO), output_field=MONEY),
    )


def conversations_with_totals(queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
    """`queryset` annotated with its message count and total cost, one correlated subquery each."""
    messages = (
        Message.objects.filter(conversation=OuterRef("pk"))
        .order_by()
        .values("conversation")
        .annotate(n=Count("id"))
        .values("n")
    )
    cost = (
        UsageRecord.objects.filter(conversation=OuterRef("pk"))
        .order_by()
        .values("conversation")
        .annotate(n=Sum("cost_usd"))
        .values("n")
    )
    return queryset.annotate(
        message_count=Coalesce(Subquery(messages, output_field=IntegerField()), Value(0)),
        total_cost=Coalesce(Subquery(cost, output_field=MONEY), Value(ZERO), output_field=MONEY),
    )


TRANSCRIPT_LIMIT = 1000


def conversation_transcript(*, conversation: Conversation, limit: int = TRANSCRIPT_LIMIT) -> list[Message]:
    """The latest `limit` messages, oldest first, each with `cost` and `billed_tokens` from its ledger rows."""
    ledger = UsageRecord.objects.filter(message=OuterRef("pk")).order_by().values("message")
    latest = (
        Message.objects.filter(conversation=conversation)
        .select_related("sender")
        .prefetch_related("media", Prefetch("tool_calls", queryset=ToolCall.objects.order_by("round", "position")))
        .annotate(
            cost=Coalesce(
                Subquery(ledger.annotate(n=Sum("cost_usd")).values("n"), output_field=MONEY),
                Value(ZERO),
                output_field=MONEY,
            ),
            billed_tokens=Coalesce(
                Subquery(
                    ledger.annotate(n=Sum(F("input_tokens") + F("output_tokens"))).values("n"),
                    output_field=IntegerField(),
                ),
                Value(0),
            ),
        )
        .order_by("-id")[:limit]
    )
    return list(reversed(latest))


def conversations_for_export(*, ids: Iterable[int]) -> list[Conversation]:
    """Conversations with their people, bot, persona and messages (oldest first), in two queries."""
    return list(
        Conversation.objects.filter(pk__in=list(ids))
        .select_related("user", "bot", "persona")
        .prefetch_related("messages")
        .order_by("pk")
    )


def broadcast_recipients(*, bot: Bot, after_id: int = 0, limit: int = 500) -> list[tuple[int, int]]:
    """(bot user id, Telegram chat id) of a bot's people who have not blocked it, by id after `after_id`."""
    return list(
        BotUser.objects.filter(bot=bot, blocked_bot_at__isnull=True, pk__gt=after_id)
        .order_by("pk")
        .values_list("pk", "identity__telegram_id")[:limit]
    )


def table_row_estimate(model: type[Model]) -> int | None:
    """About how many rows `model`'s table holds, without scanning it; None if it cannot tell.

    PostgreSQL: the planner's estimate (pg_class.reltuples). Elsewhere, or before PostgreSQL has analysed
    the table: the highest primary key, one index lookup, which overestimates only by deleted rows.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table])
            row = cursor.fetchone()
        # -1 means the table was never analysed.
        if row and row[0] is not None and row[0] > 0:
            return int(row[0])
    highest = model._base_manager.order_by("-pk").values_list("pk", flat=True).first()
    return int(highest) if isinstance(highest, int) else None
