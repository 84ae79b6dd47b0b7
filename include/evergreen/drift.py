"""Drift detection: the reference profile a model is trained with, and the monitor using it.

The profile is plain JSON stored with each challenger run (``reference_profile.json``), so the monitor
compares live data with exactly the data the serving model learned from, without re-reading partitions.
Binning helpers are public so the monitor bins live data with the same rules.

Monitor rules (thresholds from ``spec.drift``):

* a feature drifts when its PSI >= ``psi_threshold``; or the KS test rejects (p < ``ks_pvalue``) *and* the
  shift is material (PSI >= ``psi_threshold / 2``: large samples make KS reject negligible shifts); or
  its missing rate moved by >= ``missing_rate_delta``;
* the day drifts when the share of drifted features > ``max_drifted_share``, or a ``key_features`` member
  drifted, or (with ``prediction_drift_in_verdict``) the prediction PSI > ``prediction_psi_threshold``, or
  (labels known) the primary metric is
  worse than the champion's holdout value by more than ``max_performance_drop`` (relative, as the gates).

Calendar features (day of week, weekend flag) are reported but not judged: a one-day partition always
differs from a multi-day reference there, which would raise a false alarm every day.

Nothing here imports Airflow; storage (which does) is imported only by :func:`write_drift_report`.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from evergreen.errors import EvergreenError
from evergreen.evaluation import json_safe
from evergreen.features import add_time_features
from evergreen.spec import FeatureType, PipelineSpec

PROFILE_VERSION = 1
MISSING = "__missing__"
OTHER = "__other__"
MAX_CATEGORIES = 100  # keeps the profile small for high-cardinality columns


def _float_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def numeric_values(values: pd.Series) -> np.ndarray:
    """Float values with missing/unparseable as NaN, whatever the input dtype (bool, Float64, object)."""
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("Float64")
    numeric = pd.to_numeric(values, errors="coerce")
    return np.asarray(numeric.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")


def quantile_edges(finite: np.ndarray, bins: int) -> list[float]:
    """Unique quantile edges (min .. max) of the non-missing values; ties collapse to fewer bins."""
    if finite.size == 0:
        return []
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    return [float(e) for e in edges]


def bin_indices(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bin of each value: bins are (e[i], e[i+1]], the outer bins open-ended so live data always lands."""
    interior = np.asarray(edges[1:-1], dtype="float64")
    return np.searchsorted(interior, values, side="left")


def bin_fractions(values: np.ndarray, edges: list[float]) -> list[float]:
    """Share of the non-missing ``values`` in each bin of ``edges`` (one bin when edges has < 2 items)."""
    finite = values[np.isfinite(values)]
    n_bins = max(len(edges) - 1, 1)
    if finite.size == 0:
        return [0.0] * n_bins
    counts = np.bincount(bin_indices(finite, edges), minlength=n_bins)
    return [float(c) / finite.size for c in counts]


def category_labels(values: pd.Series) -> pd.Series:
    """Categories as strings, missing as NaN; booleans become 'True'/'False'."""
    labels = values.astype("object").map(str)
    return labels.where(values.notna())


def category_frequencies(values: pd.Series, max_categories: int = MAX_CATEGORIES) -> dict[str, float]:
    """Share of each category among non-missing values; the tail beyond ``max_categories`` is ``__other__``."""
    labels = category_labels(values).dropna()
    if labels.empty:
        return {}
    counts = labels.value_counts()
    # Sort by count desc then label, so ties are ordered deterministically.
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total = float(len(labels))
    freqs = {str(k): float(v) / total for k, v in ordered[:max_categories]}
    rest = sum(v for _, v in ordered[max_categories:])
    if rest:
        freqs[OTHER] = float(rest) / total
    return dict(sorted(freqs.items()))


def _numeric_profile(values: np.ndarray, *, bins: int, sample_size: int, rng: np.random.Generator) -> dict[str, Any]:
    n = values.size
    finite = values[np.isfinite(values)]
    edges = quantile_edges(finite, bins)
    if finite.size > sample_size:
        sample = np.sort(rng.choice(finite, size=sample_size, replace=False))
    else:
        sample = np.sort(finite)
    return {
        "type": FeatureType.NUMERIC.value,
        "count": int(n),
        "missing_rate": float(1.0 - finite.size / n) if n else 0.0,
        "mean": _float_or_none(finite.mean()) if finite.size else None,
        "std": _float_or_none(finite.std()) if finite.size else None,
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "edges": edges,
        "fractions": bin_fractions(finite, edges),
        "sample": [float(v) for v in sample],
    }


def _categorical_profile(values: pd.Series, kind: FeatureType) -> dict[str, Any]:
    n = len(values)
    return {
        "type": kind.value,
        "count": int(n),
        "missing_rate": float(values.isna().mean()) if n else 0.0,
        "frequencies": category_frequencies(values),
    }


def build_reference_profile(
    frame: pd.DataFrame,
    spec: PipelineSpec,
    *,
    scores: np.ndarray | None = None,
    sample_size: int = 2000,
    bins: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """JSON-safe profile of every model feature of ``frame`` (and of prediction ``scores`` if given).

    Numeric: quantile bin edges and fractions, missing rate, mean/std/min/max and a deterministic sample
    (at most ``sample_size`` values, for KS tests). Categorical/boolean: category frequencies and missing
    rate. Same inputs and seed give identical JSON.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    features: dict[str, Any] = {}
    for i, (name, kind) in enumerate(spec.model_features.items()):
        if name not in frame.columns:
            raise KeyError(f"reference frame lacks model feature {name!r}")
        # One RNG per feature (seeded by position) so adding a feature never changes another's sample.
        rng = np.random.default_rng([seed, i])
        if kind == FeatureType.NUMERIC:
            features[name] = _numeric_profile(numeric_values(frame[name]), bins=bins, sample_size=sample_size,
                                              rng=rng)
        else:
            features[name] = _categorical_profile(frame[name], kind)
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "spec": spec.name,
        "rows": int(len(frame)),
        "bins": bins,
        "sample_size": sample_size,
        "seed": seed,
        "features": features,
        "scores": None,
    }
    if scores is not None:
        rng = np.random.default_rng([seed, len(features)])
        profile["scores"] = _numeric_profile(np.asarray(scores, dtype="float64").reshape(-1), bins=bins,
                                             sample_size=sample_size, rng=rng)
    return profile


# ------------------------------------------------------------------------------------------ monitor

REPORT_VERSION = 1
PROFILE_ARTIFACT = "reference_profile.json"
CHAMPION_ALIAS = "champion"
REPORTS_ZONE = ("reports", "drift")  # storage layout: reports/drift/<spec>/ds=YYYY-MM-DD/report.{json,html}
UNSEEN = "__unseen__"
# Derived from the event date: constant within a daily partition, so never comparable with the reference.
CALENDAR_FEATURES = frozenset({"event_day_of_week", "is_weekend"})
MAX_LISTED_UNSEEN = 20
MAX_CHART_BARS = 30


class NoChampionError(EvergreenError, LookupError):
    """The registered model has no ``@champion`` (or its run lacks a reference profile): nothing to monitor."""


class ChampionReference(NamedTuple):
    """What the monitor compares against; unpacks as ``version, profile, metrics, model_uri``."""

    version: str
    profile: dict[str, Any]
    metrics: dict[str, float]
    model_uri: str


def psi(expected_fractions: Any, actual_fractions: Any, eps: float = 1e-4) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` over shared buckets.

    Shares below ``eps`` (empty buckets) count as ``eps`` so an empty bucket adds a large but finite term.
    0 means identical; rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
    """
    expected = np.asarray(expected_fractions, dtype="float64").reshape(-1)
    actual = np.asarray(actual_fractions, dtype="float64").reshape(-1)
    if expected.shape != actual.shape:
        raise ValueError(f"psi needs equally many buckets, got {expected.size} and {actual.size}")
    if expected.size == 0:
        raise ValueError("psi needs at least one bucket")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if not (np.isfinite(expected).all() and np.isfinite(actual).all()) or (expected < 0).any() or (actual < 0).any():
        raise ValueError("psi fractions must be finite and non-negative")
    e = np.maximum(expected, eps)
    a = np.maximum(actual, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def _as_series(values: Any) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    return pd.Series(np.asarray(values).reshape(-1))


def _fmt_edge(value: float) -> str:
    return f"{value:.4g}"


def bin_labels(edges: list[float]) -> list[str]:
    """Human-readable names of the bins :func:`bin_fractions` produces for ``edges``."""
    if len(edges) < 2:
        return [f"= {_fmt_edge(edges[0])}" if edges else "all values"]
    inner = edges[1:-1]
    if not inner:
        return [f"{_fmt_edge(edges[0])} .. {_fmt_edge(edges[-1])}"]
    labels = [f"<= {_fmt_edge(inner[0])}"]
    labels += [f"({_fmt_edge(lo)}, {_fmt_edge(hi)}]" for lo, hi in zip(inner[:-1], inner[1:], strict=True)]
    labels.append(f"> {_fmt_edge(inner[-1])}")
    return labels


def numeric_drift(profile_entry: Mapping[str, Any], values: Any) -> dict[str, Any]:
    """Compare current numeric ``values`` with a numeric profile entry (no verdict; see drift_report).

    PSI over the reference quantile bins (non-missing values), KS two-sample test against the reference
    sample, missing-rate change and mean/std (with the mean shift in reference standard deviations).
    """
    from scipy import stats

    current = numeric_values(_as_series(values))
    n = int(current.size)
    finite = current[np.isfinite(current)]
    edges = [float(e) for e in profile_entry.get("edges") or []]
    reference = [float(f) for f in profile_entry.get("fractions") or []]
    sample = np.asarray(profile_entry.get("sample") or [], dtype="float64")
    ref_missing = float(profile_entry.get("missing_rate") or 0.0)
    ref_mean, ref_std = profile_entry.get("mean"), profile_entry.get("std")

    fractions = bin_fractions(finite, edges)
    if len(reference) != len(fractions):
        raise ValueError(f"profile has {len(reference)} bin fractions for {len(edges)} edges")
    value_psi = psi(reference, fractions) if finite.size and sum(reference) > 0 else None
    ks_statistic = ks_pvalue = None
    if finite.size and sample.size:
        ks = stats.ks_2samp(sample, finite)
        ks_statistic, ks_pvalue = float(ks.statistic), float(ks.pvalue)
    missing = float(1.0 - finite.size / n) if n else None
    mean = _float_or_none(finite.mean()) if finite.size else None
    std = _float_or_none(finite.std()) if finite.size else None
    shift = None
    if mean is not None and ref_mean is not None and ref_std:
        shift = (mean - float(ref_mean)) / float(ref_std)
    return {
        "type": FeatureType.NUMERIC.value,
        "rows": n,
        "non_missing": int(finite.size),
        "psi": value_psi,
        "ks_statistic": ks_statistic,
        "ks_pvalue": ks_pvalue,
        "missing_rate": missing,
        "reference_missing_rate": ref_missing,
        "missing_delta": None if missing is None else missing - ref_missing,
        "mean": mean,
        "std": std,
        "reference_mean": ref_mean,
        "reference_std": ref_std,
        "mean_shift_std": shift,
        "bins": {"labels": bin_labels(edges), "reference": reference, "current": fractions},
    }


def categorical_drift(profile_entry: Mapping[str, Any], values: Any) -> dict[str, Any]:
    """Compare current categorical/boolean ``values`` with a profile entry (no verdict; see drift_report).

    PSI over category shares of non-missing values. Categories absent from the reference are unseen: they
    form their own ``__unseen__`` bucket (reference share 0, so they weigh heavily), or fall into the
    reference's ``__other__`` tail bucket when it has one. Their share and the most frequent are reported.
    """
    series = _as_series(values)
    n = len(series)
    present = category_labels(series).dropna()
    total = len(present)
    frequencies = {str(k): float(v) for k, v in (profile_entry.get("frequencies") or {}).items()}
    known = [k for k in frequencies if k != OTHER]
    counts = present.value_counts()
    counts.index = counts.index.astype("object")
    unseen = counts[~counts.index.isin(known)]
    unseen_count = int(unseen.sum())

    labels = list(known)
    reference = [frequencies[k] for k in known]
    current = counts.reindex(pd.Index(known, dtype="object"), fill_value=0).to_numpy(dtype="float64")
    current = list(current / total) if total else [0.0] * len(known)
    if OTHER in frequencies:
        labels.append(OTHER)
        reference.append(frequencies[OTHER])
        current.append(unseen_count / total if total else 0.0)
    elif unseen_count:
        labels.append(UNSEEN)
        reference.append(0.0)
        current.append(unseen_count / total)

    top = unseen.sort_index(kind="stable").sort_values(ascending=False, kind="stable").head(MAX_LISTED_UNSEEN)
    missing = float(series.isna().mean()) if n else None
    ref_missing = float(profile_entry.get("missing_rate") or 0.0)
    return {
        "type": str(profile_entry.get("type") or FeatureType.CATEGORICAL.value),
        "rows": int(n),
        "non_missing": int(total),
        "psi": psi(reference, current) if total and labels else None,
        "missing_rate": missing,
        "reference_missing_rate": ref_missing,
        "missing_delta": None if missing is None else missing - ref_missing,
        "unseen_count": unseen_count,
        "unseen_share": unseen_count / total if total else 0.0,
        "unseen_categories": {str(k): int(v) / total for k, v in top.items()},
        "bins": {"labels": labels, "reference": [float(v) for v in reference], "current": [float(v) for v in current]},
    }


def _failed_checks(result: Mapping[str, Any], cfg: Any) -> list[str]:
    """Which drift rules a feature result trips (empty: not drifted)."""
    checks: list[str] = []
    value_psi, ks_pvalue, delta = result.get("psi"), result.get("ks_pvalue"), result.get("missing_delta")
    if value_psi is not None and value_psi >= cfg.psi_threshold:
        checks.append("psi")
    if (ks_pvalue is not None and ks_pvalue < cfg.ks_pvalue
            and value_psi is not None and value_psi >= cfg.psi_threshold / 2):
        checks.append("ks")
    if delta is not None and abs(delta) >= cfg.missing_rate_delta:
        checks.append("missing_rate")
    return checks


def _as_date(ds: dt.date | str) -> dt.date:
    if isinstance(ds, dt.datetime):
        return ds.date()
    if isinstance(ds, dt.date):
        return ds
    return dt.date.fromisoformat(str(ds)[:10])


def _performance(spec: PipelineSpec, labels: Any, scores: np.ndarray | None, champion_metric: Any,
                 rows: int) -> dict[str, Any]:
    """The day's metrics on labelled rows vs the champion's holdout primary metric (relative drop)."""
    from evergreen.evaluation import compute_metrics, higher_is_better, relative_improvement

    cfg = spec.drift
    metric = spec.primary_metric
    out: dict[str, Any] = {"metric": metric, "higher_is_better": higher_is_better(metric),
                           "threshold": cfg.max_performance_drop, "dropped": False, "labeled_rows": 0,
                           "current": None, "champion": None, "relative_drop": None, "metrics": {}}
    y = numeric_values(_as_series(labels))
    if y.size != rows:
        raise ValueError(f"labels have {y.size} values for {rows} rows")
    if scores is None:
        return {**out, "status": "no scores: performance needs the champion's predictions"}
    mask = np.isfinite(y) & np.isfinite(scores)
    out["labeled_rows"] = int(mask.sum())
    if not mask.any():
        return {**out, "status": "no labelled rows"}
    metrics = compute_metrics(spec.task_type, y[mask], scores[mask])
    current = metrics.get(metric)
    champion = champion_metric.get(metric) if isinstance(champion_metric, Mapping) else champion_metric
    champion = None if champion is None else _float_or_none(champion)
    out.update(metrics=metrics, current=current, champion=champion)
    if current is None or not math.isfinite(current):
        return {**out, "status": f"{metric} is undefined on this day's labels"}
    if champion is None:
        return {**out, "status": "no champion metric to compare with"}
    drop = -relative_improvement(metric, current, champion)
    return {**out, "status": "ok", "relative_drop": drop, "dropped": bool(drop > cfg.max_performance_drop)}


def drift_report(
    spec: PipelineSpec,
    profile: Mapping[str, Any],
    frame: pd.DataFrame,
    *,
    champion_version: str | int | None,
    scores: Any = None,
    labels: Any = None,
    champion_metric: float | Mapping[str, float] | None = None,
    ds: dt.date | str,
) -> dict[str, Any]:
    """Compare one day's feature rows (and the champion's scores/labels if given) with the reference profile.

    ``champion_metric`` is the champion's holdout primary metric (a number, or its metrics mapping).
    Returns a JSON-safe, deterministic dict: ``drift_detected``, ``reasons``, ``drifted_share``,
    ``drifted_features``, per-feature ``features`` (stats, ``drifted``, ``checks``), ``prediction``,
    ``performance``, ``spec``, ``ds``, ``rows``, ``champion_version`` and the ``thresholds`` used.
    """
    cfg = spec.drift
    if profile.get("spec") not in (None, spec.name):
        raise ValueError(f"reference profile is for spec {profile.get('spec')!r}, not {spec.name!r}")
    rows = int(len(frame))
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "spec": spec.name,
        "ds": _as_date(ds).isoformat(),
        "champion_version": None if champion_version is None else str(champion_version),
        "rows": rows,
        "drift_detected": False,
        "reasons": [],
        "drifted_share": 0.0,
        "drifted_features": [],
        "monitored_features": 0,
        "key_features": list(cfg.key_features),
        "thresholds": cfg.model_dump(mode="json"),
        "reference": {"rows": profile.get("rows"), "profile_version": profile.get("version"),
                      "scores_source": profile.get("scores_source")},
        "features": {},
        "prediction": None,
        "performance": None,
    }
    if rows == 0:
        report["reasons"] = ["no rows"]
        return json_safe(report)

    frame = add_time_features(frame, spec, overwrite=False)
    reference = profile.get("features") or {}
    results: dict[str, dict[str, Any]] = {}
    for name, kind in spec.model_features.items():
        if name not in reference:
            raise KeyError(f"reference profile lacks feature {name!r}: was the champion trained on another spec?")
        if name not in frame.columns:
            raise KeyError(f"frame lacks model feature {name!r}")
        entry = reference[name]
        numeric = kind == FeatureType.NUMERIC
        if (entry.get("type") == FeatureType.NUMERIC.value) != numeric:
            raise ValueError(f"feature {name!r} is {kind.value} in the spec but {entry.get('type')} in the profile")
        result = numeric_drift(entry, frame[name]) if numeric else categorical_drift(entry, frame[name])
        monitored = not (spec.etl.time_features and name in CALENDAR_FEATURES)
        checks = _failed_checks(result, cfg) if monitored else []
        result.update(monitored=monitored, key=name in cfg.key_features, drifted=bool(checks), checks=checks)
        if not monitored:
            result["note"] = "calendar feature: one day cannot match a multi-day reference, so it is not judged"
        results[name] = result

    monitored_names = [n for n, r in results.items() if r["monitored"]]
    drifted = [n for n in monitored_names if results[n]["drifted"]]
    share = len(drifted) / len(monitored_names) if monitored_names else 0.0
    reasons: list[str] = []
    if share > cfg.max_drifted_share:
        reasons.append(f"{len(drifted)} of {len(monitored_names)} features drifted ({share:.0%} > "
                       f"max_drifted_share {cfg.max_drifted_share:.0%}): {', '.join(drifted)}")
    for name in cfg.key_features:
        result = results[name]
        if result["drifted"]:
            value_psi = "n/a" if result["psi"] is None else f"{result['psi']:.3f}"
            reasons.append(f"key feature {name} drifted ({', '.join(result['checks'])}; PSI {value_psi})")

    score_values = None
    if scores is not None:
        score_values = np.asarray(scores, dtype="float64").reshape(-1)
        if score_values.size != rows:
            raise ValueError(f"scores have {score_values.size} values for {rows} rows")
        threshold = cfg.prediction_psi_threshold
        if profile.get("scores"):
            prediction = numeric_drift(profile["scores"], score_values)
            flagged = prediction["psi"] is not None and prediction["psi"] > threshold
            prediction.update(status="ok", threshold=threshold, drifted=bool(flagged))
            if flagged and cfg.prediction_drift_in_verdict:
                reasons.append(f"prediction PSI {prediction['psi']:.3f} > prediction_psi_threshold {threshold}")
        else:
            prediction = {"status": "the reference profile has no scores", "threshold": threshold, "drifted": False}
        report["prediction"] = prediction

    if labels is not None:
        performance = _performance(spec, labels, score_values, champion_metric, rows)
        if performance["dropped"]:
            reasons.append(
                f"{performance['metric']} {performance['current']:.4f} is {performance['relative_drop']:.1%} worse "
                f"than the champion's holdout {performance['champion']:.4f} "
                f"(max_performance_drop {cfg.max_performance_drop:.1%})"
            )
        report["performance"] = performance

    report.update(
        features=results,
        drifted_features=drifted,
        monitored_features=len(monitored_names),
        drifted_share=share,
        reasons=reasons,
        drift_detected=bool(reasons),
    )
    return json_safe(report)


# ------------------------------------------------------------------------------------------- HTML

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
    out.extend(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in summary_rows)
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


# -------------------------------------------------------------------------------------------- I/O


def drift_report_dir(spec: PipelineSpec | str, ds: dt.date | str) -> Any:
    """``<root>/reports/drift/<spec>/ds=YYYY-MM-DD`` (an ObjectStoragePath)."""
    from evergreen import storage

    name = spec if isinstance(spec, str) else spec.name
    return storage.storage_root().joinpath(*REPORTS_ZONE, name, storage.partition_key(_as_date(ds)))


def write_drift_report(spec: PipelineSpec | str, ds: dt.date | str, report: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``report.html`` then ``report.json`` (readers key on the JSON) atomically; return a reference.

    The reference: ``spec``, ``ds``, ``path`` (report.json URI), ``html_path``, ``key`` (path relative to
    the storage root), ``sha256`` of the JSON, ``drift_detected``, ``reasons``, ``drifted_share``,
    ``drifted_features``, ``champion_version`` and ``rows``.
    """
    from evergreen import storage

    name = spec if isinstance(spec, str) else spec.name
    day = _as_date(ds)
    if report.get("spec") not in (None, name) or report.get("ds") not in (None, day.isoformat()):
        raise ValueError(f"report is for {report.get('spec')} ds={report.get('ds')}, not {name} ds={day}")
    report = json_safe(dict(report))
    directory = drift_report_dir(name, day)
    html_path, json_path = directory / "report.html", directory / "report.json"
    storage.write_bytes_atomic(html_path, render_report_html(report).encode("utf-8"))
    digest = storage.write_json_atomic(json_path, report)
    return {
        "spec": name,
        "ds": day.isoformat(),
        "path": str(json_path),
        "html_path": str(html_path),
        "key": "/".join([*REPORTS_ZONE, name, storage.partition_key(day), "report.json"]),
        "sha256": digest,
        "drift_detected": bool(report.get("drift_detected")),
        "reasons": list(report.get("reasons") or []),
        "drifted_share": report.get("drifted_share"),
        "drifted_features": list(report.get("drifted_features") or []),
        "champion_version": report.get("champion_version"),
        "rows": report.get("rows"),
    }


def read_drift_report(spec: PipelineSpec | str, ds: dt.date | str) -> dict[str, Any] | None:
    """The stored ``report.json`` for the day, or None when none was written."""
    path = drift_report_dir(spec, ds) / "report.json"
    if not path.exists():
        return None
    return json.loads(path.read_bytes())


def load_champion_reference(spec: PipelineSpec) -> ChampionReference:
    """``(version, profile, champion_metrics, model_uri)`` of ``models:/<name>@champion``.

    The profile is the champion run's ``reference_profile.json``; the metrics are its holdout metrics
    (the evaluation module's metric names only); the model URI pins the version
    (``models:/<name>/<version>``) so scoring cannot race a promotion. Raises NoChampionError when the
    model has no champion or its run has no reference profile.
    """
    import tempfile
    from pathlib import Path

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from evergreen.evaluation import METRIC_DIRECTIONS

    name = spec.registered_model_name
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        raise NoChampionError(
            f"registered model {name!r} has no @{CHAMPION_ALIAS} version: train and promote a model for spec "
            f"{spec.name!r} before monitoring drift"
        ) from exc
    if not version.run_id:
        raise NoChampionError(f"{name} version {version.version} (@{CHAMPION_ALIAS}) has no MLflow run")
    run = client.get_run(version.run_id)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=PROFILE_ARTIFACT,
                                                        dst_path=tmp)
            profile = json.loads(Path(local).read_text(encoding="utf-8"))
    except (MlflowException, OSError) as exc:
        raise NoChampionError(
            f"{name} version {version.version} (@{CHAMPION_ALIAS}, run {version.run_id}) has no readable "
            f"{PROFILE_ARTIFACT}: {exc}"
        ) from exc
    metrics = {k: float(v) for k, v in sorted(run.data.metrics.items()) if k in METRIC_DIRECTIONS}
    return ChampionReference(str(version.version), profile, metrics, f"models:/{name}/{version.version}")
