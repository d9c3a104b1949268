"""The usage dashboard and the ledger CSV export, checked against a ledger whose totals are known."""

from __future__ import annotations

import csv
import io
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from botapp.models import Channel, UsageKind, UsageRecord
from botapp.usage import format_usd, price_in_force, usage_record_create
from tests.admin_support import (  # noqa: F401  (fixtures)
    assert_login_page,
    fast_passwords_fixture,
    member_client_fixture,
    staff_client_fixture,
)
from tests.factories import BotFactory, UserFactory

pytestmark = pytest.mark.usefixtures("fast_passwords")

DASHBOARD = "admin:botapp_usage_dashboard"
CSV = "admin:botapp_usage_ledger_csv"
MILLION = Decimal(1_000_000)


def noon(days_ago: int) -> datetime:
    day = timezone.localdate() - timedelta(days=days_ago)
    return datetime.combine(day, time(12), tzinfo=timezone.get_current_timezone())


def list_price(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """The cost at the model's list price, worked out here rather than by the code under test."""
    price = price_in_force(model=model)
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / MILLION


@pytest.fixture
def ledger(db) -> dict:
    """Five ledger rows: four in the last 30 days (one unpriced), one 40 days ago."""
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    bot = BotFactory(name="helper")
    rows = [
        (alice, "gpt-4o-mini", Channel.TELEGRAM, bot, 1_000_000, 500_000, 0),
        (alice, "gpt-4o", Channel.WEB, None, 200_000, 100_000, 1),
        (bob, "gpt-4o-mini", Channel.TELEGRAM, bot, 2_000_000, 0, 1),
        (bob, "mystery-model", Channel.WEB, None, 1000, 1000, 2),
        (bob, "gpt-4o", Channel.WEB, None, 1_000_000, 1_000_000, 40),
    ]
    for user, model, channel, row_bot, input_tokens, output_tokens, days_ago in rows:
        usage_record_create(
            user=user,
            kind=UsageKind.CHAT,
            model=model,
            channel=channel,
            bot=row_bot,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            at=noon(days_ago),
        )
    cost = {
        "alice_mini": list_price("gpt-4o-mini", 1_000_000, 500_000),
        "alice_4o": list_price("gpt-4o", 200_000, 100_000),
        "bob_mini": list_price("gpt-4o-mini", 2_000_000, 0),
        "old": list_price("gpt-4o", 1_000_000, 1_000_000),
    }
    return {"alice": alice, "bob": bob, "bot": bot, "cost": cost}


def test_dashboard_totals_match_the_known_ledger(staff_client, ledger, django_assert_max_num_queries) -> None:
    """The default range (last 30 days) sums exactly the rows inside it, per day, model, bot/channel and person."""
    cost = ledger["cost"]
    # The first view also caches the finished days' totals; later views read them back.
    with django_assert_max_num_queries(16):
        staff_client.get(reverse(DASHBOARD))
    with django_assert_max_num_queries(9):
        response = staff_client.get(reverse(DASHBOARD))
    assert response.status_code == 200
    breakdown = response.context["breakdown"]
    assert breakdown.total.calls == 4
    assert breakdown.total.cost_usd == cost["alice_mini"] + cost["alice_4o"] + cost["bob_mini"]
    assert breakdown.total.input_tokens == 3_201_000
    assert breakdown.total.output_tokens == 601_000
    assert len(breakdown.per_day) == 30
    today = timezone.localdate()
    assert breakdown.per_day[today].cost_usd == cost["alice_mini"]
    assert breakdown.per_day[today - timedelta(days=1)].cost_usd == cost["alice_4o"] + cost["bob_mini"]
    assert breakdown.per_day[today - timedelta(days=2)].calls == 1
    assert breakdown.per_day[today - timedelta(days=3)].calls == 0
    assert breakdown.per_model["gpt-4o-mini"].cost_usd == cost["alice_mini"] + cost["bob_mini"]
    assert breakdown.per_model["gpt-4o"].cost_usd == cost["alice_4o"]
    assert breakdown.per_model["mystery-model"].cost_usd == 0
    assert breakdown.per_bot_channel[("helper", "telegram")].cost_usd == cost["alice_mini"] + cost["bob_mini"]
    assert breakdown.per_bot_channel[("", "web")].calls == 2
    spenders = response.context["spenders"]
    assert [(s.username, s.totals.cost_usd) for s in spenders] == [
        ("alice", cost["alice_mini"] + cost["alice_4o"]),
        ("bob", cost["bob_mini"]),
    ]
    page = response.content.decode()
    assert format_usd(breakdown.total.cost_usd) in page
    assert page.count('class="usage-chart"') == 2
    # The spend chart's bars are to scale: yesterday (the most expensive day) fills the plot.
    bars = response.context["spend_chart"].bars
    tallest = max(bar.height for bar in bars)
    assert bars[-2].height == tallest
    assert bars[-1].height == pytest.approx(
        tallest * float(cost["alice_mini"] / (cost["alice_4o"] + cost["bob_mini"])), abs=0.05
    )
    assert f'height="{bars[-2].height}"' in page


def test_dashboard_range_includes_older_rows(staff_client, ledger) -> None:
    """A chosen range that reaches 40 days back includes the old row, and only that range is summed."""
    cost = ledger["cost"]
    start = (timezone.localdate() - timedelta(days=45)).isoformat()
    end = (timezone.localdate() - timedelta(days=35)).isoformat()
    response = staff_client.get(reverse(DASHBOARD), {"start": start, "end": end})
    breakdown = response.context["breakdown"]
    assert breakdown.total.calls == 1
    assert breakdown.total.cost_usd == cost["old"]
    assert len(breakdown.per_day) == 11
    assert [s.username for s in response.context["spenders"]] == ["bob"]


def test_dashboard_warns_about_unpriced_models(staff_client, ledger) -> None:
    """Models used without a price are listed in a warning; ranges without them show none."""
    response = staff_client.get(reverse(DASHBOARD))
    assert response.context["breakdown"].unpriced_models == {"mystery-model": 1}
    page = response.content.decode()
    assert 'id="unpriced-warning"' in page and "mystery-model" in page
    old = (timezone.localdate() - timedelta(days=40)).isoformat()
    response = staff_client.get(reverse(DASHBOARD), {"start": old, "end": old})
    assert 'id="unpriced-warning"' not in response.content.decode()


def test_dashboard_refuses_a_backwards_range(staff_client, ledger) -> None:
    """A start after the end is a sentence on the page, and the export refuses it with a 400."""
    params = {"start": timezone.localdate().isoformat(), "end": (timezone.localdate() - timedelta(days=3)).isoformat()}
    response = staff_client.get(reverse(DASHBOARD), params)
    assert response.status_code == 200
    assert "The start date is after the end date" in response.content.decode()
    response = staff_client.get(reverse(CSV), params)
    assert response.status_code == 400
    assert "start date is after the end date" in response.content.decode()


def test_ledger_csv_parses_back_to_the_ledger(staff_client, ledger) -> None:
    """The streamed CSV holds exactly the range's ledger rows, with the same ids, people, tokens and costs."""
    response = staff_client.get(reverse(CSV))
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    since = noon(29).replace(hour=0)
    expected = UsageRecord.objects.filter(created_at__gte=since).order_by("created_at", "id")
    assert [int(row["id"]) for row in rows] == [record.pk for record in expected]
    for row, record in zip(rows, expected, strict=True):
        assert row["username"] == record.user.username
        assert Decimal(row["cost_usd"]) == record.cost_usd
        assert int(row["input_tokens"]) == record.input_tokens
        assert int(row["output_tokens"]) == record.output_tokens
        assert row["model"] == record.model
        assert row["bot"] == (record.bot.name if record.bot else "")
        assert datetime.fromisoformat(row["created_at"]) == record.created_at
    total = sum(Decimal(row["cost_usd"]) for row in rows)
    cost = ledger["cost"]
    assert total == cost["alice_mini"] + cost["alice_4o"] + cost["bob_mini"]
    assert {row["priced"] for row in rows if row["model"] == "mystery-model"} == {"False"}


def test_admin_index_links_to_the_dashboard(staff_client) -> None:
    """The admin index and the usage records list both link to the dashboard."""
    url = reverse(DASHBOARD)
    assert url in staff_client.get(reverse("admin:index")).content.decode()
    assert url in staff_client.get(reverse("admin:botapp_usagerecord_changelist")).content.decode()


@pytest.mark.parametrize("name", [DASHBOARD, CSV])
def test_dashboard_is_staff_only(client, member_client, name) -> None:
    """Anonymous visitors and signed-in non-staff people get the login page, not figures."""
    url = reverse(name)
    assert_login_page(client.get(url), url)
    assert_login_page(member_client.get(url), url)


def test_dashboard_needs_the_view_permission(db, client) -> None:
    """Staff without permission to view usage records are refused (403)."""
    staff = UserFactory(username="intern", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse(DASHBOARD)).status_code == 403
    assert client.get(reverse(CSV)).status_code == 403


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Kolkata", "America/St_Johns"])
def test_days_follow_the_local_time_zone_across_dst(db, settings, zone) -> None:
    """Rows near local midnight, around a DST change, are counted on the local day they happened."""
    from collections import Counter
    from datetime import UTC

    from botapp.selectors import usage_breakdown

    settings.TIME_ZONE = zone
    instants = [
        datetime(2026, 10, 24, 21, 59, tzinfo=UTC),
        datetime(2026, 10, 24, 22, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 22, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 23, 10, tzinfo=UTC),
        datetime(2026, 11, 1, 3, 10, tzinfo=UTC),
        datetime(2026, 11, 1, 4, 10, tzinfo=UTC),
        datetime(2026, 11, 1, 5, 10, tzinfo=UTC),
    ]
    for at in instants:
        usage_record_create(user=None, kind=UsageKind.CHAT, model="gpt-4o-mini", channel=Channel.WEB, at=at)
    zone_info = timezone.get_current_timezone()
    start = datetime(2026, 10, 20, tzinfo=zone_info)
    end = datetime(2026, 11, 5, tzinfo=zone_info)
    breakdown = usage_breakdown(start=start, end=end)
    expected = Counter(timezone.localdate(at) for at in instants)
    found = {day: totals.calls for day, totals in breakdown.per_day.items() if totals.calls}
    assert found == dict(expected)


def test_dashboard_lists_everyone_on_request(staff_client, ledger, monkeypatch) -> None:
    """By default only the top spenders are listed; `people=all` lists every person of the range."""
    from botapp import admin_views

    monkeypatch.setattr(admin_views, "TOP_PEOPLE", 1)
    response = staff_client.get(reverse(DASHBOARD))
    assert [s.username for s in response.context["spenders"]] == ["alice"]
    assert 'id="all-people"' in response.content.decode()
    response = staff_client.get(reverse(DASHBOARD), {"people": "all"})
    assert [s.username for s in response.context["spenders"]] == ["alice", "bob"]


def test_finished_days_are_cached_and_rebuilt_when_rows_arrive_late(staff_client, ledger) -> None:
    """Finished days come from the daily totals while they match the ledger; a late row triggers a rebuild."""
    from botapp.models import UsageDailyTotal

    cost = ledger["cost"]
    first = staff_client.get(reverse(DASHBOARD)).context["breakdown"]
    yesterday = timezone.localdate() - timedelta(days=1)
    cached = UsageDailyTotal.objects.filter(day=yesterday)
    assert sum(row.calls for row in cached) == 2
    assert sum(row.cost_usd for row in cached) == cost["alice_4o"] + cost["bob_mini"]
    # Proof that the cache is read: a doctored cached sum (same call count) shows up on the page.
    doctored = cached.get(model="gpt-4o")
    UsageDailyTotal.objects.filter(pk=doctored.pk).update(cost_usd=doctored.cost_usd + 1)
    second = staff_client.get(reverse(DASHBOARD)).context["breakdown"]
    assert second.per_day[yesterday].cost_usd == first.per_day[yesterday].cost_usd + 1
    # A row that arrives late for yesterday changes the count, so the days are summed again from the ledger.
    late = usage_record_create(
        user=ledger["alice"], kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, input_tokens=10, at=noon(1)
    )
    third = staff_client.get(reverse(DASHBOARD)).context["breakdown"]
    assert third.per_day[yesterday].cost_usd == cost["alice_4o"] + cost["bob_mini"] + late.cost_usd
    assert third.per_day[yesterday].calls == 3
    # Today is never cached: a new row today shows at once.
    usage_record_create(user=ledger["bob"], kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, input_tokens=10)
    fourth = staff_client.get(reverse(DASHBOARD)).context["breakdown"]
    assert fourth.per_day[timezone.localdate()].calls == 2
    assert not UsageDailyTotal.objects.filter(day=timezone.localdate()).exists()


def test_cache_is_kept_per_time_zone(staff_client, ledger, settings) -> None:
    """Changing the time zone does not reuse totals cut at another zone's midnights."""
    from botapp.models import UsageDailyTotal

    staff_client.get(reverse(DASHBOARD))
    settings.TIME_ZONE = "Asia/Tokyo"
    response = staff_client.get(reverse(DASHBOARD))
    assert response.context["breakdown"].total.calls == 4
    assert set(UsageDailyTotal.objects.values_list("zone", flat=True)) == {"UTC", "Asia/Tokyo"}


def test_top_spenders_add_cached_days_per_person_to_today(staff_client, ledger) -> None:
    """Finished days' spend per person comes from the per-person totals, today's from the ledger, added up."""
    from botapp.models import UsageDailyPersonTotal

    cost, alice, bob = ledger["cost"], ledger["alice"], ledger["bob"]
    staff_client.get(reverse(DASHBOARD))
    yesterday = timezone.localdate() - timedelta(days=1)
    cached = UsageDailyPersonTotal.objects.get(day=yesterday, user=alice)
    assert (cached.calls, cached.input_tokens, cached.cost_usd) == (1, 200_000, cost["alice_4o"])
    assert UsageDailyPersonTotal.objects.filter(user=bob).count() == 2
    assert not UsageDailyPersonTotal.objects.filter(day=timezone.localdate()).exists()
    # Proof that the cache is read: a doctored cached sum shows up beside today's row, read from the ledger.
    UsageDailyPersonTotal.objects.filter(pk=cached.pk).update(cost_usd=cached.cost_usd + 1)
    spenders = staff_client.get(reverse(DASHBOARD)).context["spenders"]
    assert [(s.username, s.totals.calls, s.totals.cost_usd) for s in spenders] == [
        ("alice", 2, cost["alice_mini"] + cost["alice_4o"] + 1),
        ("bob", 2, cost["bob_mini"]),
    ]
    # A row that arrives late for yesterday rebuilds the per-person totals with the day totals.
    late = usage_record_create(
        user=bob, kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, input_tokens=10, at=noon(1)
    )
    spenders = staff_client.get(reverse(DASHBOARD)).context["spenders"]
    assert [(s.username, s.totals.calls, s.totals.cost_usd) for s in spenders] == [
        ("alice", 2, cost["alice_mini"] + cost["alice_4o"]),
        ("bob", 3, cost["bob_mini"] + late.cost_usd),
    ]


def test_only_the_days_whose_count_is_off_are_rebuilt(staff_client, ledger) -> None:
    """A late row for yesterday rebuilds yesterday alone: a new day costs one day's sums, not the whole range."""
    from botapp.models import UsageDailyPersonTotal, UsageDailyTotal

    cost = ledger["cost"]
    staff_client.get(reverse(DASHBOARD))
    yesterday, before = timezone.localdate() - timedelta(days=1), timezone.localdate() - timedelta(days=2)
    # Doctored sums (same call counts) on the day before yesterday: they stay unless that day is rebuilt.
    UsageDailyTotal.objects.filter(day=before).update(cost_usd=Decimal("5"))
    UsageDailyPersonTotal.objects.filter(day=before).update(cost_usd=Decimal("5"))
    late = usage_record_create(
        user=ledger["alice"], kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, input_tokens=10, at=noon(1)
    )
    response = staff_client.get(reverse(DASHBOARD))
    breakdown = response.context["breakdown"]
    assert breakdown.per_day[yesterday].calls == 3
    assert breakdown.per_day[yesterday].cost_usd == cost["alice_4o"] + cost["bob_mini"] + late.cost_usd
    assert breakdown.per_day[before].cost_usd == Decimal("5")
    bob = next(spender for spender in response.context["spenders"] if spender.username == "bob")
    assert bob.totals.cost_usd == cost["bob_mini"] + Decimal("5")
