"""Metric directions, compute_metrics on known values and the pure gate evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from evergreen.evaluation import (
    METRIC_DIRECTIONS,
    GateReport,
    GateResult,
    compute_metrics,
    compute_slice_metrics,
    evaluate_gates,
    expected_calibration_error,
    higher_is_better,
    improvement,
)
from evergreen.spec import SHIPPED_SPECS_DIR, PipelineSpec, load_spec

Metrics = dict[str, float]
Slices = dict[str, dict[str, float]]


def spec_with_gates(name: str, **gates: object) -> PipelineSpec:
    spec = load_spec(SHIPPED_SPECS_DIR / f"{name}.yaml")
    return spec.model_copy(update={"gates": spec.gates.model_copy(update=gates)})


@pytest.mark.parametrize(
    ("metric", "higher"),
    [("roc_auc", True), ("pr_auc", True), ("f1", True), ("accuracy", True), ("r2", True),
     ("rmse", False), ("mae", False), ("log_loss", False), ("brier", False), ("ece", False)],
)
def test_metric_directions(metric: str, higher: bool) -> None:
    assert higher_is_better(metric) is higher
    assert (improvement(metric, 2.0, 1.0) > 0) is higher


def test_unknown_metric_is_an_error() -> None:
    with pytest.raises(KeyError, match="unknown metric"):
        higher_is_better("auc")


def test_classification_metrics_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = compute_metrics("binary_classification", y, p)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["pr_auc"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["accuracy"] == pytest.approx(0.75)  # hard labels 0,0,0,1
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert set(m) == {"roc_auc", "pr_auc", "log_loss", "f1", "accuracy", "brier", "ece"}
    assert set(m) <= set(METRIC_DIRECTIONS)


@pytest.mark.parametrize("case", range(8))
def test_classification_metrics_equal_scikit_learn(case: int) -> None:
    """The numpy metrics against scikit-learn's definitions: ties, scores of exactly 0 and 1, rare and
    common positives, float32-valued scores (as XGBoost returns), one class only."""
    from sklearn import metrics as skm

    rng = np.random.default_rng(case)
    n = [1, 7, 200, 5000, 20_000, 3000, 800, 50][case]
    y = (rng.random(n) < [0.5, 0.3, 0.02, 0.1, 0.5, 0.9, 0.0, 1.0][case]).astype(int)
    p = rng.random(n)
    if case % 2:
        p = np.round(p, 1)  # many ties
    if case in (3, 5):
        p[: n // 4] = rng.choice([0.0, 1.0], n // 4)
    if case == 4:
        p = p.astype(np.float32).astype(np.float64)
    hard = (p >= 0.5).astype(int)
    expected = {"log_loss": skm.log_loss(y, p, labels=[0, 1]), "f1": skm.f1_score(y, hard, zero_division=0),
                "accuracy": skm.accuracy_score(y, hard), "brier": float(np.mean((y - p) ** 2)),
                "ece": expected_calibration_error(y, p)}
    if len(np.unique(y)) == 2:
        expected |= {"roc_auc": skm.roc_auc_score(y, p), "pr_auc": skm.average_precision_score(y, p),
                     "brier": skm.brier_score_loss(y, p)}
    got = compute_metrics("binary_classification", y, p)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_non_finite_predictions_are_refused() -> None:
    with pytest.raises(ValueError, match="1 of 3 predictions are NaN"):
        compute_metrics("binary_classification", [0, 1, 1], [0.1, np.nan, 0.8])


def test_ece_known_value() -> None:
    # Two bins used: [0.2) holds scores 0.1 (observed 0/2), [0.9) holds 0.9 (observed 1/2).
    y = np.array([0, 0, 1, 0])
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(0.0)


def test_single_class_skips_auc() -> None:
    m = compute_metrics("binary_classification", [0, 0, 0], [0.1, 0.2, 0.3])
    assert "roc_auc" not in m and "pr_auc" not in m
    assert m["accuracy"] == 1.0


def test_regression_metrics_known_values() -> None:
    m = compute_metrics("regression", [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0])
    assert m["rmse"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 4.0 / 5.0)


def test_slice_metrics_ignore_small_slices_and_single_class_auc() -> None:
    import pandas as pd

    slices = pd.Series(["a"] * 6 + ["b"] * 4 + ["c"] * 2 + [None] * 4, dtype="str")
    y = np.array([0, 1, 0, 1, 0, 1] + [0, 0, 0, 0] + [1, 0] + [0, 1, 1, 0])
    p = np.linspace(0.05, 0.95, len(y))
    out = compute_slice_metrics("binary_classification", slices, y, p, min_rows=4)
    assert set(out) == {"a", "b", "__missing__"}
    assert out["a"]["rows"] == 6 and "roc_auc" in out["a"]
    assert "roc_auc" not in out["b"]


# -------------------------------------------------------------------------------------------- gates

CLS = {"roc_auc": 0.85, "pr_auc": 0.4, "log_loss": 0.3}
CLS_BASE = {"roc_auc": 0.80, "pr_auc": 0.3, "log_loss": 0.35}
CLS_SLICES = {"web": {"rows": 500, "roc_auc": 0.84}, "app": {"rows": 400, "roc_auc": 0.86},
              "pos": {"rows": 300, "roc_auc": 0.80}}


def gate(report: GateReport, name: str) -> GateResult:
    return next(g for g in report.gates if g.name == name)


@pytest.mark.parametrize(
    ("challenger", "baseline", "champion", "slices", "passed", "failed", "beats"),
    [
        pytest.param(CLS, CLS_BASE, None, CLS_SLICES, True, set(), None, id="no-champion-passes"),
        pytest.param({**CLS, "roc_auc": 0.74}, CLS_BASE, None, CLS_SLICES, False,
                     {"absolute:roc_auc", "lift_over_baseline"}, None, id="below-absolute-and-baseline"),
        pytest.param({**CLS, "pr_auc": 0.1}, CLS_BASE, None, CLS_SLICES, False, {"absolute:pr_auc"}, None,
                     id="absolute-secondary-metric"),
        pytest.param(CLS, CLS_BASE, {"roc_auc": 0.80}, CLS_SLICES, True, set(), True, id="beats-champion"),
        pytest.param(CLS, CLS_BASE, {"roc_auc": 0.855}, CLS_SLICES, True, set(), False,
                     id="slightly-worse-within-tolerance"),
        pytest.param(CLS, CLS_BASE, {"roc_auc": 0.87}, CLS_SLICES, False, {"no_regression_vs_champion"}, False,
                     id="regresses-vs-champion"),
        pytest.param(CLS, CLS_BASE, {"roc_auc": 0.85}, CLS_SLICES, True, set(), False, id="equal-does-not-beat"),
        pytest.param(CLS, CLS_BASE, None, {**CLS_SLICES, "pos": {"rows": 300, "roc_auc": 0.6}}, False,
                     {"min_slice_metric", "max_slice_gap"}, None, id="weak-slice"),
        # A slice gate that the holdout cannot decide is never a pass.
        pytest.param(CLS, CLS_BASE, None, {"web": {"rows": 500, "accuracy": 0.9}}, False,
                     {"min_slice_metric", "max_slice_gap"}, None, id="slices-without-auc-not-evaluated"),
        pytest.param(CLS, CLS_BASE, None, {"web": {"rows": 500, "roc_auc": 0.9}}, False,
                     {"min_slice_metric", "max_slice_gap"}, None, id="one-slice-not-evaluated"),
        pytest.param(CLS, CLS_BASE, None, {}, False, {"min_slice_metric", "max_slice_gap"}, None,
                     id="no-slices-not-evaluated"),
        pytest.param({"pr_auc": 0.4}, CLS_BASE, None, CLS_SLICES, False,
                     {"primary_metric:roc_auc", "absolute:roc_auc", "lift_over_baseline"}, None,
                     id="missing-primary-metric"),
        pytest.param({**CLS, "roc_auc": math.nan}, CLS_BASE, None, CLS_SLICES, False,
                     {"primary_metric:roc_auc", "absolute:roc_auc", "lift_over_baseline"}, None, id="nan"),
    ],
)
def test_classification_gates(challenger: Metrics, baseline: Metrics, champion: Metrics | None, slices: Slices,
                              passed: bool, failed: set[str], beats: bool | None) -> None:
    spec = load_spec(SHIPPED_SPECS_DIR / "fraud.yaml")  # roc_auc>=0.75, pr_auc>=0.2, 1% regression, slices
    report = evaluate_gates(spec, challenger, baseline, champion, slices)
    assert report.passed is passed
    assert {g.name for g in report.failed} == failed
    assert report.beats_champion is beats
    as_dict = report.to_dict()
    assert as_dict["passed"] is passed and set(as_dict["failed"]) == failed


REG = {"rmse": 10.0, "mae": 7.0, "r2": 0.7}
REG_BASE = {"rmse": 12.0, "mae": 9.0, "r2": 0.6}


@pytest.mark.parametrize(
    ("challenger", "baseline", "champion", "passed", "failed", "beats"),
    [
        pytest.param(REG, REG_BASE, None, True, set(), None, id="no-champion"),
        pytest.param({**REG, "rmse": 16.0}, REG_BASE, None, False, {"absolute:rmse", "lift_over_baseline"}, None,
                     id="rmse-above-absolute-max"),
        pytest.param({**REG, "r2": 0.4}, REG_BASE, None, False, {"absolute:r2"}, None, id="r2-below-min"),
        pytest.param(REG, REG_BASE, {"rmse": 11.0}, True, set(), True, id="lower-rmse-beats"),
        pytest.param(REG, REG_BASE, {"rmse": 9.9}, True, set(), False, id="1pct-worse-within-2pct"),
        pytest.param(REG, REG_BASE, {"rmse": 9.5}, False, {"no_regression_vs_champion"}, False,
                     id="5pct-worse-rejected"),
        pytest.param(REG, {"rmse": 9.0}, None, False, {"lift_over_baseline"}, None, id="worse-than-baseline"),
    ],
)
def test_regression_gates(challenger: Metrics, baseline: Metrics, champion: Metrics | None, passed: bool,
                          failed: set[str], beats: bool | None) -> None:
    spec = spec_with_gates("delivery_eta", slice_feature=None, max_slice_gap=None)
    report = evaluate_gates(spec, challenger, baseline, champion, {})
    assert report.passed is passed
    assert {g.name for g in report.failed} == failed
    assert report.beats_champion is beats


def test_regression_slice_gap_lower_is_better() -> None:
    spec = load_spec(SHIPPED_SPECS_DIR / "delivery_eta.yaml")  # max_slice_gap 8.0 minutes of rmse
    ok = {"north": {"rows": 80, "rmse": 9.0}, "south": {"rows": 90, "rmse": 14.0}}
    bad = {**ok, "east": {"rows": 70, "rmse": 18.0}, "tiny": {"rows": 3, "rmse": 99.0}}
    assert evaluate_gates(spec, REG, REG_BASE, None, ok).passed
    report = evaluate_gates(spec, REG, REG_BASE, None, bad)
    assert {g.name for g in report.failed} == {"max_slice_gap"}
    assert gate(report, "max_slice_gap").value == pytest.approx(18.0 - 9.0)  # the 3-row slice is ignored


def test_min_lift_is_relative() -> None:
    spec = spec_with_gates("fraud", min_lift_over_baseline=0.05, slice_feature=None)
    assert not evaluate_gates(spec, CLS, {"roc_auc": 0.82}, None, {}).passed  # +3.7%
    assert evaluate_gates(spec, CLS, {"roc_auc": 0.80}, None, {}).passed  # +6.25%


def test_single_class_holdout_is_not_evaluable_never_a_pass() -> None:
    spec = load_spec(SHIPPED_SPECS_DIR / "fraud.yaml")
    metrics = compute_metrics("binary_classification", [0, 0, 0, 0], [0.1, 0.2, 0.1, 0.3])
    report = evaluate_gates(spec, metrics, CLS_BASE, None, CLS_SLICES, holdout_classes=1)
    primary = gate(report, "primary_metric:roc_auc")
    assert (primary.status, primary.passed) == ("not_evaluated", False)
    assert "single class" in primary.detail
    assert report.passed is False
    assert report.to_dict()["not_evaluated"] == ["primary_metric:roc_auc"]
    one_slice = evaluate_gates(spec, CLS, CLS_BASE, None, {"web": {"rows": 500, "roc_auc": 0.9}})
    assert {g.name: g.status for g in one_slice.gates if "slice" in g.name} == {
        "min_slice_metric": "not_evaluated", "max_slice_gap": "not_evaluated"}
    assert "1 channel slice(s)" in gate(one_slice, "max_slice_gap").detail


@pytest.mark.parametrize(
    ("failed", "beats", "champion", "bar_blocks", "outcome"),
    [
        pytest.param([], None, None, False, "promote", id="first-model"),
        pytest.param([], True, "3", False, "promote", id="beats-champion"),
        pytest.param([], False, "3", False, "register", id="passes-does-not-beat"),
        pytest.param(["absolute:rmse"], True, "3", False, "promote_below_bar", id="below-bar-but-better"),
        pytest.param(["lift_over_baseline"], True, "3", False, "promote_below_bar", id="loses-to-baseline-but-better"),
        pytest.param(["absolute:rmse"], True, "3", True, "reject", id="bar-blocks"),
        pytest.param(["absolute:rmse"], None, None, False, "reject", id="below-bar-no-champion"),
        pytest.param(["absolute:rmse"], False, "3", False, "reject", id="below-bar-and-worse"),
        pytest.param(["max_slice_gap"], True, "3", False, "reject", id="slice-gap-never-waived"),
        pytest.param(["min_slice_metric"], True, "3", False, "promote_below_bar", id="worst-slice-bar-but-better"),
        pytest.param(["primary_metric:rmse"], None, "3", False, "reject", id="not-evaluable"),
    ],
)
def test_promotion_outcome(failed: list[str], beats: bool | None, champion: str | None, bar_blocks: bool,
                           outcome: str) -> None:
    from evergreen.evaluation import promotion_outcome

    report = {"failed": failed, "beats_champion": beats, "champion_version": champion,
              "gates": [{"name": n, "detail": "why"} for n in failed]}
    got, reasons = promotion_outcome(report, bar_blocks=bar_blocks)
    assert got == outcome
    assert bool(reasons) == (outcome != "promote")


@pytest.mark.parametrize(
    ("xgb", "base", "enabled", "expected"),
    [
        pytest.param(0.967, 0.968, True, "baseline", id="baseline-better"),
        pytest.param(0.968, 0.968, True, "xgboost", id="tie-keeps-xgboost"),
        pytest.param(0.990, 0.968, True, "xgboost", id="xgboost-better"),
        pytest.param(0.967, 0.968, False, "xgboost", id="disabled"),
        pytest.param(float("nan"), 0.968, True, "baseline", id="xgboost-undefined"),
    ],
)
def test_choose_candidate(xgb: float, base: float, enabled: bool, expected: str) -> None:
    from evergreen.evaluation import choose_candidate

    spec = spec_with_gates("fraud", baseline_candidate=enabled)
    assert choose_candidate(spec, {"roc_auc": xgb}, {"roc_auc": base}) == expected


def test_a_baseline_candidate_that_beats_the_champion_is_promoted() -> None:
    """Issue 13's electricity run: XGBoost 0.967 beat champion 0.853 but lost to the baseline's 0.968, and
    the stale champion stayed. Now the baseline is the candidate, its gates pass, and it is promoted."""
    from evergreen.evaluation import choose_candidate, promotion_outcome

    spec = spec_with_gates("fraud", absolute={}, min_slice_metric=None, max_slice_gap=None,
                           min_lift_over_baseline=0.02)
    xgb, base, champion = {"roc_auc": 0.967}, {"roc_auc": 0.968}, {"roc_auc": 0.853}
    assert choose_candidate(spec, xgb, base) == "baseline"
    report = evaluate_gates(spec, base, base, champion, {}, candidate="baseline").to_dict()
    assert report["candidate"] == "baseline" and report["passed"] is True and report["beats_champion"] is True
    lift = gate(evaluate_gates(spec, base, base, champion, {}, candidate="baseline"), "lift_over_baseline")
    assert lift.status == "skipped" and lift.passed
    assert promotion_outcome({**report, "champion_version": "3"})[0] == "promote"
    # The same XGBoost judged alone fails the lift and is only promoted below the bar.
    alone = evaluate_gates(spec, xgb, base, champion, {}).to_dict()
    assert alone["failed"] == ["lift_over_baseline"]
    assert promotion_outcome({**alone, "champion_version": "3"})[0] == "promote_below_bar"


def test_the_approval_request_shows_the_gates_only_when_there_is_something_to_approve() -> None:
    from evergreen.evaluation import approval_request

    report = {"failed": [], "beats_champion": True, "champion_version": "3", "primary_metric": "roc_auc",
              "challenger_metrics": {"roc_auc": 0.91}, "champion_metrics": {"roc_auc": 0.88}, "candidate": "baseline",
              "gates": [{"name": "no_regression_vs_champion", "value": -0.03, "threshold": 0.01, "status": "passed"}],
              "model_name": "fraud", "run_id": "abc", "as_of": "2026-11-01", "data_digest": "d1", "holdout_rows": 1200}
    body = approval_request(report)
    assert "the baseline candidate of run `abc`" in body and "would replace champion 3" in body
    assert "candidate **0.9100**, champion 0.8800" in body and "| no_regression_vs_champion | -0.0300 | 0.0100 | passed |" in body
    assert approval_request({**report, "beats_champion": False}) == ""  # registered only: nothing to approve
    assert approval_request({**report, "failed": ["max_slice_gap"]}) == ""  # rejected by the gates
