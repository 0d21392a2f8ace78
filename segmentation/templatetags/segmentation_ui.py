"""Presentation helpers of the segmentation pages: heat-map colours, bar widths, SVG charts.

Pure arithmetic on numbers the views already have; no queries.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django import template

register = template.Library()

#: The accent colour of app.css (--accent: #2f5bd3), as RGB for the heat map's alpha ramp.
ACCENT_RGB = (47, 91, 211)


@register.filter
def heat_style(share: float) -> str:
    """Inline style for a heat-map cell: the more customers, the deeper the colour."""
    share = max(0.0, min(1.0, float(share or 0)))
    alpha = 0.06 + 0.94 * share if share > 0 else 0.0
    ink = "#fff" if alpha > 0.55 else "var(--ink)"
    r, g, b = ACCENT_RGB
    background = f"rgba({r}, {g}, {b}, {alpha:.2f})" if alpha else "#f1f3f7"
    return f"background-color: {background}; color: {ink};"


@register.filter
def bar_width(value: Any, maximum: Any) -> str:
    """Width of a CSS bar as a percentage string ("37.5%"); a non-empty bar is visible."""
    try:
        value, maximum = float(value or 0), float(maximum or 0)
    except (TypeError, ValueError):
        return "0%"
    if maximum <= 0 or value <= 0:
        return "0%"
    return f"{max(0.5, 100 * value / maximum):.1f}%"


@register.filter
def lookup(mapping: Any, key: Any) -> Any:
    """``{{ names|lookup:slug }}``: the value for ``key``, or the key itself."""
    try:
        return mapping.get(key, key)
    except AttributeError:
        return key


@register.filter
def percent_of(part: Any, whole: Any) -> str:
    try:
        part, whole = float(part or 0), float(whole or 0)
    except (TypeError, ValueError):
        return ""
    return f"{100 * part / whole:.1f}%" if whole else ""


@register.filter
def score_range(bounds: Sequence[int]) -> str:
    low, high = bounds
    return str(low) if low == high else f"{low}–{high}"


@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class LineChart:
    width: int
    height: int
    line: str  # polyline points
    area: str  # path of the filled area under the line
    points: list[ChartPoint]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_labels: list[tuple[float, str, str]]  # (x, label, text-anchor)
    left: int
    right: int
    top: int
    bottom: int


def _nice_max(value: int) -> int:
    """A round upper bound for the y axis (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover


def line_chart(
    series: Sequence[tuple[dt.date, int]], *, width: int = 640, height: int = 200
) -> LineChart | None:
    """Coordinates of a size-over-time line chart (dates on x, counts on y from zero)."""
    if not series:
        return None
    left, right, top, bottom = 48, width - 12, 12, height - 28
    first, last = series[0][0], series[-1][0]
    span = max(1, (last - first).days)
    y_max = _nice_max(max(size for _, size in series))

    def x(day: dt.date) -> float:
        if len(series) == 1:
            return (left + right) / 2
        return left + (right - left) * (day - first).days / span

    def y(size: int) -> float:
        return bottom - (bottom - top) * size / y_max

    points = [
        ChartPoint(round(x(day), 1), round(y(size), 1), f"{day.isoformat()}: {size:,}")
        for day, size in series
    ]
    line = " ".join(f"{p.x},{p.y}" for p in points)
    area = f"M{points[0].x},{bottom} L" + " L".join(f"{p.x},{p.y}" for p in points)
    area += f" L{points[-1].x},{bottom} Z"
    ticks = [(round(y(v), 1), f"{v:,}") for v in (0, y_max // 2, y_max)]
    x_labels = [(points[0].x, first.strftime("%b %-d"), "start")]
    if len(points) > 1:
        x_labels.append((points[-1].x, last.strftime("%b %-d"), "end"))
    return LineChart(width, height, line, area, points, ticks, x_labels, left, right, top, bottom)


@register.simple_tag
def size_chart(snapshots) -> LineChart | None:
    """``{% size_chart history as chart %}`` from ``SegmentSizeSnapshot`` rows, oldest first."""
    return line_chart([(s.date, s.size) for s in snapshots])
