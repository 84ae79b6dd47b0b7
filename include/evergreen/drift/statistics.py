"""Drift statistics and the day's verdict (pure: no I/O, no MLflow, no Airflow).

Rules (thresholds from ``spec.drift``):

* a feature drifts when a change is both material and significant for the day's sample size: PSI >=
  ``psi_threshold`` with the KS (numeric) or chi-square (categorical) test rejecting at ``ks_pvalue``; or
  the KS test rejecting with PSI >= ``psi_threshold / 2`` or a KS statistic >= ``ks_statistic`` (a change
  of shape can hide inside PSI's bins); or the missing rate moved by >= ``missing_rate_delta`` and a
  binomial test rejects; or it was constant in the reference and varies now. (PSI alone on a small day
  is mostly sampling noise; a test alone on a big day flags negligible shifts.) PSI and KS must also
  exceed the largest value a single day of the reference itself showed against the whole reference
  (``daily_spread`` in the profile): rows of one day are alike, so ordinary days differ from a pooled
  reference by more than independent samples would;
* the day drifts when the share of drifted features > ``max_drifted_share``, or a ``key_features`` member
  drifted, or (with ``prediction_drift_in_verdict``) the prediction PSI > ``prediction_psi_threshold``, or
  (labels known) the primary metric is worse by more than ``max_performance_drop`` (relative) than the
  *worst* of the champion's holdout days: ordinary day-to-day noise is not drift.

Calendar-like features (one value per day, several across the days: day of week, weekend flag, a season
column; found in the training days or listed in ``drift.calendar_features``) are compared with the
values the reference knows: a known value is not judged (one day can never match a multi-day reference),
an unseen one is drift. Days up to the end of the champion's training window are reported, not judged.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from evergreen.drift.profile import OTHER, bin_fractions, category_labels, finite_or_none, numeric_values
from evergreen.etl.features import add_time_features
from evergreen.evaluation import compute_metrics, higher_is_better, json_safe, relative_improvement
from evergreen.spec import FeatureType, PipelineSpec

REPORT_VERSION = 1
UNSEEN = "__unseen__"
# Derived from the event date: constant within a daily partition, so never comparable with the reference.
CALENDAR_FEATURES = frozenset({"event_day_of_week", "is_weekend"})
MAX_LISTED_UNSEEN = 20
DRIFT_THREADS = min(4, os.cpu_count() or 1)  # features judged at once (the report does not depend on it)


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


# scipy's ks_2samp computes exact p-values up to this size (its MAX_AUTO_N); above it, Smirnov's asymptotic one.
KS_EXACT_MAX_N = 10_000


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """The two-sample KS statistic of two *sorted* samples, as ``scipy.stats.ks_2samp`` computes it (before
    it rounds it to the exact distribution's lattice on small samples), but
    evaluated only where it can peak: at the reference's values and, for each run of current values
    between two of them, at its first and last (there the reference's ECDF is flat and the current's
    monotone). A million-row day costs one sort, not a search of every value in both samples."""
    n1, n2 = reference.size, current.size
    after = np.searchsorted(current, reference, side="right")  # first current value above each reference one
    before = np.searchsorted(current, reference, side="left") - 1  # last current value below it
    points = np.concatenate([reference, current[after[after < n2]], current[before[before >= 0]],
                             current[[0, n2 - 1]]])
    differences = (np.searchsorted(reference, points, side="right") / n1
                   - np.searchsorted(current, points, side="right") / n2)
    return float(max(differences.max(), np.clip(-differences.min(), 0, 1)))


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """(statistic, two-sided p-value) of the KS test of two *sorted*, non-empty samples: the values of
    ``scipy.stats.ks_2samp`` (its exact p-value on small samples, Smirnov's asymptotic one above
    ``KS_EXACT_MAX_N``), without its search of every value of both samples."""
    from scipy import stats

    if max(reference.size, current.size) <= KS_EXACT_MAX_N:
        result = stats.ks_2samp(reference, current)
        return float(result.statistic), float(result.pvalue)
    statistic = ks_statistic(reference, current)
    m, n = sorted([float(reference.size), float(current.size)], reverse=True)
    return statistic, kstwo_sf(statistic, float(np.round(m * n / (m + n))))


def kstwo_sf(statistic: float, n: float) -> float:
    """``scipy.stats.kstwo.sf(statistic, n)`` clipped to [0, 1], by the distribution's own kernel (``_sf``,
    the hook scipy's distributions are built on) inside its support ``(0.5 / n, 1)``: the same number,
    without the argument checks and broadcasting that made up most of each call."""
    from scipy.stats import kstwo

    if statistic <= 0.5 / n:
        return 1.0
    if statistic >= 1.0:
        return 0.0
    return float(np.clip(kstwo._sf(statistic, n), 0.0, 1.0))


def binomial_pvalue(k: int, n: int, p: float) -> float:
    """``scipy.stats.binomtest(k, n, p).pvalue`` (two-sided), the same algorithm on the binomial's own
    kernels (``binom._pmf/_cdf/_sf``, each clipped to [0, 1] as scipy does): its ~20 pmf evaluations per
    test went through the distribution machinery, a quarter of a drift report's time on 30 features."""
    from scipy.stats import binom

    if not 0 <= k <= n or n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"binomial_pvalue needs 0 <= k <= n, n >= 1 and p in [0, 1]; got k={k}, n={n}, p={p}")

    def pmf(x: float) -> float:
        return min(max(float(binom._pmf(x, n, p)), 0.0), 1.0)

    def cdf(x: float) -> float:
        return 1.0 if x >= n else 0.0 if x < 0 else min(max(float(binom._cdf(x, n, p)), 0.0), 1.0)

    def sf(x: float) -> float:
        return 0.0 if x >= n else 1.0 if x < 0 else min(max(float(binom._sf(x, n, p)), 0.0), 1.0)

    def search(a: Callable[[float], float], d: float, lo: float, hi: float) -> float:
        # scipy's _binary_search_for_binom_tst: the i in [lo, hi] with a(i) <= d < a(i + 1)
        while lo < hi:
            mid = lo + (hi - lo) // 2
            value = a(mid)
            if value < d:
                lo = mid + 1
            elif value > d:
                hi = mid - 1
            else:
                return mid
        return lo if a(lo) <= d else lo - 1

    d = pmf(k)
    rerr = 1 + 1e-7
    if k == p * n:
        return 1.0
    if k < p * n:
        ix = search(lambda x: -pmf(x), -d * rerr, np.ceil(p * n), n)
        y = n - ix + int(d * rerr == pmf(ix))
        return min(1.0, cdf(k) + sf(n - y))
    ix = search(pmf, d * rerr, 0, np.floor(p * n))
    return min(1.0, cdf(ix) + sf(k - 1))


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
    current = numeric_values(_as_series(values))
    n = int(current.size)
    finite = current[np.isfinite(current)]
    edges = [float(e) for e in profile_entry.get("edges") or []]
    reference = [float(f) for f in profile_entry.get("fractions") or []]
    sample = np.asarray(profile_entry.get("sample") or [], dtype="float64")
    ref_missing = float(profile_entry.get("missing_rate") or 0.0)
    ref_mean, ref_std = profile_entry.get("mean"), profile_entry.get("std")

    # Mean and std on the row order (the same sums as before), then the day sorted in place: a boolean
    # mask's result is always a fresh array, and a copy of a 100k-value column costs as much as its PSI.
    mean = finite_or_none(finite.mean()) if finite.size else None
    std = finite_or_none(finite.std()) if finite.size else None
    finite.sort()
    ordered = finite
    fractions = bin_fractions(ordered, edges, presorted=True)
    if len(reference) != len(fractions):
        raise ValueError(f"profile has {len(reference)} bin fractions for {len(edges)} edges")
    value_psi = psi(reference, fractions) if finite.size and sum(reference) > 0 else None
    ks_stat = ks_pvalue = None
    if finite.size and sample.size:
        ks_stat, ks_pvalue = ks_test(np.sort(sample), ordered)
    missing = float(1.0 - finite.size / n) if n else None
    shift = None
    if mean is not None and ref_mean is not None and ref_std:
        shift = (mean - float(ref_mean)) / float(ref_std)
    return {
        "type": FeatureType.NUMERIC.value,
        "rows": n,
        "non_missing": int(finite.size),
        "psi": value_psi,
        "ks_statistic": ks_stat,
        "ks_pvalue": ks_pvalue,
        "missing_rate": missing,
        "missing_pvalue": _missing_pvalue(n - finite.size, n, ref_missing),
        "reference_missing_rate": ref_missing,
        "missing_delta": None if missing is None else missing - ref_missing,
        "mean": mean,
        "std": std,
        "reference_mean": ref_mean,
        "reference_std": ref_std,
        "mean_shift_std": shift,
        # Constant in the reference (std 0): any spread now is a change PSI cannot see (one bin holds all).
        "was_constant": ref_std is not None and float(ref_std) == 0.0 and profile_entry.get("min") is not None,
        "bins": {"labels": bin_labels(edges), "reference": reference, "current": fractions},
    }


def _missing_pvalue(missing: int, rows: int, reference_rate: float) -> float | None:
    """Binomial test of the day's missing count against the reference rate (two-sided)."""
    if not rows:
        return None
    return binomial_pvalue(int(missing), int(rows), min(max(reference_rate, 1e-6), 1 - 1e-6))


def categorical_drift(profile_entry: Mapping[str, Any], values: Any) -> dict[str, Any]:
    """Compare current categorical/boolean ``values`` with a profile entry (no verdict; see drift_report).

    PSI over category shares of non-missing values. Categories absent from the reference are unseen: they
    form their own ``__unseen__`` bucket (reference share 0, so they weigh heavily), or fall into the
    reference's ``__other__`` tail bucket when it has one. Their share and the most frequent are reported.
    """
    series = _as_series(values)
    n = len(series)
    frequencies = {str(k): float(v) for k, v in (profile_entry.get("frequencies") or {}).items()}
    known = [k for k in frequencies if k != OTHER]
    # Counted on the raw values, then labelled: str() per distinct value, not per row.
    raw = series.value_counts(dropna=True)
    raw = raw[raw.to_numpy() > 0]  # a Categorical lists its unused categories too
    labels_of = category_labels(pd.Series(raw.index.astype("object"), dtype="object"))
    counts = pd.Series(raw.to_numpy(), index=pd.Index(labels_of.to_numpy(dtype=object), dtype="object"))
    counts = counts.groupby(level=0, sort=True).sum()
    total = int(counts.sum())
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
    chi2_pvalue = None
    if total and len(labels) >= 2:
        from scipy import stats

        # Reference shares smoothed so a category the reference never saw has a (tiny) expectation.
        expected = np.asarray(reference, dtype="float64") + 1e-3
        observed = np.asarray(current, dtype="float64") * total
        chi2_pvalue = float(stats.chisquare(observed, expected / expected.sum() * observed.sum()).pvalue)
    return {
        "type": str(profile_entry.get("type") or FeatureType.CATEGORICAL.value),
        "rows": int(n),
        "non_missing": int(total),
        "psi": psi(reference, current) if total and labels else None,
        "chi2_pvalue": chi2_pvalue,
        "missing_rate": missing,
        "missing_pvalue": _missing_pvalue(series.isna().sum(), n, ref_missing),
        "reference_missing_rate": ref_missing,
        "missing_delta": None if missing is None else missing - ref_missing,
        "unseen_count": unseen_count,
        "unseen_share": unseen_count / total if total else 0.0,
        "unseen_categories": {str(k): int(v) / total for k, v in top.items()},
        "bins": {"labels": labels, "reference": [float(v) for v in reference], "current": [float(v) for v in current]},
    }


def _failed_checks(result: Mapping[str, Any], cfg: Any) -> list[str]:
    """Which drift rules a feature result trips (empty: not drifted).

    A change counts when it is both material (its size: PSI, KS statistic, missing-rate delta) and
    significant for the day's sample (KS or chi-square test, binomial test of the missing count, at
    ``ks_pvalue``): on a day of 49 rows PSI alone is mostly sampling noise, and on a day of a million rows
    a test alone flags changes too small to matter."""
    checks: list[str] = []
    value_psi, ks_pvalue, delta = result.get("psi"), result.get("ks_pvalue"), result.get("missing_delta")
    shape_pvalue = ks_pvalue if ks_pvalue is not None else result.get("chi2_pvalue")
    significant = shape_pvalue is None or shape_pvalue < cfg.ks_pvalue
    # Beyond what the reference's own days showed: an ordinary day is no drift however it tests.
    spread = result.get("reference_daily") or {}
    beyond_psi = value_psi is not None and value_psi > (spread.get("psi_max") or 0.0)
    ks_stat = result.get("ks_statistic")
    beyond_ks = ks_stat is not None and ks_stat > (spread.get("ks_statistic_max") or 0.0)
    if value_psi is not None and value_psi >= cfg.psi_threshold and significant and beyond_psi:
        checks.append("psi")
    material = (value_psi is not None and value_psi >= cfg.psi_threshold / 2 and beyond_psi) or (
        ks_stat is not None and ks_stat >= cfg.ks_statistic)
    if ks_pvalue is not None and ks_pvalue < cfg.ks_pvalue and material and beyond_ks:
        checks.append("ks")
    missing_pvalue = result.get("missing_pvalue")
    if delta is not None and abs(delta) >= cfg.missing_rate_delta and (
            missing_pvalue is None or missing_pvalue < cfg.ks_pvalue):
        checks.append("missing_rate")
    if result.get("was_constant") and result.get("std"):
        checks.append("was_constant")
    return checks


def _known_values(entry: Mapping[str, Any], values: pd.Series, numeric: bool) -> tuple[bool, list[Any]]:
    """For a calendar-like feature: whether today's values are ones the reference holds (numeric: inside
    its range), and the values that are not."""
    present = values.dropna().drop_duplicates()  # a calendar feature has a handful of distinct values
    if numeric:
        lo, hi = entry.get("min"), entry.get("max")
        numbers = numeric_values(present)
        outside = sorted({float(v) for v in numbers if lo is None or hi is None or v < lo or v > hi})
        return not outside, outside[:MAX_LISTED_UNSEEN]
    known = {str(k) for k in (entry.get("frequencies") or {}) if k != OTHER}
    unseen = sorted({str(v) for v in category_labels(present).dropna() if str(v) not in known})
    return not unseen or OTHER in (entry.get("frequencies") or {}), unseen[:MAX_LISTED_UNSEEN]


def _performance(spec: PipelineSpec, labels: Any, scores: np.ndarray | None, champion_metric: Any,
                 rows: int, daily: list[float] | None = None) -> dict[str, Any]:
    """The day's metrics on labelled rows vs the champion's holdout: the relative drop from the worst of its
    holdout days (``daily``; the pooled holdout metric when the profile has no daily values)."""
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
    champion = None if champion is None else finite_or_none(champion)
    out.update(metrics=metrics, current=current, champion=champion)
    if current is None or not math.isfinite(current):
        return {**out, "status": f"{metric} is undefined on this day's labels"}
    if champion is None:
        return {**out, "status": "no champion metric to compare with"}
    finite_days = [float(v) for v in daily or [] if v is not None and math.isfinite(float(v))]
    worst = (min if higher_is_better(metric) else max)(finite_days) if finite_days else champion
    out["worst_holdout_day"] = worst if finite_days else None
    out["holdout_days"] = finite_days
    drop = -relative_improvement(metric, current, worst)
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
    ds: dt.date,
    attributions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare one day's feature rows (and the champion's scores/labels if given) with the reference profile.

    ``champion_metric`` is the champion's holdout primary metric (a number, or its metrics mapping).
    ``attributions``: the champion's SHAP summary on the day (:mod:`evergreen.explain`), judged against the
    profile's (``attribution``: reported; in the verdict with ``drift.attribution_drift_in_verdict``).
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
        "ds": ds.isoformat(),
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
        "attribution": None,
    }
    if rows == 0:
        report["reasons"] = ["no rows"]
        return json_safe(report)

    frame = add_time_features(frame, spec, overwrite=False)
    reference = profile.get("features") or {}
    for name, kind in spec.model_features.items():
        if name not in reference:
            raise KeyError(f"reference profile lacks feature {name!r}: was the champion trained on another spec?")
        if name not in frame.columns:
            raise KeyError(f"frame lacks model feature {name!r}")
        if (reference[name].get("type") == FeatureType.NUMERIC.value) != (kind == FeatureType.NUMERIC):
            raise ValueError(f"feature {name!r} is {kind.value} in the spec but {reference[name].get('type')} in "
                             "the profile")

    def judge(name: str) -> dict[str, Any]:
        entry, values = reference[name], frame[name]
        numeric = spec.model_features[name] == FeatureType.NUMERIC
        result = numeric_drift(entry, values) if numeric else categorical_drift(entry, values)
        calendar = bool(entry.get("day_constant")) or name in cfg.calendar_features or (
            spec.etl.time_features and name in CALENDAR_FEATURES)
        if calendar:
            known, unseen = _known_values(entry, values, numeric)
            checks = [] if known else ["unseen_value"]
            result.update(monitored=not known, calendar_like=True, unseen_values=unseen)
            result["note"] = ("calendar-like (one value per day): today's value is one the reference knows, "
                              "so it is not judged" if known else "calendar-like: a value the reference never held")
        else:
            result["reference_daily"] = entry.get("daily_spread")
            checks = _failed_checks(result, cfg)
            result.update(monitored=True, calendar_like=False)
        result.update(key=name in cfg.key_features, drifted=bool(checks), checks=checks)
        return result

    # Features are independent and their numpy work (sorts, searches) releases the GIL: judged on a few
    # threads, collected in the spec's order, so the report is the same whatever the thread count.
    names = list(spec.model_features)
    with ThreadPoolExecutor(max_workers=max(1, min(DRIFT_THREADS, len(names)))) as pool:
        results: dict[str, dict[str, Any]] = dict(zip(names, pool.map(judge, names), strict=True))

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
        performance = _performance(spec, labels, score_values, champion_metric, rows,
                                   daily=(profile.get("holdout_daily") or {}).get("values"))
        if performance["dropped"]:
            reasons.append(
                f"{performance['metric']} {performance['current']:.4f} is {performance['relative_drop']:.1%} worse "
                f"than the champion's holdout {performance['champion']:.4f} "
                f"(max_performance_drop {cfg.max_performance_drop:.1%})"
            )
        report["performance"] = performance

    if attributions is not None:
        from evergreen.explain import attribution_drift

        attribution = attribution_drift(profile.get("attributions"), attributions,
                                        threshold=cfg.attribution_shift_threshold)
        if attribution["drifted"] and cfg.attribution_drift_in_verdict:
            movers = ", ".join(f"{n} {f['delta']:+.0%}" for n, f in list(attribution["features"].items())[:3])
            reasons.append(f"attribution shift {attribution['shift']:.3f} > attribution_shift_threshold "
                           f"{cfg.attribution_shift_threshold} ({movers})")
        report["attribution"] = attribution

    trained_through = profile.get("trained_through")
    judged = trained_through is None or ds > dt.date.fromisoformat(str(trained_through))
    report.update(
        features=results,
        drifted_features=drifted,
        monitored_features=len(monitored_names),
        drifted_share=share,
        reasons=reasons if judged else [],
        drift_detected=bool(reasons) and judged,
        judged=judged,
    )
    if not judged:
        report["not_judged"] = (f"{ds} is inside the champion's training window (through {trained_through}): "
                                f"reported, not judged; would have said: {'; '.join(reasons) or 'no drift'}")
    return json_safe(report)
