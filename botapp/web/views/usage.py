"""The person's usage page: tokens and cost per day and per model, and what is left of their budget."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from botapp import selectors
from botapp.models import UsageKind
from botapp.usage import budget_periods, format_usd
from botapp.web.charts import bar_chart
from botapp.web.display import format_tokens
from botapp.web.security import with_csp

USAGE_RANGES = (7, 30, 90)


@with_csp
@login_required
@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    """Tokens and cost per day as charts, per model as a table, and what is left of the budget."""
    try:
        days = int(request.GET.get("days", 30))
    except ValueError:
        days = 30
    if days not in USAGE_RANGES:
        days = 30
    daily = selectors.usage_by_day(user=request.user, days=days)
    labels = [day.day.strftime("%m-%d") for day in daily]
    cost_chart = bar_chart(
        labels=labels,
        series=[[day.cost_usd for day in daily]],
        series_names=[_("Cost")],
        format_value=format_usd,
    )
    token_chart = bar_chart(
        labels=labels,
        series=[[day.input_tokens for day in daily], [day.output_tokens for day in daily]],
        series_names=[_("Input tokens"), _("Output tokens")],
        format_value=format_tokens,
    )
    by_model = selectors.usage_by_model(user=request.user, since=daily[0].day)
    kinds = dict(UsageKind.choices)
    for row in by_model:
        row["cost"] = format_usd(row["cost_usd"])
        row["kind_label"] = kinds.get(row["kind"], row["kind"])
    names = {"daily": _("Today"), "monthly": _("This month")}
    budgets = [
        {
            "name": names[period.name],
            "limit": format_usd(period.limit) if period.limit is not None else None,
            "limit_value": period.limit,
            "spent": format_usd(period.spent),
            "spent_value": min(period.spent, period.limit) if period.limit is not None else period.spent,
            "remaining": format_usd(period.remaining) if period.remaining is not None else None,
            "resets": timezone.localtime(period.resets),
            "exhausted": period.exhausted,
        }
        for period in budget_periods(user=request.user)
    ]
    for budget in budgets:
        if budget["limit_value"]:
            # <meter> turns its bar from good to bad colours as the budget is spent.
            budget["meter_low"] = budget["limit_value"] / 2
            budget["meter_high"] = budget["limit_value"] * Decimal("0.9")
    context = {
        "nav": "usage",
        "days": days,
        "ranges": USAGE_RANGES,
        "daily": [
            {"day": day.day, "input": day.input_tokens, "output": day.output_tokens, "cost": format_usd(day.cost_usd)}
            for day in reversed(daily)
            if day.tokens or day.cost_usd
        ],
        "total_cost": format_usd(sum((day.cost_usd for day in daily), Decimal("0"))),
        "total_tokens": f"{sum(day.tokens for day in daily):,}",
        "cost_chart": cost_chart,
        "token_chart": token_chart,
        "by_model": by_model,
        "budgets": budgets,
    }
    return render(request, "botapp/usage.html", context)
