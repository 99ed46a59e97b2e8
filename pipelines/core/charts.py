"""Small SVG charts for the self-contained HTML reports: horizontal bars, overlaid histograms, line
trends, with threshold lines drawn. Plain text out (no matplotlib: its import and rendering were
~3 s of every monitor task), no script, no font or CDN request, and deterministic: the same data,
the same bytes. Embed with `svg_uri(...)` as an <img> source."""
from __future__ import annotations

import base64
import math
from html import escape

W = 720                         # default width in px
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2")
MARK_COLORS = {"warn": "#f2a900", "alert": "#d62728"}
FONT = 'font-family="sans-serif" font-size="11"'


def num(v: float) -> str:
    """A coordinate or label with few digits (stable text)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _c(v: float) -> str:
    return f"{v:.1f}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
            f'<text x="8" y="16" {FONT} font-weight="bold">{escape(title)}</text>' + "".join(body) + "</svg>")


def _marks(marks) -> list[tuple[str, float, str]]:
    """The threshold lines to draw: (name, value, color), those with a value."""
    return [(name, v, MARK_COLORS.get(name, "#333")) for name, v in marks if v is not None]


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axis_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def hbars(labels: list[str], values: list[float | None], title: str, xlabel: str = "",
          marks: list[tuple[str, float]] = (), width: int = W) -> str:
    """One horizontal bar per label (in the order given, top to bottom), with vertical lines at
    `marks` (name, x): e.g. the warn and alert thresholds."""
    vals = [0.0 if v is None or not math.isfinite(v) else float(v) for v in values]
    hi = max([*vals, *(x for _, x in marks if x is not None), 1e-12])
    label_w = min(260, 12 + 6.2 * max((len(s) for s in labels), default=4))
    row, top = 16, 28
    height = top + row * len(labels) + 34
    x = _scale(0.0, hi * 1.05, label_w, width - 60)
    body = []
    for i, (lab, v) in enumerate(zip(labels, vals)):
        y = top + i * row
        body.append(f'<text x="{_c(label_w - 4)}" y="{_c(y + 11)}" {FONT} text-anchor="end">{escape(lab)}</text>'
                    f'<rect x="{_c(label_w)}" y="{_c(y + 2)}" width="{_c(x(v) - label_w)}" height="{row - 4}" '
                    f'fill="{PALETTE[0]}"><title>{escape(lab)}: {num(v)}</title></rect>'
                    f'<text x="{_c(x(v) + 3)}" y="{_c(y + 11)}" {FONT} fill="#444">{num(v)}</text>')
    base = top + row * len(labels)
    body.append(f'<line x1="{_c(label_w)}" y1="{base}" x2="{width - 60}" y2="{base}" stroke="#999"/>')
    for t in _axis_ticks(0.0, hi * 1.05):
        body.append(f'<text x="{_c(x(t))}" y="{base + 13}" {FONT} text-anchor="middle" fill="#666">{num(t)}</text>')
    for name, mx, color in _marks(marks):
        body.append(f'<line x1="{_c(x(mx))}" y1="{top - 4}" x2="{_c(x(mx))}" y2="{base}" stroke="{color}" '
                    f'stroke-dasharray="4 3"/><text x="{_c(x(mx) + 3)}" y="{top - 6}" {FONT} fill="{color}">'
                    f'{escape(name)} {num(mx)}</text>')
    if xlabel:
        body.append(f'<text x="{_c((label_w + width - 60) / 2)}" y="{base + 28}" {FONT} text-anchor="middle">'
                    f'{escape(xlabel)}</text>')
    return _svg(width, height, title, body)


def histograms(edges: list[float], series: list[tuple[str, list[float]]], title: str, xlabel: str = "",
               log: bool = False, width: int = W, height: int = 240) -> str:
    """Histograms on the same bins (len(edges) - 1 values each), overlaid as step outlines with a
    light fill; `log`: log-scaled y (shares of rows spanning decades)."""
    left, right, top, bottom = 52, width - 16, 30, height - 36
    x = _scale(edges[0], edges[-1], left, right)
    pos = [v for _, vals in series for v in vals if v and v > 0]
    if log and pos:
        lo, hi = math.log10(min(pos)) - 0.2, math.log10(max(pos)) + 0.1
        ty = lambda v: math.log10(v) if v and v > 0 else lo  # noqa: E731
    else:
        lo, hi = 0.0, max([*pos, 1e-12]) * 1.08
        ty = lambda v: v or 0.0  # noqa: E731
    y = _scale(lo, hi, bottom, top)
    body = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>']
    for i, (name, vals) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [f"{_c(x(edges[0]))},{_c(bottom)}"]
        for j, v in enumerate(vals):
            yy = _c(y(max(ty(v), lo)))
            pts += [f"{_c(x(edges[j]))},{yy}", f"{_c(x(edges[j + 1]))},{yy}"]
        pts.append(f"{_c(x(edges[-1]))},{_c(bottom)}")
        body.append(f'<polyline points="{" ".join(pts)}" fill="{color}" fill-opacity="0.18" stroke="{color}" '
                    f'stroke-width="1.5"/>')
        body.append(f'<rect x="{right - 150}" y="{top + 4 + 15 * i}" width="10" height="10" fill="{color}"/>'
                    f'<text x="{right - 136}" y="{top + 13 + 15 * i}" {FONT}>{escape(name)}</text>')
    for t in _axis_ticks(edges[0], edges[-1]):
        body.append(f'<text x="{_c(x(t))}" y="{bottom + 13}" {FONT} text-anchor="middle" fill="#666">{num(t)}</text>')
    ticks = [10 ** k for k in range(math.ceil(lo), math.floor(hi) + 1)] if log and pos else _axis_ticks(lo, hi, 4)
    for t in ticks:
        body.append(f'<text x="{left - 4}" y="{_c(y(math.log10(t) if log and pos else t) + 4)}" {FONT} '
                    f'text-anchor="end" fill="#666">{num(t)}</text>')
    if xlabel:
        body.append(f'<text x="{_c((left + right) / 2)}" y="{height - 6}" {FONT} text-anchor="middle">'
                    f'{escape(xlabel)}</text>')
    return _svg(width, height, title, body)


def grouped_bars(categories: list[str], series: list[tuple[str, list[float]]], title: str,
                 width: int = 340, height: int = 190, percent: bool = True) -> str:
    """Bars side by side per category, one colour per series (e.g. the share of rows per reference
    bin: reference vs the day); x labels thinned to fit."""
    left, right, top, bottom = 44, width - 8, 44, height - 30
    vals = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    hi = max([*vals, 1e-12]) * 1.08
    y = _scale(0.0, hi, bottom, top)
    fmt = (lambda v: f"{v:.0%}") if percent else num
    slot = (right - left) / max(len(categories), 1)
    bar = max(slot * 0.8 / max(len(series), 1), 0.5)
    body = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>']
    for t in _axis_ticks(0.0, hi, 3):
        body.append(f'<text x="{left - 4}" y="{_c(y(t) + 4)}" {FONT} text-anchor="end" fill="#666">{fmt(t)}</text>')
    for k, (name, vs) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        body.append(f'<rect x="{_c(left + 90 * k)}" y="24" width="9" height="9" fill="{color}"/>'
                    f'<text x="{_c(left + 90 * k + 12)}" y="32" {FONT}>{escape(name)}</text>')
        for i, v in enumerate(vs):
            v = v if v is not None and math.isfinite(v) else 0.0
            x0 = left + i * slot + slot * 0.1 + k * bar
            body.append(f'<rect x="{_c(x0)}" y="{_c(y(v))}" width="{_c(bar)}" height="{_c(bottom - y(v))}" '
                        f'fill="{color}"><title>{escape(categories[i])} {escape(name)}: {fmt(v) if not percent else f"{v:.2%}"}'
                        f'</title></rect>')
    step = max(1, math.ceil(len(categories) * 42 / (right - left)))
    for i in range(0, len(categories), step):
        body.append(f'<text x="{_c(left + (i + 0.5) * slot)}" y="{bottom + 13}" {FONT} text-anchor="middle" '
                    f'fill="#666">{escape(categories[i][:8])}</text>')
    return _svg(width, height, title, body)


def trend(points: list[tuple[str, float | None]], title: str, marks: list[tuple[str, float]] = (),
          width: int = 340, height: int = 200, percent: bool = False) -> str:
    """A line over dated points (x labels in order; a None value is a gap), with horizontal lines
    at `marks` (name, y)."""
    left, right, top, bottom = 48, width - 10, 30, height - 44
    vals = [v for _, v in points if v is not None and math.isfinite(v)]
    lo = min([*vals, *(m for _, m in marks if m is not None), 0.0])
    hi = max([*vals, *(m for _, m in marks if m is not None), 1e-12]) * 1.08
    n = max(len(points) - 1, 1)
    x = lambda i: left + i / n * (right - left)  # noqa: E731
    y = _scale(lo, hi, bottom, top)
    fmt = (lambda v: f"{v:.1%}") if percent else num
    body = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>']
    for t in _axis_ticks(lo, hi, 4):
        body.append(f'<text x="{left - 4}" y="{_c(y(t) + 4)}" {FONT} text-anchor="end" fill="#666">{fmt(t)}</text>')
    for name, m, color in _marks(marks):
        body.append(f'<line x1="{left}" y1="{_c(y(m))}" x2="{right}" y2="{_c(y(m))}" stroke="{color}" '
                    f'stroke-dasharray="4 3"><title>{escape(name)} {fmt(m)}</title></line>')
    segment: list[str] = []
    for i, (label, v) in enumerate(points):
        if v is None or not math.isfinite(v):
            if len(segment) > 1:
                body.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="{PALETTE[0]}" stroke-width="1.5"/>')
            segment = []
            continue
        segment.append(f"{_c(x(i))},{_c(y(v))}")
        body.append(f'<circle cx="{_c(x(i))}" cy="{_c(y(v))}" r="2.5" fill="{PALETTE[0]}">'
                    f'<title>{escape(label)}: {fmt(v)}</title></circle>')
    if len(segment) > 1:
        body.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="{PALETTE[0]}" stroke-width="1.5"/>')
    step = max(1, math.ceil(len(points) / 6))
    for i in range(0, len(points), step):
        body.append(f'<text x="{_c(x(i))}" y="{bottom + 14}" {FONT} text-anchor="middle" fill="#666">'
                    f'{escape(points[i][0][5:] if len(points[i][0]) == 10 else points[i][0])}</text>')
    return _svg(width, height, title, body)


def lines(labels: list[str], series: list[tuple[str, list[float | None]]], title: str, width: int = 440,
          height: int = 220, percent: bool = False) -> str:
    """Several lines over the same dated x labels (a None value is a gap), one colour each, with a
    legend: e.g. the realized AP of each model version over the days."""
    left, right, top, bottom = 48, width - 10, 30 + 14 * ((len(series) + 2) // 3), height - 30
    vals = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    lo, hi = min([*vals, 0.0]), max([*vals, 1e-12]) * 1.08
    n = max(len(labels) - 1, 1)
    x = lambda i: left + i / n * (right - left)  # noqa: E731
    y = _scale(lo, hi, bottom, top)
    fmt = (lambda v: f"{v:.1%}") if percent else num
    body = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>']
    for t in _axis_ticks(lo, hi, 4):
        body.append(f'<text x="{left - 4}" y="{_c(y(t) + 4)}" {FONT} text-anchor="end" fill="#666">{fmt(t)}</text>')
    for k, (name, vs) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        lx, ly = left + (k % 3) * ((right - left) / 3), 22 + 14 * (k // 3)
        body.append(f'<rect x="{_c(lx)}" y="{ly}" width="9" height="9" fill="{color}"/>'
                    f'<text x="{_c(lx + 12)}" y="{ly + 8}" {FONT}>{escape(name)}</text>')
        segment: list[str] = []
        for i, v in enumerate([*vs, None]):
            if v is None or not math.isfinite(v):
                if len(segment) > 1:
                    body.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="{color}" stroke-width="1.5"/>')
                segment = []
                continue
            segment.append(f"{_c(x(i))},{_c(y(v))}")
            body.append(f'<circle cx="{_c(x(i))}" cy="{_c(y(v))}" r="2.5" fill="{color}">'
                        f'<title>{escape(labels[i])} {escape(name)}: {fmt(v)}</title></circle>')
    step = max(1, math.ceil(len(labels) / 6))
    for i in range(0, len(labels), step):
        body.append(f'<text x="{_c(x(i))}" y="{bottom + 14}" {FONT} text-anchor="middle" fill="#666">'
                    f'{escape(labels[i][5:] if len(labels[i]) == 10 else labels[i])}</text>')
    return _svg(width, height, title, body)


def svg_uri(svg: str) -> str:
    """An SVG document as a data: URI (an <img> source: self-contained, nothing fetched)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
