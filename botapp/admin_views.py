"""The admin's usage dashboard and its CSV export of the ledger, for a chosen date range."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from botapp.selectors import LEDGER_CSV_COLUMNS, usage_breakdown, usage_ledger_rows, usage_top_spenders
from botapp.usage import format_usd
from botapp.usage_totals import usage_daily_totals_ensure

DEFAULT_DAYS = 30
TOP_PEOPLE = 25
# "Everyone" is still bounded: past this, the CSV export is the way to see each person.
ALL_PEOPLE = 2000
MAX_DAYS = 400


class DateRangeForm(forms.Form):
    """A range of whole local days, both ends included; the last 30 days when not given."""

    start = forms.DateField(label=gettext_lazy("From"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label=gettext_lazy("To"), required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict:
        cleaned = super().clean()
        today = timezone.localdate()
        end = cleaned.get("end") or today
        start = cleaned.get("start") or end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise forms.ValidationError(_("The start date is after the end date: swap them."))
        if (end - start).days >= MAX_DAYS:
            raise forms.ValidationError(
                _("Choose at most %(days)d days; for longer periods download the ledger in parts.") % {"days": MAX_DAYS}
            )
        cleaned.update(start=start, end=end)
        return cleaned

    def bounds(self) -> tuple[date, date, datetime, datetime]:
        """First and last day, and the aware datetimes [start, end) they cover."""
        if self.is_valid():
            first, last = self.cleaned_data["start"], self.cleaned_data["end"]
        else:
            last = timezone.localdate()
            first = last - timedelta(days=DEFAULT_DAYS - 1)
        zone = timezone.get_current_timezone()
        start = datetime.combine(first, time.min, tzinfo=zone)
        end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone)
        return first, last, start, end


@dataclass(frozen=True)
class Bar:
    """One bar (or stacked segment) of a chart, in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    title: str
    css_class: str = ""


@dataclass(frozen=True)
class Chart:
    """A bar chart drawn by the template as inline SVG."""

    width: int
    height: int
    bars: list[Bar]
    y_max_label: str
    x_labels: list[tuple[float, str]]
    baseline: float


CHART_WIDTH = 900
CHART_HEIGHT = 220
MARGIN_LEFT = 70
MARGIN_BOTTOM = 24
MARGIN_TOP = 10


def _chart(days: list[date], stacks: list[list[tuple[float, str, str]]], y_max_label: str, y_max: float) -> Chart:
    """Bars per day; each day is a stack of (value, tooltip, css class) segments, bottom first."""
    plot_width = CHART_WIDTH - MARGIN_LEFT - 10
    plot_height = CHART_HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    baseline = MARGIN_TOP + plot_height
    slot = plot_width / max(len(days), 1)
    bar_width = max(slot * 0.8, 1.0)
    bars = []
    for index, segments in enumerate(stacks):
        x = MARGIN_LEFT + index * slot + (slot - bar_width) / 2
        bottom = baseline
        for value, title, css_class in segments:
            height = plot_height * value / y_max if y_max else 0.0
            bars.append(
                Bar(round(x, 2), round(bottom - height, 2), round(bar_width, 2), round(height, 2), title, css_class)
            )
            bottom -= height
    step = max(len(days) // 8, 1)
    x_labels = [
        (round(MARGIN_LEFT + index * slot + slot / 2, 2), day.strftime("%m-%d"))
        for index, day in enumerate(days)
        if index % step == 0
    ]
    return Chart(CHART_WIDTH, CHART_HEIGHT, bars, y_max_label, x_labels, baseline)


def _require_view(request: HttpRequest, model_admin: admin.ModelAdmin) -> None:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied


def usage_dashboard(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Spend and tokens per day, per model, per bot and channel, top spenders and unpriced models."""
    _require_view(request, model_admin)
    form = DateRangeForm(request.GET or None)
    first, last, start, end = form.bounds()
    cached_until = usage_daily_totals_ensure(start=start, end=end)
    breakdown = usage_breakdown(start=start, end=end, cached_until=cached_until)
    show_all = request.GET.get("people") == "all"
    days = sorted(breakdown.per_day)
    per_day = [breakdown.per_day[day] for day in days]
    max_cost = max((totals.cost_usd for totals in per_day), default=Decimal("0"))
    max_tokens = max((totals.tokens for totals in per_day), default=0)
    spend_chart = _chart(
        days,
        [
            [(float(t.cost_usd), f"{day}: {format_usd(t.cost_usd)}", "cost")]
            for day, t in zip(days, per_day, strict=True)
        ],
        format_usd(max_cost),
        float(max_cost),
    )
    token_chart = _chart(
        days,
        [
            [
                (float(t.input_tokens), f"{day}: {t.input_tokens:,} input tokens", "input"),
                (float(t.output_tokens), f"{day}: {t.output_tokens:,} output tokens", "output"),
            ]
            for day, t in zip(days, per_day, strict=True)
        ],
        f"{max_tokens:,}",
        float(max_tokens),
    )
    query = f"start={first.isoformat()}&end={last.isoformat()}"
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Usage dashboard"),
        "opts": model_admin.model._meta,
        "form": form,
        "first": first,
        "last": last,
        "breakdown": breakdown,
        "per_day": list(zip(days, per_day, strict=True)),
        "spenders": usage_top_spenders(
            start=start, end=end, limit=ALL_PEOPLE if show_all else TOP_PEOPLE, cached_until=cached_until
        ),
        "show_all": show_all,
        "spend_chart": spend_chart,
        "token_chart": token_chart,
        "csv_query": query,
    }
    return TemplateResponse(request, "admin/botapp/usage_dashboard.html", context)


class _Echo:
    """A file-like object whose write returns the line, so csv.writer can feed a streaming response."""

    def write(self, value: str) -> str:
        return value


# A text cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A CSV cell: times in ISO 8601, numbers as they are, text a spreadsheet would run quoted to stay text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv_lines(start: datetime, end: datetime) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(LEDGER_CSV_COLUMNS)
    for row in usage_ledger_rows(start=start, end=end):
        yield writer.writerow([_cell(value) for value in row])


def usage_ledger_csv(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Every ledger row of the range as CSV, streamed so a million rows never sit in memory."""
    _require_view(request, model_admin)
    form = DateRangeForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain; charset=utf-8")
    first, last, start, end = form.bounds()
    response = StreamingHttpResponse(_csv_lines(start, end), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="jarvis-ledger-{first}-to-{last}.csv"'
    return response
