"""Inline SVG charts rendered here, so a report opens from disk with no network and no script."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from keytrail.shown_text import markup

__all__ = ["PALETTE", "Bar", "Series", "bar_chart", "line_chart", "nice_max", "short_arn"]

PALETTE = ("#2f6db5", "#e07b39", "#3a9d5d", "#c0392b", "#8e6cbf", "#8c6d46", "#d36aa7", "#7f8c8d", "#b5a62f")
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    """One line: a name and a value per x position (the chart's shared time axis)."""

    name: str
    values: Sequence[float]


@dataclass(frozen=True)
class Bar:
    """One bar, with an optional lighter companion (e.g. the projection beside the month so far)."""

    label: str
    value: float
    companion: float | None = None


def short_arn(arn: str | None) -> str:
    """A readable name for an ARN: `key/1234abcd…`, `eu-west-1:key/mrk-1234…`, `111122223333:user/alice`."""
    if not arn:
        return "(none)"
    parts = arn.split(":", 5)
    if len(parts) < 6:
        return arn
    resource = parts[5]
    if resource.startswith("key/") and len(resource) > 16:
        resource = resource[:12] + "…"
    if parts[2] in ("iam", "sts"):
        return f"{parts[4]}:{resource}"
    # A multi-Region key's copies share its id, each Region's a key of its own (billed as one):
    # without the Region, the primary and its replicas read as one key drawn several times.
    return f"{parts[3]}:{resource}" if resource.startswith("key/mrk-") else resource


def nice_max(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** _floor_log10(value)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _floor_log10(value: float) -> int:
    exponent = 0
    while value >= 10:
        value, exponent = value / 10, exponent + 1
    while value < 1:
        value, exponent = value * 10, exponent - 1
    return exponent


def line_chart(times: Sequence[datetime], series: Sequence[Series], *, title: str,
               width: int = 880, height: int = 280) -> str:
    """Lines over a shared time axis, with a legend; each point carries its exact value as a tooltip."""
    left, right, top, bottom = 56, 190, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = nice_max(max((max(s.values, default=0) for s in series), default=0))
    step = plot_w / max(len(times) - 1, 1)

    def xy(index: int, value: float) -> tuple[float, float]:
        return left + index * step, top + plot_h - plot_h * value / top_value

    parts = [_frame(width, height, title), *_y_axis(left, top, plot_w, plot_h, top_value, _count)]
    parts += _time_labels(times, left, top + plot_h, step)
    for number, line in enumerate(series):
        color = PALETTE[number % len(PALETTE)]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(line.values)))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{points}">'
                     f"<title>{markup(line.name)}</title></polyline>")
        if len(times) == 1:
            x, y = xy(0, line.values[0])
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        parts.append(_legend_entry(number, line.name, color, width - right + 12, top))
    return "".join(parts) + "</svg>"


def bar_chart(bars: Sequence[Bar], *, title: str, unit: Callable[[float], str],
              companion_name: str = "", width: int = 880) -> str:
    """Horizontal bars, largest first as given; a companion value draws as a lighter bar behind."""
    left, right, top, row = 220, 90, 28, 22
    height = top + row * max(len(bars), 1) + 12
    plot_w = width - left - right
    top_value = nice_max(max((max(b.value, b.companion or 0) for b in bars), default=0))
    parts = [_frame(width, height, title)]
    for index, bar in enumerate(bars):
        y = top + index * row
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" {_FONT}>{markup(bar.label)}</text>')
        if bar.companion is not None:
            w = plot_w * bar.companion / top_value
            parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="16" fill="{PALETTE[0]}" '
                         f'opacity="0.3"><title>{markup(companion_name)}: {unit(bar.companion)}</title></rect>')
        w = plot_w * bar.value / top_value
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="16" fill="{PALETTE[0]}">'
                     f"<title>{markup(bar.label)}: {unit(bar.value)}</title></rect>")
        shown = unit(bar.value) + (f" / {unit(bar.companion)}" if bar.companion is not None else "")
        parts.append(f'<text x="{left + plot_w * max(bar.value, bar.companion or 0) / top_value + 4:.1f}" '
                     f'y="{y + 14}" {_FONT}>{markup(shown)}</text>')
    return "".join(parts) + "</svg>"


def _frame(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{markup(title)}">'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
            f'<text x="8" y="16" font-family="system-ui, sans-serif" font-size="13" font-weight="600">'
            f"{markup(title)}</text>")


def _y_axis(left: int, top: int, plot_w: int, plot_h: int, top_value: float,
            label: Callable[[float], str]) -> list[str]:
    parts = []
    for tick in range(5):
        value = top_value * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{label(value)}</text>')
    return parts


def _time_labels(times: Sequence[datetime], left: int, baseline: int, step: float) -> list[str]:
    if not times:
        return []
    picks = sorted({0, len(times) // 2, len(times) - 1})
    anchors = {0: "start", len(times) - 1: "end"}
    return [f'<text x="{left + i * step:.1f}" y="{baseline + 16}" text-anchor="{anchors.get(i, "middle")}" '
            f'{_FONT}>{times[i].strftime("%Y-%m-%d %H:%M")}</text>' for i in picks]


def _legend_entry(number: int, name: str, color: str, x: int, top: int) -> str:
    y = top + 4 + number * 18
    label = name if len(name) <= 26 else name[:25] + "…"
    return (f'<rect x="{x}" y="{y}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 15}" y="{y + 9}" {_FONT}><title>{markup(name)}</title>{markup(label)}</text>')


def _count(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
