"""A tiny SVG line chart for live widgets.

A matplotlib redraw costs 100-400 ms of CPU — redrawn four times a second it would take a
core away from the training it shows. Building this SVG takes about a millisecond and the
browser draws it. Static and final figures still come from matplotlib (:mod:`maaskit.plots`).
"""

from __future__ import annotations

import html
import math

__all__ = ["line_chart"]

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c8c8c")


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v else "0"


# long: one SVG document written top to bottom (axes, ticks, series, legend)
def line_chart(
    series: dict,
    *,
    title: str = "",
    xlabel: str = "",
    xlim: tuple[float, float] | None = None,
    log_y: bool = False,
    width: int = 360,
    height: int = 236,
) -> str:
    """SVG markup for named series ``{label: (xs, ys, style[, color])}``; ``style`` is ``"line"``,
    ``"faint"`` (a thin, light line) or ``"points"`` (line with markers); ``color`` indexes the palette."""
    left, right, top, bottom = 48, 10, 22, 50  # the legend is a row under the x label, never on the data
    pw, ph = width - left - right, height - top - bottom
    points = [
        (x, y) for xs, ys, *_ in series.values() for x, y in zip(xs, ys) if math.isfinite(y) and (not log_y or y > 0)
    ]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
        f'<text x="{left + pw / 2}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
        f'<text x="{left + pw / 2}" y="{top + ph + 26}" text-anchor="middle">{html.escape(xlabel)}</text>',
    ]
    if not points:
        out.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" fill="#888">waiting for data</text>'
        )
        return "".join(out) + "</svg>"
    x0, x1 = xlim or (min(p[0] for p in points), max(p[0] for p in points))
    ty = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    y0, y1 = min(ty(p[1]) for p in points), max(ty(p[1]) for p in points)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1
    sx = lambda x: left + (x - x0) / (x1 - x0) * pw  # noqa: E731
    sy = lambda v: top + ph - (ty(v) - y0) / (y1 - y0) * ph  # noqa: E731
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 13}" text-anchor="middle">{_fmt(t)}</text>')
    if log_y:  # decades, and 2 and 5 times them when the range spans less than two decades
        mantissas = (1,) if y1 - y0 >= 2 else (1, 2, 5)
        yticks = [
            m * 10**e
            for e in range(math.floor(y0), math.ceil(y1) + 1)
            for m in mantissas
            if y0 <= math.log10(m * 10**e) <= y1
        ]
    else:
        yticks = _ticks(y0, y1)
    for t in yticks:
        y = sy(t)
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    legend_x = left
    for i, (label, (xs, ys, style, *color)) in enumerate(series.items()):
        color = COLORS[(color[0] if color else i) % len(COLORS)]
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys) if math.isfinite(y) and (not log_y or y > 0)]
        if not pts:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        faint = style == "faint"
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="{1 if faint else 1.8}" '
            f'stroke-opacity="{0.45 if faint else 1}"/>'
        )
        if style == "points":
            out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="{color}"/>' for x, y in pts)
        ly = height - 6
        out.append(
            f'<line x1="{legend_x}" x2="{legend_x + 14}" y1="{ly - 3}" y2="{ly - 3}" stroke="{color}" '
            f'stroke-width="2"/><text x="{legend_x + 18}" y="{ly}">{html.escape(label)}</text>'
        )
        legend_x += 30 + 6 * len(label)  # about 6 px a character at font-size 10
    return "".join(out) + "</svg>"
