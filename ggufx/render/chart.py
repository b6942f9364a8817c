"""The report's memory chart: an inline SVG of memory per GPU against the context.

:func:`memory_chart_svg` draws ``MemoryCurve.to_json()`` (:mod:`ggufx.analysis.memory.curve`): one
panel per GPU, the context on a log scale (x), MiB (y), one line per KV cache type, the GPU's free
memory as a horizontal line (and what llama.cpp's ``--fit`` keeps free below it), and llama.cpp's
``--fit`` point marked. No JavaScript, no colour-only encoding: each cache type has its own dash
pattern and marker shape and is named at the end of its line and in the legend, so it reads in
print and in greyscale. Every plotted point carries its figures (``data-n-ctx``, ``data-bytes``)
and a ``<title>``; the axes' ticks carry theirs, so the drawing can be read back.
"""

from __future__ import annotations

import math
from typing import Any

# escape and quoteattr as xml.sax.saxutils writes them, here because importing that module imports
# urllib.request and with it http.client, ssl and email (15 ms of every `report`)


def escape(data: str) -> str:
    """``&``, ``<`` and ``>`` as entities (xml.sax.saxutils.escape)."""
    return data.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")


def quoteattr(data: str) -> str:
    """An attribute value, escaped and quoted (xml.sax.saxutils.quoteattr): newlines, carriage
    returns and tabs as character references; double quotes unless the value holds one, then single
    quotes, unless it holds both (then ``&quot;`` inside double quotes)."""
    data = escape(data).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in data:
        return f'"{data}"'
    if "'" not in data:
        return f"'{data}'"
    return '"{}"'.format(data.replace('"', "&quot;"))


MiB = 1 << 20

# per cache type: stroke, dash pattern, marker shape (the first three; more cycle)
STYLES = [
    ("#1f4e99", "", "circle"),
    ("#b3541e", "8 4", "square"),
    ("#2e7d32", "2 3", "triangle"),
    ("#6a1b9a", "12 3 2 3", "diamond"),
]
WIDTH, HEIGHT = 700, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 60, 30, 46


def _k(n: int) -> str:
    """4096 -> 4K, 131072 -> 128K, 40960 -> 40K, 5888 -> 5.75K."""
    if n % 1024 == 0:
        return f"{n // 1024}K"
    return f"{n / 1024:.3g}K" if n >= 1024 else str(n)


def _nice_step(top: float, ticks: int = 5) -> float:
    raw = top / ticks
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _marker(shape: str, x: float, y: float, attrs: str, title: str, colour: str) -> str:
    t = f"<title>{escape(title)}</title>"
    if shape == "circle":
        return f'<circle cx="{x:.2f}" cy="{y:.2f}" r="3.5" fill="{colour}" {attrs}>{t}</circle>'
    if shape == "square":
        return f'<rect x="{x - 3.5:.2f}" y="{y - 3.5:.2f}" width="7" height="7" fill="{colour}" {attrs}>{t}</rect>'
    if shape == "triangle":
        pts = f"{x:.2f},{y - 4.5:.2f} {x + 4:.2f},{y + 3:.2f} {x - 4:.2f},{y + 3:.2f}"
        return f'<polygon points="{pts}" fill="{colour}" {attrs}>{t}</polygon>'
    pts = f"{x:.2f},{y - 4.5:.2f} {x + 4.5:.2f},{y:.2f} {x:.2f},{y + 4.5:.2f} {x - 4.5:.2f},{y:.2f}"
    return f'<polygon points="{pts}" fill="{colour}" {attrs}>{t}</polygon>'


def memory_chart_svg(curve: dict[str, Any], title: str = "") -> str:
    """The chart of one model (``MemoryCurve.to_json()``), one panel per GPU, as an ``<svg>`` element."""
    gpus = curve["gpus"]
    series = curve["series"]
    contexts = curve["contexts"]
    fit = curve.get("fit")
    margin = curve.get("margin", 0)
    panels = []
    for i, gpu in enumerate(gpus):
        panels.append(_panel(gpu, series, contexts, fit, margin, i * HEIGHT))
    label = title or "memory per GPU against context"
    legend, legend_h = _legend(series, fit, HEIGHT * len(gpus))
    h = HEIGHT * len(gpus) + legend_h
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="memory-chart" width="{WIDTH}" height="{h}" '
        f'viewBox="0 0 {WIDTH} {h}" role="img" aria-label={quoteattr(label)}>'
        f"<title>{escape(label)}</title>" + "".join(panels) + legend + "</svg>"
    )


def _legend(series: list[dict[str, Any]], fit: dict[str, Any] | None, y0: float) -> tuple[str, int]:
    """The legend below the panels, wrapped to the chart's width; and its height."""
    items: list[tuple[int, str]] = []  # (width, the item drawn at x=0, y=6)
    for j, s in enumerate(series):
        colour, dash, shape = STYLES[j % len(STYLES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        text = f"KV cache {s['cache_type']}"
        items.append(
            (
                34 + 7 * len(text),
                f'<line x1="0" y1="6" x2="28" y2="6" stroke="{colour}" stroke-width="2"{dash_attr}/>'
                + _marker(shape, 14, 6, "", text, colour)
                + f'<text x="34" y="10">{escape(text)}</text>',
            )
        )
    items.append(
        (
            34 + 7 * 15,
            '<line x1="0" y1="6" x2="28" y2="6" stroke="#000" stroke-width="1.5"/><text x="34" y="10">GPU free memory</text>',
        )
    )
    if fit:
        items.append(
            (
                16 + 7 * 15,
                _marker("diamond", 6, 6, 'stroke="#000" stroke-width="1"', "llama.cpp --fit", "#fff")
                + '<text x="16" y="10">llama.cpp --fit</text>',
            )
        )
    out = [f'<g class="legend" transform="translate({LEFT - 50},{y0 + 6})">']
    x = y = 0
    for w, body in items:
        if x and x + w > WIDTH - LEFT + 40:
            x, y = 0, y + 18
        out.append(f'<g transform="translate({x},{y})">{body}</g>')
        x += w + 18
    out.append("</g>")
    return "".join(out), y + 24


def _panel(
    gpu: dict[str, Any],
    series: list[dict[str, Any]],
    contexts: list[int],
    fit: dict[str, Any] | None,
    margin: int,
    y0: float,
) -> str:
    name, free = gpu["name"], gpu["free"]
    values = [p["use"].get(name, 0) for s in series for p in s["points"]]
    fit_bytes = fit["use"].get(name, 0) if fit else 0
    top = max([*values, free, fit_bytes, 1])
    step = _nice_step(top / MiB * 1.08)
    y_max = math.ceil(top / MiB * 1.08 / step) * step * MiB
    lo, hi = contexts[0], contexts[-1]
    if hi == lo:
        hi = lo * 2
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(n: float) -> float:
        return LEFT + plot_w * (math.log2(n) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))

    def sy(b: float) -> float:
        return y0 + TOP + plot_h * (1 - b / y_max)

    out = [f'<g class="panel" data-gpu={quoteattr(name)} data-free="{free}">']
    out.append(
        f'<text x="{LEFT}" y="{y0 + TOP - 10}" font-weight="bold">{escape(name)}'
        + (f" ({free / MiB:,.0f} MiB free)" if free else " (no size given)")
        + "</text>"
    )
    # axes and ticks (each tick names the value it stands for, so the chart can be read back)
    out.append(
        f'<line x1="{LEFT}" y1="{sy(0):.2f}" x2="{LEFT + plot_w}" y2="{sy(0):.2f}" stroke="#444"/>'
        f'<line x1="{LEFT}" y1="{sy(0):.2f}" x2="{LEFT}" y2="{sy(y_max):.2f}" stroke="#444"/>'
    )
    ticks = sorted({c for c in contexts if c & (c - 1) == 0} | {lo, hi})
    for c in ticks:
        x = sx(c)
        out.append(
            f'<g class="x-tick" data-n-ctx="{c}" data-x="{x:.2f}"><line x1="{x:.2f}" y1="{sy(0):.2f}" x2="{x:.2f}" '
            f'y2="{sy(y_max):.2f}" stroke="#ddd"/><text x="{x:.2f}" y="{sy(0) + 14:.2f}" text-anchor="middle">'
            f"{_k(c)}</text></g>"
        )
    out.append(
        f'<text x="{LEFT + plot_w / 2:.2f}" y="{sy(0) + 30:.2f}" text-anchor="middle">context (tokens, log scale)</text>'
    )
    v = 0.0
    while v <= y_max / MiB + 1e-9:
        y = sy(v * MiB)
        out.append(
            f'<g class="y-tick" data-bytes="{int(v * MiB)}" data-y="{y:.2f}"><line x1="{LEFT}" y1="{y:.2f}" '
            f'x2="{LEFT + plot_w}" y2="{y:.2f}" stroke="#eee"/><text x="{LEFT - 6}" y="{y + 3:.2f}" '
            f'text-anchor="end">{v:,.0f}</text></g>'
        )
        v += step
    out.append(
        f'<text x="14" y="{sy(y_max / 2):.2f}" transform="rotate(-90 14 {sy(y_max / 2):.2f})" '
        f'text-anchor="middle">MiB on {escape(name)}</text>'
    )
    # the budget: free memory, and what llama.cpp's fit keeps free below it
    if free:
        y = sy(free)
        out.append(
            f'<g class="budget" data-bytes="{free}"><line x1="{LEFT}" y1="{y:.2f}" x2="{LEFT + plot_w}" y2="{y:.2f}" '
            f'stroke="#000" stroke-width="1.5"/><text x="{LEFT + 4}" y="{y - 4:.2f}">free: {free / MiB:,.0f} MiB</text></g>'
        )
        if margin and free > margin:
            y = sy(free - margin)
            out.append(
                f'<g class="budget-margin" data-bytes="{free - margin}"><line x1="{LEFT}" y1="{y:.2f}" '
                f'x2="{LEFT + plot_w}" y2="{y:.2f}" stroke="#000" stroke-width="1" stroke-dasharray="1 3"/>'
                f'<text x="{LEFT + 4}" y="{y - 4:.2f}">llama.cpp --fit keeps {margin / MiB:,.0f} MiB free (-fitt)</text></g>'
            )
    # one line per cache type, each named at its end (names kept 12 px apart, in the lines' order)
    ends = sorted((sy(s["points"][-1]["use"].get(name, 0)), s["cache_type"]) for s in series)
    label_y: dict[str, float] = {}
    last = -1e9
    for y, ct in ends:
        last = max(y + 4, last + 12)
        label_y[ct] = last
    for j, s in enumerate(series):
        colour, dash, shape = STYLES[j % len(STYLES)]
        ct = s["cache_type"]
        pts = [(p["n_ctx"], p["use"].get(name, 0)) for p in s["points"]]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{sx(c):.2f},{sy(b):.2f}" for c, b in pts)
        out.append(
            f'<g class="series" data-cache-type={quoteattr(ct)}><polyline points="{path}" fill="none" '
            f'stroke="{colour}" stroke-width="2"{dash_attr}/>'
        )
        for c, b in pts:
            out.append(
                _marker(
                    shape,
                    sx(c),
                    sy(b),
                    f'class="point" data-n-ctx="{c}" data-bytes="{b}"',
                    f"{ct}: {c:,} tokens, {b / MiB:,.1f} MiB on {name}",
                    colour,
                )
            )
        c, b = pts[-1]
        out.append(f'<text x="{sx(c) + 8:.2f}" y="{label_y[ct]:.2f}" fill="{colour}">{escape(ct)}</text></g>')
    # llama.cpp's --fit point
    if fit:
        c, b = fit["n_ctx"], fit["use"].get(name, 0)
        x, y = sx(min(max(c, lo), hi)), sy(b)
        what = f"llama.cpp --fit: {fit['args']} ({fit['cache_type']} cache)"
        out.append(
            f'<g class="fit-point" data-n-ctx="{c}" data-bytes="{b}">'
            + _marker("diamond", x, y, 'stroke="#000" stroke-width="1.5"', f"{what}: {b / MiB:,.1f} MiB", "#fff")
            + f'<text x="{x - 6:.2f}" y="{y - 9:.2f}" text-anchor="end">--fit -c {c:,}</text></g>'
        )
    out.append("</g>")
    return "".join(out)
