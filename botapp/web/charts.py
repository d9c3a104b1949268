"""Bar charts drawn on the server as SVG geometry, so the page needs no chart library."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

Number = int | float | Decimal
# Axis labels are drawn this big (in viewBox units) on a phone, where the chart is shrunk the most; the
# margins leave room for them so that no label is cut off at the edge.
AXIS_FONT_UNITS = 22
CHARACTER_WIDTH = 0.6 * AXIS_FONT_UNITS


@dataclass(frozen=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    series: int
    title: str


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass
class BarChart:
    """Everything the template needs to draw the chart; coordinates are in the SVG's viewBox units."""

    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    segments: list[Segment] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    empty: bool = True


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (the top of the y axis)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def bar_chart(
    *,
    labels: Sequence[str],
    series: Sequence[Sequence[Number]],
    series_names: Sequence[str],
    format_value: Callable[[float], str],
    width: int = 560,
    height: int = 200,
    x_label_count: int = 5,
) -> BarChart:
    """Stacked bars, one per label; `series[i][j]` is series i's value at label j."""
    count = len(labels)
    totals = [sum(float(values[j]) for values in series) for j in range(count)]
    top_value = nice_ceiling(max(totals, default=0))
    longest = max((len(format_value(top_value * step / 4)) for step in range(5)), default=2)
    widest_x = max((len(label) for label in labels), default=0)
    left = max(48.0, math.ceil(longest * CHARACTER_WIDTH) + 12.0)
    right = width - max(8.0, math.ceil(widest_x * CHARACTER_WIDTH / 2))
    top, bottom = 14.0, height - (AXIS_FONT_UNITS + 12.0)
    chart = BarChart(width=width, height=height, plot_left=left, plot_right=right, plot_top=top, plot_bottom=bottom)
    if count == 0:
        return chart
    chart.empty = not any(totals)
    scale = (bottom - top) / top_value
    slot = (right - left) / count
    bar_width = max(slot * 0.7, 1.0)
    for j, label in enumerate(labels):
        x = left + j * slot + (slot - bar_width) / 2
        y = bottom
        for index, values in enumerate(series):
            value = float(values[j])
            if value <= 0:
                continue
            bar_height = value * scale
            y -= bar_height
            title = f"{label} · {series_names[index]}: {format_value(value)}"
            chart.segments.append(
                Segment(
                    x=round(x, 2),
                    y=round(y, 2),
                    width=round(bar_width, 2),
                    height=round(bar_height, 2),
                    series=index,
                    title=title,
                )
            )
    # An empty chart has no scale to speak of: only its zero line is labelled.
    for step in range(1 if chart.empty else 5):
        value = top_value * step / 4
        chart.y_ticks.append(Tick(position=round(bottom - value * scale, 2), label=format_value(value)))
    # Labels at most every 1.5 label widths, so that they never run into each other.
    room = (right - left) / max(widest_x * CHARACTER_WIDTH * 1.5, 1.0)
    every = max(math.ceil(count / max(min(x_label_count, int(room)), 1)), 1)
    for j in range(0, count, every):
        chart.x_ticks.append(Tick(position=round(left + j * slot + slot / 2, 2), label=labels[j]))
    return chart
