"""What the page draws on the server: sanitized Markdown, SVG bar charts, and the usage figures behind them."""

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.utils import timezone

from botapp.models import Channel, Message, MessageStatus, Role, UsageKind
from botapp.selectors import conversation_messages, usage_by_day, usage_by_model
from botapp.usage import format_usd, usage_record_create
from botapp.web.charts import bar_chart, nice_ceiling
from botapp.web.markdown import highlight_css, markdown_to_html
from botapp.web.titles import display_title
from tests.factories import UserFactory

# --- Markdown -----------------------------------------------------------------------------------


def test_markdown_keeps_code_lists_tables_and_safe_links():
    """Code blocks (with their language), lists, tables and http links come through as HTML."""
    html = markdown_to_html(
        "```python\nx = 1 < 2\n```\n\n1. a\n2. b\n\n| h |\n|---|\n| c |\n\nSee [docs](https://example.com/a?b=1&c=2)."
    )
    assert '<pre><code class="language-python"><span class="n">x</span>' in html
    assert '<span class="o">&lt;</span>' in html and '<span class="mi">2</span>' in html
    assert "<ol>\n<li>a</li>" in html and "<th>h</th>" in html and "<td>c</td>" in html
    assert '<a href="https://example.com/a?b=1&amp;c=2" target="_blank" rel="noopener nofollow noreferrer">' in html


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        '<img src="x" onerror="alert(1)">',
        "<a href='javascript:alert(1)'>x</a>",
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "![x](https://tracker.example/pixel.gif)",
        '<iframe src="https://evil.example"></iframe>',
        '<svg onload="alert(1)"></svg>',
        "<style>body{display:none}</style>",
    ],
)
def test_markdown_never_lets_script_or_foreign_markup_through(hostile):
    """Raw HTML, script URLs, remote images and event handlers never become markup."""
    html = markdown_to_html(f"before {hostile} after").lower()
    for forbidden in ("<script", "<img", "<iframe", "<svg", "<style", 'href="javascript', 'href="data:'):
        assert forbidden not in html
    assert re.search(r"<[^>]*\son\w+=", html) is None
    assert "before" in html and "after" in html


def test_code_is_highlighted_with_token_classes_only():
    """Known languages get Pygments' token spans; unknown ones stay plain; no other span class gets through."""
    html = markdown_to_html("```python\ndef f():\n    return '<b>'\n```")
    assert '<span class="k">def</span>' in html and '<span class="nf">f</span>' in html
    assert "&lt;b&gt;" in html and "<b>" not in html
    plain = markdown_to_html("```nosuchlanguage\nx = 1\n```\n\n```\ny = 2\n```")
    assert "<span" not in plain and "x = 1" in plain and "y = 2" in plain
    # Raw HTML from the model is text; a span is only ever the highlighter's.
    assert "<span" not in markdown_to_html('<span class="k">x</span> <span class="hostile">y</span>')
    streaming = markdown_to_html("Here:\n\n```python\nfor i in range(3):\n    pri")
    assert '<span class="k">for</span>' in streaming and "pri" in streaming


def test_highlight_stylesheet_is_the_generated_one():
    """static/jarvis/highlight.css is what highlight_css() writes today (light and dark token colours)."""
    written = (Path(settings.BASE_DIR) / "static" / "jarvis" / "highlight.css").read_text()
    assert written == highlight_css()
    assert "prefers-color-scheme: dark" in written and ".markdown pre .k {" in written


@pytest.mark.parametrize(
    ("title", "question", "shown"),
    [
        ("Trip to Kyoto", "ignored", "Trip to Kyoto"),
        ("", "**How** do I `undo` a [commit](https://x.example)?", "How do I undo a commit?"),
        ("", "", "New conversation"),
        ("", "word " * 30, "word word word word word word word word word word word word…"),
        ("", "一" * 100, "一" * 60 + "…"),
        ("", "# Heading\n\n<script>x</script>", "Heading <script>x</script>"),
    ],
)
def test_display_title_is_plain_words_cut_at_a_word(title, question, shown):
    """A conversation without a title is named by its first question, without Markdown, cut at a word."""
    assert display_title(title, question) == shown


def test_code_block_language_class_is_checked():
    """Only a `language-…` class survives on code; anything else that could restyle the page is dropped."""
    html = markdown_to_html('```x" onmouseover="alert(1)\ncode\n```')
    assert re.search(r"<[^>]*\son\w+=", html) is None
    assert "<code>" in html


# --- Charts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 1.0), (0.0007, 0.001), (0.0012, 0.002), (3, 5), (5, 5), (7.5, 10), (1234, 2000), (99_000, 100_000)],
)
def test_nice_ceiling(value, top):
    """The y axis ends at the next 1, 2 or 5 times a power of ten."""
    assert nice_ceiling(value) == pytest.approx(top)


def test_bars_are_proportional_and_stacked():
    """Bar heights are proportional to the values, series stack, and days without use draw nothing."""
    chart = bar_chart(
        labels=["a", "b", "c"],
        series=[[Decimal("1"), 0, Decimal("4")], [1, 0, 0]],
        series_names=["in", "out"],
        format_value=str,
    )
    by_label = {}
    for segment in chart.segments:
        by_label.setdefault(segment.title.split(" · ")[0], []).append(segment)
    assert set(by_label) == {"a", "c"}
    [c_in] = by_label["c"]
    a_in, a_out = by_label["a"]
    assert c_in.height == pytest.approx(4 * a_in.height) and a_out.height == pytest.approx(a_in.height)
    assert a_out.y + a_out.height == pytest.approx(a_in.y)  # output sits on top of input
    assert c_in.y + c_in.height == pytest.approx(chart.plot_bottom)
    assert c_in.y >= chart.plot_top
    assert [tick.label for tick in chart.y_ticks] == ["0.0", "1.25", "2.5", "3.75", "5.0"]


def test_empty_chart_says_so():
    """A period without use is an empty chart with only its zero line labelled."""
    chart = bar_chart(labels=["a", "b"], series=[[0, 0]], series_names=["cost"], format_value=format_usd)
    assert chart.empty and chart.segments == [] and [tick.label for tick in chart.y_ticks] == ["$0"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0"), "$0"),
        (Decimal("0.000075"), "$0.000075"),
        (Decimal("0.0345"), "$0.0345"),
        (Decimal("12.5"), "$12.50"),
        (Decimal("0.001"), "$0.001"),
        (Decimal("0.35"), "$0.35"),
        (Decimal("0.3500"), "$0.35"),
        (Decimal("1234.5"), "$1,234.50"),
        (Decimal("0.000000000300"), "$0.0000000003"),
        (Decimal("0.99961"), "$0.9996"),
    ],
)
def test_format_usd(value, text):
    """Small amounts keep enough decimals to be seen; larger ones are shown in cents."""
    assert format_usd(value) == text


# --- Usage selectors ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_usage_by_day_counts_calendar_days_in_the_server_time_zone(settings):
    """Usage is grouped by the server's calendar day (as budgets are), with zeros for days without use."""
    settings.TIME_ZONE = "Asia/Shanghai"
    shanghai = ZoneInfo("Asia/Shanghai")
    user = UserFactory()
    # 23:30 in Shanghai on the 9th is 15:30 UTC: it belongs to the 9th, not the 10th.
    late = datetime(2026, 3, 9, 23, 30, tzinfo=shanghai)
    early = datetime(2026, 3, 10, 0, 30, tzinfo=shanghai)
    for at in (late, early, early):
        usage_record_create(user=user, kind=UsageKind.CHAT, model="gpt-4o-mini", channel=Channel.WEB,
                            input_tokens=1000, output_tokens=100, at=at)  # fmt: skip
    usage_record_create(user=UserFactory(), kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB,
                        input_tokens=5000, at=early)  # fmt: skip
    with timezone.override(shanghai):
        days = usage_by_day(user=user, days=4, today=date(2026, 3, 11))
    assert [d.day for d in days] == [date(2026, 3, 8) + timedelta(days=i) for i in range(4)]
    assert [d.input_tokens for d in days] == [0, 1000, 2000, 0]
    assert [d.output_tokens for d in days] == [0, 100, 200, 0]
    one_call = (1000 * Decimal("0.15") + 100 * Decimal("0.60")) / 1_000_000
    assert days[2].cost_usd == 2 * one_call and days[0].cost_usd == 0


@pytest.mark.django_db
def test_usage_by_model_sums_per_model_and_kind():
    """Per model and kind: calls, tokens and cost, most expensive first, only the person's own."""
    user = UserFactory()
    for model, tokens in [("gpt-4o", 10_000), ("gpt-4o", 20_000), ("gpt-4o-mini", 1000)]:
        usage_record_create(user=user, kind=UsageKind.CHAT, model=model, channel=Channel.WEB, input_tokens=tokens)
    usage_record_create(user=user, kind=UsageKind.TRANSCRIPTION, model="whisper-1", channel=Channel.TELEGRAM,
                        audio_seconds=Decimal("60"))  # fmt: skip
    usage_record_create(user=UserFactory(), kind=UsageKind.CHAT, model="gpt-4.1", channel=Channel.WEB,
                        input_tokens=10**6)  # fmt: skip
    rows = usage_by_model(user=user, since=timezone.localdate())
    assert [(r["model"], r["kind"], r["calls"]) for r in rows] == [
        ("gpt-4o", "chat", 2),
        ("whisper-1", "transcription", 1),
        ("gpt-4o-mini", "chat", 1),
    ]
    assert rows[0]["input_tokens"] == 30_000 and rows[0]["cost_usd"] == Decimal("0.075")
    assert rows[1]["cost_usd"] == Decimal("0.006")


@pytest.mark.django_db
def test_conversation_messages_hide_superseded_answers_and_carry_cost(conversation):
    """The page shows the retried answer, not the one it replaced, each with its own cost."""
    question = Message.objects.create(conversation=conversation, role=Role.USER, content="Q")
    old = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="old",
                                 status=MessageStatus.SUPERSEDED)  # fmt: skip
    new = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="new")
    for message in (old, new):
        usage_record_create(user=conversation.user, kind=UsageKind.CHAT, model="gpt-4o-mini", channel=Channel.WEB,
                            conversation=conversation, message=message, output_tokens=1000)  # fmt: skip
    rows = list(conversation_messages(conversation=conversation))
    assert [row.pk for row in rows] == [question.pk, new.pk]
    assert rows[0].cost_usd is None and rows[1].cost_usd == Decimal("0.0006")
