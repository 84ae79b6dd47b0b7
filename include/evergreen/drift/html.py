"""The drift report as a self-contained HTML page for people (inline SVG charts, no scripts)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from evergreen.spec import FeatureType

MAX_CHART_BARS = 30

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328;max-width:1200px}
h1{font-size:1.5em;margin-bottom:8px}h2{font-size:1.15em;margin-top:28px}
.banner{padding:14px 18px;border-radius:6px;font-size:1.1em;margin:12px 0}
.banner.alert{background:#ffebe9;border:1px solid #cf222e}.banner.ok{background:#dafbe1;border:1px solid #1a7f37}
.banner.empty{background:#f6f8fa;border:1px solid #8c959f}.banner strong{font-size:1.2em;display:block}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left}th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.drifted td{background:#ffebe9}tr.drifted td.flag{color:#cf222e;font-weight:600}
tr.unmonitored td{color:#6e7781}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:8px}
figure.drifted{border-color:#cf222e}figcaption{font-weight:600;margin-bottom:4px}
.legend{font-size:.85em;color:#57606a}.muted{color:#6e7781}
pre{background:#f6f8fa;padding:8px;overflow:auto}
"""
_REF_COLOR = "#8c959f"
_CUR_COLOR = "#0969da"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float) and not math.isfinite(value):
        return "&ndash;"
    return _e(format(value, spec))


def _pvalue(value: Any) -> str:
    if value is None:
        return "&ndash;"
    return _e(f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}")


def _bars_svg(labels: list[str], reference: list[float], current: list[float], title: str) -> str:
    """Horizontal grouped bars (reference grey, current blue) as an inline SVG."""
    n_all = len(labels)
    keep = list(range(n_all))
    if n_all > MAX_CHART_BARS:  # keep the largest buckets, in their original order
        weight = np.maximum(np.asarray(reference, dtype="float64"), np.asarray(current, dtype="float64"))
        keep = sorted(np.argsort(-weight, kind="stable")[:MAX_CHART_BARS].tolist())
    label_w, bar_w, row_h, top = 150, 250, 22, 22
    width, height = label_w + bar_w + 60, top + row_h * len(keep) + 4
    peak = max([*(reference[i] for i in keep), *(current[i] for i in keep), 1e-12])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(title)}" font-size="11" font-family="system-ui,sans-serif">',
        f'<rect x="{label_w}" y="4" width="10" height="10" fill="{_REF_COLOR}"/>'
        f'<text x="{label_w + 14}" y="13">reference</text>'
        f'<rect x="{label_w + 84}" y="4" width="10" height="10" fill="{_CUR_COLOR}"/>'
        f'<text x="{label_w + 98}" y="13">current</text>',
    ]
    for row, i in enumerate(keep):
        y = top + row * row_h
        label = str(labels[i])
        short = label if len(label) <= 24 else label[:23] + "\u2026"
        ref_w, cur_w = bar_w * reference[i] / peak, bar_w * current[i] / peak
        parts.append(
            f"<g><title>{_e(label)}: reference {reference[i]:.1%}, current {current[i]:.1%}</title>"
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_e(short)}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{ref_w:.1f}" height="8" fill="{_REF_COLOR}"/>'
            f'<rect x="{label_w}" y="{y + 11}" width="{cur_w:.1f}" height="8" fill="{_CUR_COLOR}"/>'
            f'<text x="{label_w + max(ref_w, cur_w) + 4:.1f}" y="{y + 13}" fill="#57606a">'
            f"{current[i]:.1%}</text></g>"
        )
    parts.append("</svg>")
    if n_all > len(keep):
        parts.append(f'<div class="muted">{n_all - len(keep)} smaller buckets not shown</div>')
    return "".join(parts)


def _chart(name: str, result: Mapping[str, Any]) -> str:
    bins = result.get("bins") or {}
    labels, reference, current = bins.get("labels") or [], bins.get("reference") or [], bins.get("current") or []
    if not labels or len(labels) != len(reference) or len(labels) != len(current):
        return ""
    reference = [float(v or 0.0) for v in reference]
    current = [float(v or 0.0) for v in current]
    css = ' class="drifted"' if result.get("drifted") else ""
    return (f"<figure{css}><figcaption>{_e(name)} "
            f'<span class="muted">PSI {_num(result.get("psi"))}</span></figcaption>'
            f"{_bars_svg(labels, reference, current, f'{name}: reference vs current')}</figure>")


def _feature_row(name: str, result: Mapping[str, Any]) -> str:
    if not result.get("monitored", True):
        css, flag = ' class="unmonitored"', "not judged"
    elif result.get("drifted"):
        css, flag = ' class="drifted"', "DRIFTED (" + ", ".join(result.get("checks") or []) + ")"
    else:
        css, flag = "", "ok"
    if result.get("type") == FeatureType.NUMERIC.value:
        detail = f"mean {_num(result.get('reference_mean'), '.4g')} &rarr; {_num(result.get('mean'), '.4g')}"
    else:
        detail = f"unseen {_num(result.get('unseen_share'), '.1%')}"
        listed = result.get("unseen_categories") or {}
        if listed:
            detail += " (" + _e(", ".join(list(listed)[:5])) + ")"
    delta = result.get("missing_delta")
    return (
        f"<tr{css}><td>{_e(name)}{' <strong>(key)</strong>' if result.get('key') else ''}</td>"
        f"<td>{_e(result.get('type', ''))}</td><td class=\"num\">{_num(result.get('psi'))}</td>"
        f"<td class=\"num\">{_pvalue(result.get('ks_pvalue'))}</td>"
        f"<td class=\"num\">{_num(result.get('reference_missing_rate'), '.1%')} &rarr; "
        f"{_num(result.get('missing_rate'), '.1%')} ({_num(delta, '+.1%')})</td>"
        f"<td>{detail}</td><td class=\"flag\">{_e(flag)}</td></tr>"
    )


def render_report_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page for people: verdict banner, reasons, per-feature table and inline charts."""
    spec_name, ds = report.get("spec", ""), report.get("ds", "")
    if not report.get("rows"):
        banner_css, headline = "empty", "No rows to check"
    elif report.get("drift_detected"):
        banner_css, headline = "alert", "Drift detected"
    else:
        banner_css, headline = "ok", "No drift detected"
    thresholds = report.get("thresholds") or {}
    features: Mapping[str, Mapping[str, Any]] = report.get("features") or {}
    prediction, performance = report.get("prediction"), report.get("performance")
    drifted = report.get("drifted_features") or []

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(f'Drift report: {spec_name} {ds}')}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(f'Drift report: {spec_name}, ds={ds}')}</h1>",
        f'<div class="banner {banner_css}"><strong>{_e(headline)}</strong>'
        f"champion version {_e(report.get('champion_version') or 'n/a')} &middot; {_e(report.get('rows', 0))} rows"
        f" &middot; {_e(len(drifted))} of {_e(report.get('monitored_features', 0))} features drifted "
        f"({_num(report.get('drifted_share'), '.0%')})</div>",
        "<h2>Reasons</h2>",
    ]
    reasons = report.get("reasons") or []
    if reasons:
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    else:
        out.append('<p class="muted">None: every check passed.</p>')

    out.append("<h2>Summary</h2><table>")
    summary_rows = [
        ("Rows", _e(report.get("rows", 0))),
        ("Reference rows", _e((report.get("reference") or {}).get("rows", "n/a"))),
        ("Drifted features", _e(", ".join(drifted) or "none")),
        ("Drifted share", f"{_num(report.get('drifted_share'), '.0%')} (max "
                          f"{_num(thresholds.get('max_drifted_share'), '.0%')})"),
        ("Key features", _e(", ".join(report.get("key_features") or []) or "none")),
    ]
    if prediction:
        summary_rows.append(("Prediction PSI", f"{_num(prediction.get('psi'))} (threshold "
                                               f"{_num(prediction.get('threshold'), 'g')}) {_e(prediction.get('status', ''))}"))
    if performance:
        summary_rows.append((
            f"Performance ({_e(performance.get('metric'))})",
            f"{_num(performance.get('current'), '.4f')} vs champion {_num(performance.get('champion'), '.4f')}, "
            f"relative drop {_num(performance.get('relative_drop'), '.1%')} (max "
            f"{_num(performance.get('threshold'), '.1%')}) on {_e(performance.get('labeled_rows', 0))} labelled "
            f"rows: {_e(performance.get('status', ''))}",
        ))
    attribution = report.get("attribution")
    if attribution:
        summary_rows.append(("Attribution shift", f"{_num(attribution.get('shift'))} (threshold "
                                                  f"{_num(attribution.get('threshold'), 'g')}) "
                                                  f"{_e(attribution.get('status', ''))}"))
    out.extend(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in summary_rows)
    out.append("</table>")

    if attribution and attribution.get("features"):
        out.append("<h2>Attributions</h2><p class=\"legend\">Each feature's share of the champion's mean |SHAP|: "
                   "on its holdout (reference) and on this day; largest changes first.</p><table><tr><th>Feature"
                   "</th><th>Reference share</th><th>Current share</th><th>Change</th></tr>")
        out.extend(f"<tr><td>{_e(name)}</td><td>{_num(row.get('reference'), '.1%')}</td><td>"
                   f"{_num(row.get('current'), '.1%')}</td><td>{_num(row.get('delta'), '+.1%')}</td></tr>"
                   for name, row in attribution["features"].items())
        out.append("</table>")

    if features:
        out.append("<h2>Features</h2><table><tr><th>Feature</th><th>Type</th><th>PSI</th><th>KS p</th>"
                   "<th>Missing (reference &rarr; current)</th><th>Detail</th><th>Status</th></tr>")
        out.extend(_feature_row(name, result) for name, result in features.items())
        out.append("</table>")
        out.append('<h2>Distributions</h2><p class="legend">Share of non-missing values per bin (numeric: '
                   "reference quantile bins) or category; grey is the reference, blue this day.</p>"
                   '<div class="charts">')
        out.extend(_chart(name, result) for name, result in features.items())
        if prediction and prediction.get("bins"):
            out.append(_chart("prediction score", prediction))
        out.append("</div>")
    out.append("<h2>Thresholds</h2><pre>" + _e(json.dumps(thresholds, indent=2, sort_keys=True)) + "</pre>")
    out.append("</body></html>\n")
    return "\n".join(out)
