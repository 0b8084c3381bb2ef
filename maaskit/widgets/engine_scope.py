"""EngineScope: continuous batching and chunked prefill as they happen, one engine step at a time.

Attached to an engine (a server's: ``EngineScope.of(server, "gpt")``), it keeps the records of its
latest steps (:class:`~maaskit.lm.runtime.engine.StepRecord`) and draws them: a timeline with one row per
sequence and one column per step, each cell coloured by what that sequence did in that step (a chunk
of its prompt, or one decoded token), and under it how much of the key/value cache is in use. Drawn
in SVG, at most every ``refresh`` seconds while the engine runs and once more when it goes idle.
"""

from __future__ import annotations

import html
import time
from collections import deque
from typing import Any

import ipywidgets as w
from matplotlib.figure import Figure

from .. import plots
from .base import WidgetBase

__all__ = ["EngineScope"]

PREFILL, DECODE, IDLE = "#ff7f0e", "#1f77b4", "#eeeeee"


class EngineScope(WidgetBase):
    """``EngineScope(engine)``: the engine's steps, live. ``steps``: columns kept (the latest);
    ``lanes``: sequences shown (the latest to run)."""

    def __init__(self, engine: Any, *, steps: int = 60, lanes: int = 16, refresh: float = 0.25):
        self.engine, self.lanes, self.refresh = engine, lanes, refresh
        self.records: deque = deque(maxlen=steps)
        self.totals = {"steps": 0, "prompt_tokens": 0, "decoded": 0, "prefix_hits": 0, "most_running": 0}
        self._drawn_at = 0.0
        self.status = w.HTML()
        self.chart = w.HTML()
        self.status.add_class("maaskit-status")
        self.widget = w.VBox([self.status, self.chart], layout=w.Layout(width="100%", max_width="740px"))
        self.widget.add_class("maaskit-engine-scope")
        engine.watchers.append(self._see)
        self._draw()

    @classmethod
    def of(cls, server: Any, model: str, **options: Any) -> EngineScope:
        """The scope of the engine serving language model ``model`` on a server ``maaskit.serve`` started."""
        return cls(server.repository.language_model(model).engine, **options)

    def close(self) -> None:
        """Stop watching the engine."""
        if self._see in self.engine.watchers:
            self.engine.watchers.remove(self._see)

    def _see(self, record: Any) -> None:  # on the engine's event loop, after each step
        self.records.append(record)
        t = self.totals
        t["steps"] += 1
        t["prompt_tokens"] += record.prompt_tokens
        t["decoded"] += len(record.decodes)
        t["prefix_hits"] += record.prefix_hits
        t["most_running"] = max(t["most_running"], len(record.decodes) + len(record.chunks))
        idle = self.engine.running == 0 and self.engine.waiting == 0
        if idle or time.monotonic() - self._drawn_at >= self.refresh:
            self._draw()

    # --- what is drawn ----------------------------------------------------------------------

    def _grid(self) -> tuple[list[int], list[dict[int, tuple[str, int]]]]:
        """The sequences shown (the latest to run, in order) and, per step, what each of them did."""
        columns = [
            {**{s: ("decode", 1) for s in r.decodes}, **{s: ("prefill", n) for s, n in r.chunks}} for r in self.records
        ]
        seen: dict[int, None] = {}
        for column in columns:
            seen.update(dict.fromkeys(column))
        return sorted(seen)[-self.lanes :], columns

    def _summary(self) -> str:
        if not self.records:
            return "no step yet: send the server some requests"
        r, t = self.records[-1], self.totals
        return (
            f"step {r.step}: {len(r.decodes)} decoding, {len(r.chunks)} prefilling ({r.prompt_tokens} prompt tokens), "
            f"{r.waiting} waiting; cache {r.cache_tokens / r.cache_capacity:.0%} in use · "
            f"{t['steps']} steps seen: {t['decoded']} tokens decoded, {t['prompt_tokens']} prompt tokens computed, "
            f"{t['prefix_hits']} taken from the prefix cache; at most {t['most_running']} sequences in one step"
        )

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        self.status.value = html.escape(self._summary())
        self.chart.value = self.svg()

    def svg(self, width: int = 720) -> str:
        """The timeline and the cache's use, as SVG markup."""
        lanes, columns = self._grid()
        left, top, lane, gap = 64, 18, 14, 30
        plot_w = width - left - 10
        cell = plot_w / max(1, self.records.maxlen or 1)
        height = top + lane * max(1, len(lanes)) + gap + 60 + 24
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            'font-family="sans-serif" font-size="10" style="max-width:100%;height:auto">',
            f'<text x="{left}" y="12" font-size="11">each row a sequence, each column a step: '
            f'<tspan fill="{PREFILL}">■ prompt chunk</tspan>  <tspan fill="{DECODE}">■ decoded token</tspan></text>',
        ]
        for i, seq in enumerate(lanes):
            y = top + i * lane
            out.append(f'<text x="{left - 4}" y="{y + lane - 4}" text-anchor="end">seq {seq}</text>')
            out.append(f'<rect x="{left}" y="{y}" width="{plot_w}" height="{lane - 2}" fill="{IDLE}"/>')
            for j, column in enumerate(columns):
                if seq in column:
                    kind, n = column[seq]
                    color = PREFILL if kind == "prefill" else DECODE
                    what = f"{n} prompt tokens" if kind == "prefill" else "one token"
                    x, wide = left + j * cell, max(cell - 1, 1)
                    out.append(
                        f'<rect class="maaskit-{kind}" x="{x:.1f}" y="{y}" width="{wide:.1f}" height="{lane - 2}" '
                        f'fill="{color}"><title>step {self.records[j].step}: {what}</title></rect>'
                    )
        # the cache's use under the timeline: a filled area, 0 to 100%
        base = top + lane * max(1, len(lanes)) + gap + 60
        out.append(f'<text x="{left - 4}" y="{base - 26}" text-anchor="end">KV cache</text>')
        out.append(f'<rect x="{left}" y="{base - 60}" width="{plot_w}" height="60" fill="none" stroke="#999"/>')
        if self.records:
            points = [(left + (j + 0.5) * cell, base - 60 * r.cache_tokens / r.cache_capacity)
                      for j, r in enumerate(self.records)]  # fmt: skip
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            area = f"{points[0][0]:.1f},{base} {path} {points[-1][0]:.1f},{base}"
            out.append(
                f'<polygon class="maaskit-cache" points="{area}" fill="#2ca02c" fill-opacity="0.4" stroke="#2ca02c"/>'
            )
            last = self.records[-1]
            used = f"{last.cache_tokens / last.cache_capacity:.0%} of {last.cache_capacity:,} positions"
            out.append(f'<text x="{left + 4}" y="{base - 48}">{used}</text>')
        steps = f"steps (latest {len(self.records)})"
        out.append(f'<text x="{left + plot_w / 2}" y="{base + 16}" text-anchor="middle">{steps}</text>')
        out.append("</svg>")
        return "".join(out)

    # --- headless ---------------------------------------------------------------------------

    def figure(self) -> Figure:
        """The same timeline and cache use, drawn by matplotlib (for papermill and nbconvert)."""
        import numpy as np

        lanes, columns = self._grid()
        grid = np.zeros((max(1, len(lanes)), max(1, len(columns))))
        for j, column in enumerate(columns):
            for i, seq in enumerate(lanes):
                if seq in column:
                    grid[i, j] = 1 if column[seq][0] == "prefill" else 2
        fig = Figure(figsize=(8, 3.6), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        from matplotlib.colors import ListedColormap

        top.imshow(grid, aspect="auto", interpolation="nearest", cmap=ListedColormap([IDLE, PREFILL, DECODE]),
                   vmin=0, vmax=2)  # fmt: skip
        top.set(yticks=range(len(lanes)), yticklabels=[f"seq {s}" for s in lanes],
                title="each row a sequence: orange a prompt chunk, blue a decoded token")  # fmt: skip
        use = [r.cache_tokens / r.cache_capacity for r in self.records]
        bottom.fill_between(range(len(use)), use, color="#2ca02c", alpha=0.4)
        bottom.set(ylim=(0, max(use + [0.01]) * 1.2), ylabel="KV cache", xlabel="step")
        return fig

    def still_png(self) -> bytes:
        return plots.png_bytes(self.figure())

    def __str__(self) -> str:
        return f"EngineScope: {self._summary()}"
