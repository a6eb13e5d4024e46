"""The overview's chart: the last hour's finished jobs per minute, drawn here as SVG (no chart library)."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec
from markupsafe import Markup

MINUTES = 60
BAR = 9  # px per minute
HEIGHT = 120
TOP, BOTTOM, LEFT = 14, 18, 34


class Minute(msgspec.Struct, frozen=True):
    minute: datetime
    completed: int
    failed: int


class Throughput(msgspec.Struct, frozen=True):
    minutes: list[Minute]  # oldest first, MINUTES of them, empty minutes included

    @property
    def completed(self) -> int:
        return sum(m.completed for m in self.minutes)

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.minutes)

    @property
    def failure_rate(self) -> float | None:
        total = self.completed + self.failed
        return self.failed / total if total else None


def last_hour(rows: list[Minute], now_minute: datetime) -> Throughput:
    """Fill the minutes without finished jobs, oldest first, ending with the current minute."""
    by_minute = {r.minute: r for r in rows}
    minutes = []
    for back in range(MINUTES - 1, -1, -1):
        at = now_minute - timedelta(minutes=back)
        minutes.append(by_minute.get(at, Minute(at, 0, 0)))
    return Throughput(minutes)


def throughput_svg(data: Throughput) -> Markup:
    peak = max((m.completed + m.failed for m in data.minutes), default=0)
    scale = (HEIGHT - TOP - BOTTOM) / peak if peak else 0.0
    base = HEIGHT - BOTTOM
    width = LEFT + MINUTES * BAR + 4
    rate = data.failure_rate
    summary = (
        f"Last hour: {data.completed} completed, {data.failed} failed"
        + (f", failure rate {rate:.1%}" if rate is not None else "")
        + f"; busiest minute {peak} jobs."
    )
    parts = [
        f'<svg class="chart" role="img" aria-labelledby="chart-title" viewBox="0 0 {width} {HEIGHT}" '
        f'width="{width}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{summary}</title>',
        f'<line x1="{LEFT}" y1="{base}" x2="{width - 4}" y2="{base}" class="axis"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" class="label">{peak}</text>',
        f'<text x="{LEFT - 4}" y="{base}" text-anchor="end" class="label">0</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 4}" class="label">-60 min</text>',
        f'<text x="{width - 4}" y="{HEIGHT - 4}" text-anchor="end" class="label">now</text>',
    ]
    for i, m in enumerate(data.minutes):
        x = LEFT + i * BAR + 1
        done_h = m.completed * scale
        fail_h = m.failed * scale
        if done_h:
            parts.append(f'<rect x="{x}" y="{base - done_h:.1f}" width="{BAR - 2}" height="{done_h:.1f}" '
                         f'class="completed"/>')
        if fail_h:
            parts.append(f'<rect x="{x}" y="{base - done_h - fail_h:.1f}" width="{BAR - 2}" height="{fail_h:.1f}" '
                         f'class="failed"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - only numbers and fixed text go in
