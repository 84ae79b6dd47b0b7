"""Drift monitor: PSI/KS/missing-rate per feature, prediction and performance drift, verdict, HTML, storage."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from evergreen import tracking
from evergreen.drift.html import render_report_html
from evergreen.drift.profile import OTHER, build_reference_profile, category_frequencies
from evergreen.drift.statistics import (
    UNSEEN,
    binomial_pvalue,
    categorical_drift,
    drift_report,
    ks_statistic,
    ks_test,
    kstwo_sf,
    numeric_drift,
    psi,
)
from evergreen.errors import NoChampionError
from evergreen.monitoring import load_champion_reference, read_drift_report, write_drift_report
from evergreen.spec import PipelineSpec, get_spec

DS = dt.date(2026, 10, 21)  # a Wednesday

# name -> (mean, std) of the synthetic numeric features
NUMERIC = {
    "amount": (100.0, 30.0),
    "account_age_days": (1000.0, 300.0),
    "txn_count_24h": (5.0, 2.0),
    "avg_amount_30d": (80.0, 20.0),
    "distance_from_home_km": (50.0, 15.0),
    "device_risk_score": (0.3, 0.1),
    "failed_logins_7d": (1.0, 0.5),
}
CATEGORIES = {
    "merchant_category": ["grocery", "electronics", "travel", "fashion", "gaming", "restaurants", "fuel",
                          "digital_goods"],
    "channel": ["web", "app", "pos"],
    "country": ["US", "GB", "DE", "FR", "ES", "BR", "IN", "NG", "MX", "CA"],
}
BOOLEAN_P = {"card_present": 0.4, "is_international": 0.1}


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return get_spec("fraud")


def make_frame(
    spec: PipelineSpec,
    n: int,
    seed: int,
    *,
    shift: dict[str, float] | None = None,
    missing: dict[str, float] | None = None,
    probs: dict[str, list[float]] | None = None,
    day_of_week: int | None = None,
) -> pd.DataFrame:
    """A feature-table frame with the spec's model features, typed as the ETL stores them.

    ``shift`` moves a numeric feature's mean by that many standard deviations; ``missing`` sets a missing
    rate; ``probs`` replaces a categorical's category probabilities; ``day_of_week`` pins the calendar
    features to one day (as in a daily partition), otherwise they cover the whole week.
    """
    rng = np.random.default_rng(seed)
    shift, missing, probs = shift or {}, missing or {}, probs or {}
    cols: dict[str, Any] = {}
    for name, (mean, std) in NUMERIC.items():
        cols[name] = (mean + std * (rng.standard_normal(n) + shift.get(name, 0.0))).astype("float64")
    for name, cats in CATEGORIES.items():
        p = probs.get(name) or list(np.linspace(2.0, 1.0, len(cats)) / np.linspace(2.0, 1.0, len(cats)).sum())
        cols[name] = pd.Series(np.asarray(cats, dtype=object)[rng.choice(len(cats), size=n, p=p)], dtype="str")
    for name, p in BOOLEAN_P.items():
        cols[name] = pd.Series(rng.random(n) < p, dtype="boolean")
    cols["event_hour"] = rng.integers(0, 24, n).astype("float64")
    dow = np.full(n, day_of_week) if day_of_week is not None else rng.integers(0, 7, n)
    cols["event_day_of_week"] = dow.astype("float64")
    cols["is_weekend"] = pd.Series(dow >= 5, dtype="boolean")
    frame = pd.DataFrame(cols)
    for name, rate in missing.items():
        mask = rng.random(n) < rate
        frame.loc[mask, name] = None
    assert list(spec.model_features) == [c for c in spec.model_features if c in frame.columns]
    return frame[list(spec.model_features)]


@pytest.fixture(scope="module")
def reference(spec: PipelineSpec) -> tuple[pd.DataFrame, dict[str, Any]]:
    frame = make_frame(spec, 5000, seed=1, missing={"device_risk_score": 0.03, "avg_amount_30d": 0.05})
    scores = np.random.default_rng(2).beta(2.0, 8.0, len(frame))
    return frame, build_reference_profile(frame, spec, scores=scores, seed=0)


def report_for(spec: PipelineSpec, profile: dict[str, Any], frame: pd.DataFrame, **kwargs: Any) -> dict[str, Any]:
    return drift_report(spec, profile, frame, champion_version="3", ds=DS, **kwargs)


# ------------------------------------------------------------------------------------------------ PSI


def test_psi_of_identical_fractions_is_zero() -> None:
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(0.0, abs=1e-12)
    assert psi([0.0, 1.0], [0.0, 1.0]) == pytest.approx(0.0, abs=1e-12)


def test_psi_known_value() -> None:
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5) = 0.4 ln 1.8 + 0.4 ln 5
    expected = 0.4 * math.log(1.8) + 0.4 * math.log(5.0)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.87889, abs=1e-5)
    # symmetric in its arguments
    assert psi([0.9, 0.1], [0.5, 0.5]) == pytest.approx(expected, rel=1e-12)


def test_psi_smooths_empty_buckets_with_eps() -> None:
    eps = 1e-4
    expected = (eps - 0.5) * math.log(eps / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    assert psi([0.5, 0.5], [0.0, 1.0], eps=eps) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(psi([0.0, 1.0], [1.0, 0.0]))


@pytest.mark.parametrize(("expected", "actual"), [([0.5, 0.5], [1.0]), ([], []), ([0.5, -0.1], [0.5, 0.5]),
                                                  ([0.5, float("nan")], [0.5, 0.5])])
def test_psi_rejects_bad_input(expected: list[float], actual: list[float]) -> None:
    with pytest.raises(ValueError):
        psi(expected, actual)


# ----------------------------------------------------------------------------------- feature checks


def test_same_distribution_is_not_drift(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    current = make_frame(spec, 3000, seed=7, missing={"device_risk_score": 0.03, "avg_amount_30d": 0.05})
    report = report_for(spec, profile, current)
    assert report["drift_detected"] is False
    assert report["reasons"] == []
    assert report["drifted_features"] == []
    assert report["drifted_share"] == 0.0
    assert report["rows"] == 3000 and report["champion_version"] == "3" and report["ds"] == DS.isoformat()
    for name, result in report["features"].items():
        assert result["psi"] < 0.05, name
        assert result["drifted"] is False, name


def test_profile_compared_with_itself_gives_zero_psi(spec: PipelineSpec,
                                                     reference: tuple[pd.DataFrame, dict]) -> None:
    frame, profile = reference
    report = report_for(spec, profile, frame)
    assert not report["drift_detected"]
    for name, result in report["features"].items():
        assert result["psi"] == pytest.approx(0.0, abs=1e-9), name
        assert abs(result["missing_delta"]) < 1e-12, name


def test_numeric_mean_shift_of_one_std_is_flagged(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    current = make_frame(spec, 3000, seed=8, shift={"txn_count_24h": 1.0})
    result = numeric_drift(profile["features"]["txn_count_24h"], current["txn_count_24h"])
    assert result["ks_pvalue"] < 1e-50
    assert result["psi"] > 0.5
    assert result["mean_shift_std"] == pytest.approx(1.0, abs=0.1)
    assert result["mean"] == pytest.approx(7.0, abs=0.2) and result["reference_mean"] == pytest.approx(5.0, abs=0.1)
    assert len(result["bins"]["labels"]) == len(result["bins"]["reference"]) == len(result["bins"]["current"])
    assert sum(result["bins"]["current"]) == pytest.approx(1.0)

    report = report_for(spec, profile, current)
    flagged = report["features"]["txn_count_24h"]
    assert flagged["drifted"] is True and set(flagged["checks"]) >= {"psi", "ks"}
    assert report["drifted_features"] == ["txn_count_24h"]
    # one non-key feature of 13 judged ones: below max_drifted_share, so no verdict
    assert report["drifted_share"] == pytest.approx(1 / 13)
    assert report["drift_detected"] is False


def test_ks_alone_does_not_flag_a_negligible_shift_on_big_samples(spec: PipelineSpec) -> None:
    reference_frame = make_frame(spec, 50_000, seed=11)
    profile = build_reference_profile(reference_frame, spec, sample_size=50_000)
    current = make_frame(spec, 50_000, seed=12, shift={"account_age_days": 0.1})
    result = report_for(spec, profile, current)["features"]["account_age_days"]
    assert result["ks_pvalue"] < spec.drift.ks_pvalue  # statistically "significant"...
    assert result["psi"] < spec.drift.psi_threshold / 2  # ...but immaterial
    assert result["drifted"] is False


def test_unseen_categories_get_their_own_bucket(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    values = pd.Series(["grocery"] * 70 + ["crypto"] * 20 + ["nft"] * 10, dtype="str")
    result = categorical_drift(profile["features"]["merchant_category"], values)
    assert result["unseen_count"] == 30
    assert result["unseen_share"] == pytest.approx(0.3)
    assert result["unseen_categories"] == {"crypto": pytest.approx(0.2), "nft": pytest.approx(0.1)}
    labels = result["bins"]["labels"]
    assert labels[-1] == UNSEEN
    assert result["bins"]["reference"][-1] == 0.0 and result["bins"]["current"][-1] == pytest.approx(0.3)
    assert sum(result["bins"]["current"]) == pytest.approx(1.0)
    assert result["psi"] > 1.0


def test_unseen_categories_fall_into_the_reference_tail_bucket() -> None:
    reference_values = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5, dtype="str")
    entry = {"type": "categorical", "missing_rate": 0.0,
             "frequencies": category_frequencies(reference_values, max_categories=2)}
    assert entry["frequencies"][OTHER] == pytest.approx(0.2)
    result = categorical_drift(entry, pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["zz"] * 10, dtype="str"))
    assert result["bins"]["labels"][-1] == OTHER
    assert result["bins"]["current"][-1] == pytest.approx(0.2)
    assert result["unseen_share"] == pytest.approx(0.2)
    assert result["psi"] == pytest.approx(0.0, abs=1e-12)


def test_missing_rate_jump_is_flagged(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    current = make_frame(spec, 3000, seed=9, missing={"device_risk_score": 0.30, "avg_amount_30d": 0.05,
                                                      "country": 0.25})
    report = report_for(spec, profile, current)
    numeric = report["features"]["device_risk_score"]
    assert numeric["missing_delta"] == pytest.approx(0.27, abs=0.03)
    assert numeric["checks"] == ["missing_rate"] and numeric["drifted"]
    categorical = report["features"]["country"]
    assert categorical["missing_rate"] == pytest.approx(0.25, abs=0.03)
    assert categorical["checks"] == ["missing_rate"] and categorical["drifted"]
    assert report["drifted_features"] == ["country", "device_risk_score"]


def test_nullable_boolean_features(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    frame, profile = reference
    assert str(frame["card_present"].dtype) == "boolean"
    entry = profile["features"]["card_present"]
    assert entry["type"] == "boolean" and set(entry["frequencies"]) == {"True", "False"}
    values = pd.Series([True] * 80 + [False] * 10 + [None] * 10, dtype="boolean")
    result = categorical_drift(entry, values)
    assert result["missing_rate"] == pytest.approx(0.1)
    assert result["unseen_count"] == 0
    assert dict(zip(result["bins"]["labels"], result["bins"]["current"], strict=True)) == {
        "False": pytest.approx(1 / 9), "True": pytest.approx(8 / 9)}
    current = make_frame(spec, 2000, seed=10, missing={"card_present": 0.5})
    flagged = report_for(spec, profile, current)["features"]["card_present"]
    assert flagged["drifted"] and "missing_rate" in flagged["checks"]


def test_calendar_features_are_reported_but_not_judged(spec: PipelineSpec,
                                                       reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    report = report_for(spec, profile, make_frame(spec, 2000, seed=13, day_of_week=DS.weekday()))
    for name in ("event_day_of_week", "is_weekend"):
        result = report["features"][name]
        assert result["psi"] > 1.0  # one day vs the whole week
        assert result["monitored"] is False and result["drifted"] is False
    assert report["features"]["event_hour"]["monitored"] is True
    assert report["monitored_features"] == 13
    assert report["drift_detected"] is False


def test_time_features_are_derived_when_absent(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    frame = make_frame(spec, 500, seed=14).drop(columns=["event_hour", "event_day_of_week", "is_weekend"])
    frame[spec.timestamp_column] = pd.Timestamp("2026-10-21T00:00:00Z") + pd.to_timedelta(
        np.arange(500) * 170, unit="s")
    report = report_for(spec, profile, frame)
    assert report["features"]["event_day_of_week"]["mean"] == pytest.approx(2.0)
    assert report["features"]["event_hour"]["rows"] == 500


# ---------------------------------------------------------------------------------------- verdict


@pytest.mark.parametrize(
    ("key_features", "shifted", "detected", "reason"),
    [
        (["amount", "merchant_category"], ["amount"], True, "key feature amount"),
        ([], ["amount"], False, None),
        (["amount"], ["txn_count_24h"], False, None),
        ([], ["txn_count_24h", "account_age_days", "distance_from_home_km"], False, None),  # 3/13 < 25%
        ([], ["txn_count_24h", "account_age_days", "distance_from_home_km", "failed_logins_7d"], True,
         "4 of 13 features drifted"),  # 4/13 > 25%
    ],
)
def test_verdict(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict], key_features: list[str],
                 shifted: list[str], detected: bool, reason: str | None) -> None:
    _, profile = reference
    custom = spec.model_copy(update={"drift": spec.drift.model_copy(update={"key_features": key_features})})
    current = make_frame(spec, 3000, seed=15, shift=dict.fromkeys(shifted, 1.5),
                         missing={"device_risk_score": 0.03, "avg_amount_30d": 0.05})
    report = report_for(custom, profile, current)
    assert sorted(report["drifted_features"]) == sorted(shifted)
    assert report["drift_detected"] is detected
    if reason is None:
        assert report["reasons"] == []
    else:
        assert len(report["reasons"]) == 1 and report["reasons"][0].startswith(reason)


def test_key_categorical_mix_shift_triggers(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    probs = [0.05, 0.35, 0.05, 0.05, 0.05, 0.05, 0.05, 0.35]
    report = report_for(spec, profile, make_frame(spec, 3000, seed=16, probs={"merchant_category": probs},
                                                  missing={"device_risk_score": 0.03, "avg_amount_30d": 0.05}))
    assert report["drifted_features"] == ["merchant_category"]
    assert report["drift_detected"] and report["reasons"][0].startswith("key feature merchant_category")


def test_prediction_drift(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    current = make_frame(spec, 3000, seed=17, missing={"device_risk_score": 0.03, "avg_amount_30d": 0.05})
    same = report_for(spec, profile, current, scores=np.random.default_rng(3).beta(2.0, 8.0, 3000))
    assert same["prediction"]["status"] == "ok" and same["prediction"]["psi"] < 0.05
    assert same["drift_detected"] is False

    shifted_scores = np.random.default_rng(3).beta(4.0, 6.0, 3000)
    shifted = report_for(spec, profile, current, scores=shifted_scores)
    assert shifted["prediction"]["psi"] > spec.drift.prediction_psi_threshold
    assert shifted["prediction"]["drifted"] is True
    assert shifted["drift_detected"] is False  # reported, but not part of the verdict by default
    judged = spec.model_copy(update={"drift": spec.drift.model_copy(update={"prediction_drift_in_verdict": True})})
    shifted = report_for(judged, profile, current, scores=shifted_scores)
    assert shifted["drift_detected"] and shifted["reasons"][0].startswith("prediction PSI")

    no_scores = dict(profile, scores=None)
    unscored = report_for(spec, no_scores, current, scores=np.zeros(3000))
    assert unscored["prediction"]["drifted"] is False and "no scores" in unscored["prediction"]["status"]

    with pytest.raises(ValueError, match="scores have"):
        report_for(spec, profile, current, scores=np.zeros(10))


def test_performance_drop_is_detected(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    current = make_frame(spec, 3000, seed=18, missing={"device_risk_score": 0.03, "avg_amount_30d": 0.05})
    rng = np.random.default_rng(4)
    labels = (rng.random(3000) < 0.2).astype(int)
    good = np.clip(0.15 + 0.5 * labels + rng.normal(0, 0.15, 3000), 0, 1)
    useless = rng.beta(2.0, 8.0, 3000)

    fine = report_for(spec, profile, current, scores=good, labels=labels, champion_metric={"roc_auc": 0.95})
    assert fine["performance"]["status"] == "ok" and not fine["performance"]["dropped"]
    assert fine["performance"]["current"] > 0.95 and fine["performance"]["labeled_rows"] == 3000

    bad = report_for(spec, profile, current, scores=useless, labels=labels, champion_metric=0.95)
    perf = bad["performance"]
    assert perf["metric"] == "roc_auc" and perf["dropped"] is True
    assert perf["relative_drop"] == pytest.approx((0.95 - perf["current"]) / 0.95)
    assert bad["drift_detected"] and any(r.startswith("roc_auc") for r in bad["reasons"])

    # unknown labels (NaN) are ignored; none known -> no verdict
    partial = pd.Series(labels, dtype="Float64")
    partial[:1000] = None
    assert report_for(spec, profile, current, scores=good, labels=partial,
                      champion_metric=0.95)["performance"]["labeled_rows"] == 2000
    unknown = report_for(spec, profile, current, scores=good, labels=np.full(3000, np.nan), champion_metric=0.95)
    assert unknown["performance"]["status"] == "no labelled rows" and not unknown["performance"]["dropped"]
    no_champion = report_for(spec, profile, current, scores=useless, labels=labels)
    assert no_champion["performance"]["dropped"] is False and no_champion["performance"]["current"] is not None


def test_performance_drop_is_direction_aware_for_regression() -> None:
    from evergreen.etl.ingest import build_features
    from evergreen.simulate import generate_day

    eta = get_spec("delivery_eta")
    assert eta.primary_metric == "rmse"
    ref = build_features(eta, generate_day(eta, DS, rows=800))
    cur = build_features(eta, generate_day(eta, DS + dt.timedelta(days=1), rows=800))
    profile = build_reference_profile(ref, eta)
    y = cur[eta.target.name].to_numpy(dtype=float)
    noise = np.random.default_rng(5).normal(0, 1, len(y))

    def perf(scale: float) -> dict[str, Any]:
        report = drift_report(eta, profile, cur, champion_version=1, scores=y + scale * noise, labels=y,
                              champion_metric={"rmse": 5.0, "mae": 4.0}, ds=DS + dt.timedelta(days=1))
        return report["performance"]

    assert perf(4.0)["dropped"] is False  # rmse ~4 < 5: better than the champion
    worse = perf(10.0)
    assert worse["dropped"] is True and worse["higher_is_better"] is False
    assert worse["relative_drop"] == pytest.approx((worse["current"] - 5.0) / 5.0)


# ---------------------------------------------------------------------------------- edge behaviour


@pytest.mark.parametrize("empty", ["no_rows", "no_columns"])
def test_empty_partition(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict], empty: str,
                         storage_root: Path) -> None:
    frame, profile = reference
    current = frame.iloc[:0] if empty == "no_rows" else pd.DataFrame()
    report = report_for(spec, profile, current, scores=np.array([]), labels=np.array([]))
    assert report["rows"] == 0
    assert report["drift_detected"] is False
    assert report["reasons"] == ["no rows"]
    assert report["features"] == {}
    json.dumps(report, allow_nan=False)
    assert "No rows to check" in render_report_html(report)
    assert write_drift_report(spec, DS, report)["drift_detected"] is False


def test_report_is_json_safe_and_deterministic(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    current = make_frame(spec, 2000, seed=19, shift={"amount": 1.0}, missing={"device_risk_score": 1.0})
    kwargs = {"scores": np.linspace(0, 1, 2000), "labels": np.arange(2000) % 2, "champion_metric": 0.9}
    first = json.dumps(report_for(spec, profile, current, **kwargs), sort_keys=True, allow_nan=False)
    second = json.dumps(report_for(spec, profile, current.copy(), **kwargs), sort_keys=True, allow_nan=False)
    assert first == second
    report = json.loads(first)
    all_missing = report["features"]["device_risk_score"]
    assert all_missing["psi"] is None and all_missing["ks_pvalue"] is None and all_missing["drifted"]
    assert render_report_html(report) == render_report_html(json.loads(second))


def test_mismatched_profile_is_rejected(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    frame, profile = reference
    with pytest.raises(ValueError, match="not 'fraud'"):
        report_for(spec, dict(profile, spec="delivery_eta"), frame)
    lacking = dict(profile, features={k: v for k, v in profile["features"].items() if k != "amount"})
    with pytest.raises(KeyError, match="amount"):
        report_for(spec, lacking, frame)


# ------------------------------------------------------------------------------------------- HTML


def test_html_names_features_and_escapes_values(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    current = make_frame(spec, 1000, seed=20, shift={"amount": 1.0})
    current["merchant_category"] = current["merchant_category"].where(
        np.arange(1000) % 4 != 0, "<script>alert('x')</script>")
    report = report_for(spec, profile, current, scores=np.random.default_rng(6).beta(2, 8, 1000))
    assert report["features"]["merchant_category"]["unseen_categories"]
    page = render_report_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for name in spec.model_features:
        assert name in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Drift detected" in page and 'class="banner alert"' in page
    assert page.count("<svg") == len(spec.model_features) + 1  # one chart per feature + prediction
    assert page.count('<tr class="drifted">') == len(report["drifted_features"])
    # every SVG is well-formed XML (escaping did not break the markup)
    import xml.etree.ElementTree as ET

    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        ET.fromstring(svg)


def test_html_for_a_clean_day(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    page = render_report_html(report_for(spec, profile, make_frame(spec, 1000, seed=21)))
    assert "No drift detected" in page and 'class="banner ok"' in page


# ---------------------------------------------------------------------------------------- storage


def test_write_drift_report(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict], storage_root: Path) -> None:
    _, profile = reference
    report = report_for(spec, profile, make_frame(spec, 1000, seed=22, shift={"amount": 1.5}))
    ref = write_drift_report(spec, DS, report)
    folder = storage_root / "reports" / "drift" / "fraud" / f"ds={DS.isoformat()}"
    stored = json.loads((folder / "report.json").read_text())
    assert stored["drift_detected"] is True and stored["reasons"] == report["reasons"]
    assert stored == report
    assert "amount" in (folder / "report.html").read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json"]  # no temp files left
    assert ref["drift_detected"] is True and ref["ds"] == DS.isoformat() and ref["spec"] == "fraud"
    assert ref["key"] == f"reports/drift/fraud/ds={DS.isoformat()}/report.json"
    assert ref["path"].endswith(ref["key"]) and ref["html_path"].endswith("report.html")
    json.dumps(ref)
    assert read_drift_report(spec, DS) == stored
    assert read_drift_report(spec, DS + dt.timedelta(days=1)) is None
    # rewriting the same report gives the same bytes
    assert write_drift_report(spec, DS, report)["sha256"] == ref["sha256"]
    with pytest.raises(ValueError):
        write_drift_report(spec, DS + dt.timedelta(days=1), report)


# ------------------------------------------------------------------------------ simulated scenario


def test_simulated_covariate_drift_is_detected_without_false_alarms(spec: PipelineSpec) -> None:
    from evergreen.etl.ingest import build_features
    from evergreen.simulate import generate_day

    start = spec.schedule.start_date
    drift_start = start + dt.timedelta(days=24)

    def day(offset: int, rows: int | None = None) -> pd.DataFrame:
        raw = generate_day(spec, start + dt.timedelta(days=offset), drift="covariate", drift_start=drift_start,
                           rows=rows)
        return build_features(spec, raw)

    train = pd.concat([day(i, rows=800) for i in range(14)], ignore_index=True)
    profile = build_reference_profile(train, spec, seed=spec.model.seed)

    normal = [drift_report(spec, profile, day(i), champion_version=1, ds=start + dt.timedelta(days=i))
              for i in range(14, 24)]
    assert [r["drift_detected"] for r in normal] == [False] * 10, [r["reasons"] for r in normal]
    assert all(r["drifted_features"] == [] for r in normal)

    for i in (24, 26):
        report = drift_report(spec, profile, day(i), champion_version=1, ds=start + dt.timedelta(days=i))
        assert report["drift_detected"], i
        assert {"amount", "merchant_category"} <= set(report["drifted_features"])
        assert any(r.startswith("key feature merchant_category") for r in report["reasons"])


# ---------------------------------------------------------------------------------------- MLflow


def test_load_champion_reference(spec: PipelineSpec, reference: tuple[pd.DataFrame, dict], mlflow_uri: str,
                                 tmp_path: Path) -> None:
    import mlflow
    from evergreen.tracking import ensure_experiment
    from mlflow import MlflowClient

    _, profile = reference
    name = "fraud_drift_test"
    custom = spec.model_copy(update={"model": spec.model.model_copy(update={"registered_name": name})})
    with pytest.raises(NoChampionError, match="no @champion"):
        load_champion_reference(custom)

    client = MlflowClient()
    with mlflow.start_run(experiment_id=ensure_experiment("drift_test")) as run:
        mlflow.log_metrics({"roc_auc": 0.91, "pr_auc": 0.5, "validation_roc_auc": 0.93, "best_iteration": 40})
        mlflow.log_dict(profile, tracking.PROFILE_ARTIFACT)
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)

    loaded = load_champion_reference(custom)
    got_version, got_profile, metrics, model_uri = loaded
    assert got_version == str(version.version) == loaded.version
    assert got_profile == profile
    assert metrics == {"pr_auc": 0.5, "roc_auc": 0.91}
    assert model_uri == f"models:/{name}/{version.version}"

    # a champion without a profile is reported clearly
    with mlflow.start_run(experiment_id=ensure_experiment("drift_test")) as bare:
        mlflow.log_metric("roc_auc", 0.9)
    second = client.create_model_version(name, source=f"runs:/{bare.info.run_id}/model", run_id=bare.info.run_id)
    client.set_registered_model_alias(name, "champion", second.version)
    with pytest.raises(NoChampionError, match="reference_profile.json"):
        load_champion_reference(custom)


# ------------------------------------------------------------------ verdicts that mean something (issue 13)


def _with_days(frame: pd.DataFrame, spec: PipelineSpec, first: dt.date, days: int) -> pd.DataFrame:
    """``frame`` spread over ``days`` consecutive days (a timestamp column), in order."""
    day = np.arange(len(frame)) * days // len(frame)
    stamps = pd.Timestamp(first, tz="UTC") + pd.to_timedelta(day, unit="D") + pd.Timedelta(hours=12)
    return frame.assign(**{spec.timestamp_column: stamps})


def test_a_feature_with_one_value_per_day_is_compared_with_known_values(spec: PipelineSpec) -> None:
    reference_frame = _with_days(make_frame(spec, 2800, seed=21), spec, DS - dt.timedelta(days=14), 14)
    day_index = np.arange(len(reference_frame)) * 14 // len(reference_frame)
    reference_frame["channel"] = pd.Series(np.array(["web", "app", "pos"])[day_index % 3], dtype="str")
    profile = build_reference_profile(reference_frame, spec)
    assert profile["features"]["channel"]["day_constant"] is True
    assert profile["features"]["amount"]["day_constant"] is False
    today = make_frame(spec, 200, seed=22).assign(channel=pd.Series(["app"] * 200, dtype="str"))
    result = report_for(spec, profile, today)["features"]["channel"]
    assert result["psi"] > spec.drift.psi_threshold  # what made it drift every day before
    assert (result["calendar_like"], result["monitored"], result["drifted"]) == (True, False, False)
    unseen = report_for(spec, profile, today.assign(channel=pd.Series(["kiosk"] * 200, dtype="str")))
    assert unseen["features"]["channel"]["checks"] == ["unseen_value"]
    assert unseen["features"]["channel"]["unseen_values"] == ["kiosk"]
    # Declared in the spec: the same, with no timestamps to detect it from.
    declared = spec.model_copy(update={"drift": spec.drift.model_copy(update={"calendar_features": ["channel"]})})
    flat_profile = build_reference_profile(make_frame(declared, 2000, seed=23), declared)
    assert report_for(declared, flat_profile, today)["features"]["channel"]["drifted"] is False


def test_a_feature_constant_in_the_reference_that_starts_to_vary_is_drift(spec: PipelineSpec) -> None:
    """The probe: KS 1.0 and p=6e-85 were never flagged, PSI against a constant reference being 0."""
    reference_frame = make_frame(spec, 3000, seed=31).assign(failed_logins_7d=0.0)
    profile = build_reference_profile(reference_frame, spec)
    current = make_frame(spec, 300, seed=32)
    current["failed_logins_7d"] = np.random.default_rng(3).uniform(0.0, 5.0, len(current))
    result = report_for(spec, profile, current)["features"]["failed_logins_7d"]
    assert result["ks_statistic"] > 0.9 and result["ks_pvalue"] < 1e-50
    assert result["drifted"] is True and {"was_constant", "ks"} <= set(result["checks"])
    same = report_for(spec, profile, make_frame(spec, 300, seed=33).assign(failed_logins_7d=0.0))
    assert same["features"]["failed_logins_7d"]["drifted"] is False


def test_a_days_error_is_judged_against_the_worst_holdout_day(spec: PipelineSpec,
                                                             reference: tuple[pd.DataFrame, dict]) -> None:
    from evergreen.drift.statistics import _performance

    regression = get_spec("delivery_eta")  # rmse, max_performance_drop 0.1
    labels = np.zeros(100)

    def performance(error: float, daily: list[float] | None) -> dict[str, Any]:
        return _performance(regression, labels, labels + error, {"rmse": 12.0}, 100, daily=daily)

    # 15 is 25% above the pooled holdout RMSE (the demo's false alarm) but within 10% of its worst day.
    assert performance(15.0, None)["dropped"] is True
    quiet = performance(15.0, [10.0, 12.0, 14.0])
    assert quiet["dropped"] is False and quiet["worst_holdout_day"] == 14.0
    assert performance(16.0, [10.0, 12.0, 14.0])["dropped"] is True


def test_days_inside_the_training_window_are_reported_not_judged(spec: PipelineSpec,
                                                                 reference: tuple[pd.DataFrame, dict]) -> None:
    _, profile = reference
    shifted = make_frame(spec, 2000, seed=51, shift={name: 2.0 for name in NUMERIC})
    judged = report_for(spec, {**profile, "trained_through": (DS - dt.timedelta(days=1)).isoformat()}, shifted)
    assert judged["judged"] is True and judged["drift_detected"] is True
    inside = report_for(spec, {**profile, "trained_through": DS.isoformat()}, shifted)
    assert inside["judged"] is False and inside["drift_detected"] is False and inside["reasons"] == []
    assert inside["drifted_features"] == judged["drifted_features"]  # still reported
    assert "inside the champion's training window" in inside["not_judged"]


def test_a_day_is_judged_against_the_spread_of_the_reference_days(spec: PipelineSpec) -> None:
    """Rows of one day are alike (one weather system): each reference day is offset from the others, so a
    new day with an ordinary offset is no drift, one far outside every reference day is."""
    rng = np.random.default_rng(61)
    reference_frame = _with_days(make_frame(spec, 2800, seed=61), spec, DS - dt.timedelta(days=14), 14)
    day_index = np.arange(len(reference_frame)) * 14 // len(reference_frame)
    offsets = rng.normal(0.0, 1.0, 14)  # a day effect of about one std
    mean, std = NUMERIC["amount"]
    reference_frame["amount"] = mean + std * (rng.standard_normal(len(reference_frame)) * 0.5 + offsets[day_index])
    profile = build_reference_profile(reference_frame, spec)
    spread = profile["features"]["amount"]["daily_spread"]
    assert spread["days"] == 14 and spread["psi_max"] > spec.drift.psi_threshold

    def day(offset: float) -> pd.DataFrame:
        frame = make_frame(spec, 200, seed=62)
        frame["amount"] = mean + std * (rng.standard_normal(200) * 0.5 + offset)
        return frame

    ordinary = report_for(spec, profile, day(float(np.median(offsets))))["features"]["amount"]
    assert ordinary["psi"] > spec.drift.psi_threshold and ordinary["ks_pvalue"] < spec.drift.ks_pvalue
    assert ordinary["drifted"] is False  # what the pooled comparison alone called drift
    far = report_for(spec, profile, day(float(offsets.max()) + 3.0))["features"]["amount"]
    assert far["drifted"] is True and "psi" in far["checks"]


@pytest.mark.parametrize("sizes", [(50, 80), (2000, 9000), (2000, 60_000)])
@pytest.mark.parametrize("kind", ["continuous", "ties", "one_value"])
def test_the_ks_test_is_scipys_on_every_size_and_with_ties(sizes: tuple[int, int], kind: str) -> None:
    """The drift report's KS test evaluates the ECDFs only where they can peak: its statistic and p-value
    must still be exactly those of scipy's ks_2samp (exact p-values on small samples, asymptotic above)."""
    from scipy import stats

    rng = np.random.default_rng(sum(sizes))
    m, n = sizes
    if kind == "continuous":
        a, b = rng.normal(size=m), rng.normal(0.05, 1.1, size=n)
    elif kind == "ties":
        a, b = rng.integers(0, 7, m).astype(float), np.round(rng.normal(3, 2, n))
    else:
        a, b = rng.exponential(size=m), np.full(n, 0.7)
    a, b = np.sort(a), np.sort(b)
    expected = stats.ks_2samp(a, b)
    assert ks_test(a, b) == (float(expected.statistic), float(expected.pvalue))
    # The statistic as computed (scipy rounds it to the lattice of the exact distribution on small samples).
    assert ks_statistic(a, b) == float(stats.ks_2samp(a, b, method="asymp").statistic)
    assert ks_statistic(b, a) == float(stats.ks_2samp(b, a, method="asymp").statistic)


def test_the_daily_spread_is_each_days_own_drift_statistics(spec: PipelineSpec) -> None:
    """The profile's daily spread (computed for all days at once) equals, for every feature, the largest
    PSI and KS statistic the drift functions give each reference day on its own; missing values, unseen
    categories and a day too small to count included."""
    from scipy import stats

    reference_frame = _with_days(make_frame(spec, 3000, seed=71, missing={"amount": 0.1, "channel": 0.05}),
                                 spec, DS - dt.timedelta(days=10), 10)
    reference_frame = reference_frame.iloc[:-290]  # the last day keeps 10 rows: below MIN_SPREAD_DAY_ROWS
    profile = build_reference_profile(reference_frame, spec)
    days = pd.to_datetime(reference_frame[spec.timestamp_column], utc=True).dt.tz_convert(
        spec.schedule.timezone).dt.date.to_numpy()
    checked = 0
    for name, kind in spec.model_features.items():
        entry, spread = profile["features"][name], profile["features"][name]["daily_spread"]
        if name not in reference_frame.columns or spread is None:
            continue
        psis, ks = [], []
        for _, rows in reference_frame[name].groupby(days):
            if len(rows) < 20:
                continue
            if kind.value == "numeric":
                result = numeric_drift(entry, rows)
                finite = pd.to_numeric(rows, errors="coerce").dropna().to_numpy(dtype=float)
                ks.append(float(stats.ks_2samp(entry["sample"], finite, method="asymp").statistic))
            else:
                result = categorical_drift(entry, rows)
            psis.append(result["psi"])
        assert spread["days"] == len(psis) == 9
        assert spread["psi_max"] == max(psis)
        assert spread["ks_statistic_max"] == (max(ks) if ks else None)
        checked += 1
    assert checked >= 8


def test_bin_fractions_of_sorted_values_equal_the_binned_ones() -> None:
    """The drift report counts a day's bins by binary search on its sorted values: values on an edge,
    below the first and above the last land where bin_indices puts them."""
    from evergreen.drift.profile import bin_fractions

    rng = np.random.default_rng(5)
    values = np.round(rng.normal(size=5000), 1)
    for edges in ([-1.0, -0.5, 0.0, 0.5, 1.0], [0.0], [-3.0, 3.0], [-0.2, 0.0, 0.1, 5.0]):
        expected = bin_fractions(np.append(values, np.nan), edges)
        assert bin_fractions(np.sort(values), edges, presorted=True) == expected
    assert bin_fractions(np.empty(0), [0.0, 1.0, 2.0], presorted=True) == [0.0, 0.0]


@pytest.mark.parametrize("n", [1, 2, 7, 49, 1_000, 100_000, 1_000_000])
def test_the_missing_count_test_is_scipys_binomtest(n: int) -> None:
    """The missing-rate p-value runs scipy's two-sided binomtest algorithm on the distribution's kernels:
    it must be exactly scipy's number on every side of the mode, at the ends, and at extreme rates."""
    from scipy import stats

    rng = np.random.default_rng(n)
    for p in (1e-6, 1e-3, 0.05, 0.25, 0.5, 0.9, 1 - 1e-6):
        mode = int(p * n)
        counts = {0, 1, n - 1, n, mode, mode + 1, max(mode - 1, 0), *rng.integers(0, n + 1, 6).tolist()}
        for k in sorted(c for c in counts if 0 <= c <= n):
            assert binomial_pvalue(k, n, p) == stats.binomtest(k, n, p).pvalue, (k, n, p)
    with pytest.raises(ValueError):
        binomial_pvalue(n + 1, n, 0.5)


def test_the_asymptotic_ks_pvalue_is_scipys_kstwo() -> None:
    """The KS p-value above the exact sizes is scipy's kstwo survival function, inside and at the edges of
    its support (0.5 / n, 1)."""
    from scipy import stats

    rng = np.random.default_rng(3)
    for n in (11.0, 1_000.0, 9_000.0, 90_000.0):
        for statistic in [*rng.random(25), 0.0, 0.5 / n, 0.5 / n + 1e-12, 1e-9, 0.003, 0.999, 1.0]:
            expected = float(np.clip(stats.distributions.kstwo.sf(statistic, n), 0, 1))
            assert kstwo_sf(float(statistic), n) == expected, (statistic, n)
