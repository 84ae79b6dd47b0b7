"""The one chart Evergreen's static reports draw: daily values of a few series on one axis, plain SVG."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


def line_chart(days: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str,
               markers: Mapping[str, Sequence[bool]] | None = None, marker_text: str = "event after",
               width: int = 960, height: int = 360) -> str:
    """One polyline per series over ``days`` (None: no point), a dot where ``markers`` says so, a legend."""
    pad = 50
    values = [v for points in series.values() for v in points if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0

    def x(i: int) -> float:
        return pad + (width - 2 * pad) * (i / max(1, len(days) - 1))

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * ((v - lo) / (hi - lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{pad}" y="20" font-size="13">{html.escape(title)}</text>',
             f'<text x="5" y="{y(hi) + 4:.1f}" font-size="11">{hi:.4g}</text>',
             f'<text x="5" y="{y(lo) + 4:.1f}" font-size="11">{lo:.4g}</text>']
    if days:
        parts += [f'<text x="{pad}" y="{height - 15}" font-size="11">{html.escape(days[0])}</text>',
                  f'<text x="{width - pad - 70}" y="{height - 15}" font-size="11">{html.escape(days[-1])}</text>']
    for k, (name, points) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        coords = [(x(i), y(v)) for i, v in enumerate(points) if v is not None]
        if coords:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in coords)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        for i, marked in enumerate((markers or {}).get(name, ())):
            if marked and points[i] is not None:
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(points[i]):.1f}" r="3" fill="{color}">'
                             f'<title>{html.escape(name)}: {html.escape(marker_text)} {html.escape(days[i])}</title></circle>')
        parts.append(f'<text x="{width - pad - 150}" y="{40 + 15 * k}" font-size="12" fill="{color}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
