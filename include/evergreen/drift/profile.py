"""The reference profile a model is trained with: what the drift monitor compares live data against.

The profile is plain JSON stored with each challenger run (``reference_profile.json``), so the monitor
compares live data with exactly the data the serving model learned from, without re-reading partitions.
Binning helpers are public so the monitor bins live data with the same rules.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd

from evergreen.spec import FeatureType, PipelineSpec

PROFILE_VERSION = 1
MISSING = "__missing__"
OTHER = "__other__"
MAX_CATEGORIES = 100  # keeps the profile small for high-cardinality columns


def finite_or_none(value: Any) -> float | None:
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


def bin_fractions(values: np.ndarray, edges: list[float], *, presorted: bool = False) -> list[float]:
    """Share of the non-missing ``values`` in each bin of ``edges`` (one bin when edges has < 2 items).
    ``presorted``: ``values`` are finite and sorted, so each bin's count is two binary searches away."""
    n_bins = max(len(edges) - 1, 1)
    finite = values if presorted else values[np.isfinite(values)]
    if finite.size == 0:
        return [0.0] * n_bins
    if presorted:  # values <= each interior edge, as bin_indices places them
        upto = np.searchsorted(finite, np.asarray(edges[1:-1], dtype="float64"), side="right")
        counts = np.diff(np.concatenate([[0], upto, [finite.size]]))
    else:
        counts = np.bincount(bin_indices(finite, edges), minlength=n_bins)
    return [float(c) / finite.size for c in counts]


def category_labels(values: pd.Series) -> pd.Series:
    """Categories as strings, missing as NaN; booleans become 'True'/'False'."""
    if values.dtype == "str":  # text already (what the feature ETL writes): nothing to convert
        return values
    # str() once per distinct value, not per row (a day has millions of rows and a few categories).
    codes, uniques = pd.factorize(values.astype("object"), use_na_sentinel=True)
    names = np.array([str(v) for v in uniques] + [None], dtype=object)
    return pd.Series(names[codes], index=values.index, dtype="str")


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
        "mean": finite_or_none(finite.mean()) if finite.size else None,
        "std": finite_or_none(finite.std()) if finite.size else None,
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


def local_day_codes(frame: pd.DataFrame, spec: PipelineSpec) -> tuple[np.ndarray, list[dt.date]] | None:
    """Each row's local calendar day as a code into the sorted list of days (-1: no timestamp), or None
    without timestamps. Grouped on the local midnights (integers), not on a date object per row."""
    if spec.timestamp_column not in frame.columns or frame.empty:
        return None
    stamps = pd.to_datetime(frame[spec.timestamp_column], utc=True).dt.tz_convert(spec.schedule.timezone)
    codes, midnights = pd.factorize(stamps.dt.normalize(), sort=True)
    return codes.astype(np.int64, copy=False), [midnight.date() for midnight in midnights]


class _Days:
    """The rows of a frame grouped by local day once, for every feature's daily checks (numpy slices
    instead of a pandas group-by per feature). Rows without a day (no timestamp) belong to none, as in a
    group-by."""

    def __init__(self, codes: np.ndarray, count: int) -> None:
        """``codes``: each row's day as 0 .. ``count`` - 1, or -1 (:func:`local_day_codes`)."""
        self.codes = codes.astype(np.int64, copy=False)
        self.valid = self.codes >= 0
        self.count = count
        valid_rows = np.flatnonzero(self.valid)
        self.order = valid_rows[np.argsort(self.codes[valid_rows], kind="stable")]  # rows grouped by day
        self.rows = np.bincount(self.codes[valid_rows], minlength=self.count)
        self.bounds = np.concatenate([[0], np.cumsum(self.rows)])

    def slices(self, values: np.ndarray, min_rows: int) -> Any:
        """Each day's values (days of at least ``min_rows`` rows), in row order."""
        grouped = values[self.order]
        for d in np.flatnonzero(self.rows >= min_rows):
            yield grouped[self.bounds[d]:self.bounds[d + 1]]

    def first_day_rows(self) -> np.ndarray:
        """Row positions of the first day that has rows."""
        d = int(np.flatnonzero(self.rows)[0]) if self.rows.any() else 0
        return self.order[self.bounds[d]:self.bounds[d + 1]]

    def distinct_per_day(self, codes: np.ndarray, n_values: int) -> np.ndarray:
        """How many of the integer ``codes`` (0 .. n_values-1; negative: missing) each day holds."""
        keep = self.valid & (codes >= 0)
        # Distinct (day, value) pairs, not a days x values table: a continuous feature over a year of days
        # would need hundreds of MB for the table.
        pairs = np.unique(self.codes[keep] * n_values + codes[keep])
        return np.bincount(pairs // n_values, minlength=self.count)


def _day_constant(frame: pd.DataFrame, name: str, spec: PipelineSpec, days: _Days | None) -> bool:
    """Whether the feature holds one value within every day of ``frame`` yet more than one across days
    (day of week, month, season, a holiday flag): calendar-like, so one day can never match the whole
    reference. Declared ones (``drift.calendar_features``) count without looking."""
    if name in spec.drift.calendar_features:
        return True
    if days is None:
        return False
    # Most features are continuous: two values on the first day settle it without a pass over every day.
    if pd.Series(frame[name].to_numpy()[days.first_day_rows()]).nunique(dropna=True) > 1:
        return False
    codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
    if len(uniques) < 2:
        return False
    return bool(days.count >= 2 and (days.distinct_per_day(codes, len(uniques)) <= 1).all())


MIN_SPREAD_DAY_ROWS = 20  # days with fewer rows in the reference frame say little about daily spread


def _daily_spread(frame: pd.DataFrame, name: str, kind: FeatureType, entry: dict[str, Any],
                  days: _Days | None) -> dict[str, Any] | None:
    """How far the reference's own days stray from the whole reference (largest PSI and KS statistic of a
    single day): neighbouring rows of one day are alike (one weather system, one campaign), so a live day
    is judged against this spread, not against the pooled distribution alone. Statistics only, no
    p-values (a test per day and feature would cost more than the fit on small data). Each day's PSI is
    the one :func:`evergreen.drift.statistics.numeric_drift` / ``categorical_drift`` would give it."""
    if days is None:
        return None
    from evergreen.drift.statistics import ks_statistic, psi

    psis, ks = [], []
    if kind == FeatureType.NUMERIC:
        edges = [float(e) for e in entry.get("edges") or []]
        reference = [float(f) for f in entry.get("fractions") or []]
        sample = np.sort(np.asarray(entry.get("sample") or [], dtype="float64"))
        for values in days.slices(numeric_values(frame[name]), MIN_SPREAD_DAY_ROWS):
            finite = np.sort(values[np.isfinite(values)])
            if not finite.size or sum(reference) <= 0:
                continue
            psis.append(psi(reference, bin_fractions(finite, edges, presorted=True)))
            if sample.size:
                ks.append(ks_statistic(sample, finite))
    else:
        frequencies = {str(k): float(v) for k, v in (entry.get("frequencies") or {}).items()}
        known = [k for k in frequencies if k != OTHER]
        labels = category_labels(frame[name])
        # Codes 0..len(known)-1 for the reference's categories, len(known) for unseen ones, -1 for missing.
        codes = pd.Categorical(labels, categories=known).codes.astype(np.int64)
        codes[(codes < 0) & labels.notna().to_numpy()] = len(known)
        reference = [frequencies[k] for k in known] + ([frequencies[OTHER]] if OTHER in frequencies else [])
        for day_codes in days.slices(codes, MIN_SPREAD_DAY_ROWS):
            counts = np.bincount(day_codes[day_codes >= 0], minlength=len(known) + 1)
            total = int(counts.sum())
            if not total:
                continue
            current = [float(c) / total for c in counts[:len(known)]]
            unseen = int(counts[len(known)])
            if OTHER in frequencies:  # unseen values fall into the reference's tail bucket
                psis.append(psi(reference, [*current, unseen / total]))
            elif unseen:  # their own bucket, which the reference never filled
                psis.append(psi([*reference, 0.0], [*current, unseen / total]))
            elif known:
                psis.append(psi(reference, current))
    if len(psis) < 2:
        return None
    return {"days": len(psis), "psi_max": max(psis), "ks_statistic_max": max(ks) if ks else None}


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
    coded = local_day_codes(frame, spec)
    days = _Days(coded[0], len(coded[1])) if coded is not None else None
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
        features[name]["day_constant"] = _day_constant(frame, name, spec, days)
        features[name]["daily_spread"] = _daily_spread(frame, name, kind, features[name], days)
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
