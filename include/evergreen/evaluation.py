"""Holdout metrics, promotion gates and the challenger evaluation step.

Gate semantics (all metric names are those of :data:`METRIC_DIRECTIONS`):

* ``absolute``: each listed metric must be at least (higher-is-better) or at most (lower-is-better) its
  threshold.
* ``min_lift_over_baseline``: the challenger's primary metric must beat the simple baseline by at least
  this *relative* improvement (0.0 = "not worse"); relative so one number means the same for AUC and RMSE.
  When the baseline beats XGBoost on the holdout it is the candidate itself (``gates.baseline_candidate``,
  on by default; :func:`choose_candidate`) and this gate is skipped: it is then the baseline that must
  clear the other gates and beat the champion.
* ``max_regression_vs_champion``: the challenger may be at most this *relative* amount worse than the
  current champion re-scored on the same holdout (skipped when there is no champion).
* ``min_slice_metric`` / ``max_slice_gap``: per value of ``slice_feature`` (slices with fewer than
  ``min_slice_rows`` rows ignored), the worst slice's primary metric must clear the threshold and the
  best-to-worst spread must stay within the gap (both in the metric's own units).

:func:`evaluate_gates` is pure; :func:`evaluate_challenger` does the I/O around it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evergreen.spec import PipelineSpec, TaskType

HIGHER = "higher"
LOWER = "lower"

# Which way is better, per metric: the single source of truth for gates and champion comparison.
METRIC_DIRECTIONS: dict[str, str] = {
    "roc_auc": HIGHER,
    "pr_auc": HIGHER,
    "f1": HIGHER,
    "accuracy": HIGHER,
    "r2": HIGHER,
    "rmse": LOWER,
    "mae": LOWER,
    "log_loss": LOWER,
    "brier": LOWER,
    "ece": LOWER,
}
CLASSIFICATION_METRICS = ("roc_auc", "pr_auc", "log_loss", "f1", "accuracy", "brier", "ece")
REGRESSION_METRICS = ("rmse", "mae", "r2")

SLICE_MISSING = "__missing__"
XGBOOST = "xgboost"
BASELINE = "baseline"
_EPS = 1e-12


def higher_is_better(metric: str) -> bool:
    """True when larger values of ``metric`` are better; KeyError for an unknown metric."""
    try:
        return METRIC_DIRECTIONS[metric] == HIGHER
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; known: {sorted(METRIC_DIRECTIONS)}") from None


def improvement(metric: str, new: float, reference: float) -> float:
    """``new - reference`` oriented so positive always means ``new`` is better."""
    return (new - reference) if higher_is_better(metric) else (reference - new)


def relative_improvement(metric: str, new: float, reference: float) -> float:
    """:func:`improvement` as a fraction of ``|reference|`` (guarded against a zero reference)."""
    return improvement(metric, new, reference) / max(abs(reference), _EPS)


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 10) -> float:
    """Equal-width-bin ECE: sum over bins of |observed rate - mean score| weighted by bin share."""
    y_true = np.asarray(y_true, dtype=float)
    y_prob = np.asarray(y_prob, dtype=float)
    if len(y_true) == 0:
        return float("nan")
    # Bin index in 0..bins-1; a score of exactly 1.0 belongs in the last bin.
    idx = np.minimum((y_prob * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.mean() * abs(y_true[mask].mean() - y_prob[mask].mean())
    return float(total)


def compute_metrics(task_type: TaskType | str, y_true: Any, y_pred: Any) -> dict[str, float]:
    """Holdout metrics for the task; ``y_pred`` is P(y=1) for classification, values for regression.

    AUC-type metrics are left out when ``y_true`` holds a single class (they are undefined).
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows, y_pred {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero rows")
    if not np.isfinite(y_pred).all():  # a broken model, not a metric: as scikit-learn refused it
        raise ValueError(f"{int((~np.isfinite(y_pred)).sum())} of {len(y_pred)} predictions are NaN or infinite")
    if TaskType(task_type) == TaskType.REGRESSION:
        return {
            "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
            "mae": float(np.mean(np.abs(y_true - y_pred))),
            "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
        }
    labels = y_true.astype(int)
    prob = np.clip(y_pred, 0.0, 1.0)
    return binary_metrics(labels, prob)


def _ranking_metrics(positive: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, average precision) from one sort, as scikit-learn defines them: the curves' points at
    each distinct score (ties form one point), the ROC area by trapezoids, AP as the precision-weighted
    sum of recall steps."""
    order = np.argsort(prob)[::-1]  # not stable: the order inside a tie does not change its last point
    ranked = prob[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tps = np.cumsum(positive[order], dtype=np.float64)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps] / tps[-1]
    fpr = np.r_[0.0, fps] / fps[-1]
    roc_auc = float(np.trapezoid(tpr, fpr))
    recall_steps = np.diff(np.r_[0.0, tps / tps[-1]])
    average_precision = float(np.sum(recall_steps * (tps / (tps + fps))))
    return roc_auc, average_precision


def binary_metrics(labels: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """The classification metrics of :func:`compute_metrics` in numpy, equal to scikit-learn's to rounding
    (tests/unit/test_evaluation.py): scikit-learn's input checks and its separate sort per curve made
    them 5 s of a 3M-row holdout, scored several times per training."""
    positive = labels == 1
    hard = prob >= 0.5
    out: dict[str, float] = {}
    if positive.any() and not positive.all():
        out["roc_auc"], out["pr_auc"] = _ranking_metrics(positive, prob)
    eps = np.finfo(prob.dtype).eps  # scikit-learn's clipping of both columns, [1 - p, p]
    log_likelihood = np.where(positive, np.log(np.clip(prob, eps, 1 - eps)), np.log(np.clip(1 - prob, eps, 1 - eps)))
    out["log_loss"] = float(-np.mean(log_likelihood))
    true_pos = int(np.count_nonzero(hard & positive))
    wrong = int(np.count_nonzero(hard != positive))
    out["f1"] = 2 * true_pos / (2 * true_pos + wrong) if true_pos + wrong else 0.0
    out["accuracy"] = 1.0 - wrong / len(labels)
    out["brier"] = float(np.mean((positive - prob) ** 2))
    out["ece"] = expected_calibration_error(labels, prob)
    return out


def slice_values(values: pd.Series) -> pd.Series:
    """Slice labels as strings (missing -> ``__missing__``) so JSON keys are stable across dtypes."""
    labels = values.astype("object").map(str)
    return labels.where(values.notna(), SLICE_MISSING)


def compute_slice_metrics(
    task_type: TaskType | str, slices: pd.Series, y_true: Any, y_pred: Any, *, min_rows: int
) -> dict[str, dict[str, float]]:
    """Metrics per slice value with ``rows``; slices under ``min_rows`` rows are left out."""
    labels = slice_values(pd.Series(slices).reset_index(drop=True))
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    out: dict[str, dict[str, float]] = {}
    for value in sorted(labels.unique()):
        mask = (labels == value).to_numpy()
        rows = int(mask.sum())
        if rows < min_rows:
            continue
        out[value] = {"rows": rows, **compute_metrics(task_type, y_true[mask], y_pred[mask])}
    return out


def fairness_metrics(spec: PipelineSpec, groups: Any, y_true: Any, y_pred: Any) -> dict[str, Any]:
    """``gates.fairness`` on holdout rows (fairlearn): the metric, the bound, and per group its rows,
    selection rate (or mean prediction), true and false positive rates. Groups under ``min_group_rows``
    are left out and listed; ``value`` is None when fewer than two groups remain or it is undefined."""
    from fairlearn import metrics as fm

    cfg = spec.gates.fairness
    if cfg is None:
        raise ValueError(f"{spec.name} has no gates.fairness")
    labels = slice_values(pd.Series(groups).reset_index(drop=True))
    y_true = np.asarray(y_true, dtype=float)
    scores = np.asarray(y_pred, dtype=float)
    counts = labels.value_counts()
    kept = sorted(str(g) for g, n in counts.items() if n >= cfg.min_group_rows)
    mask = labels.isin(kept).to_numpy()
    out: dict[str, Any] = {"attribute": cfg.attribute, "metric": cfg.metric, "value": None,
                           "bound": "max" if cfg.max is not None else "min",
                           "limit": cfg.max if cfg.max is not None else cfg.min, "threshold": cfg.threshold,
                           "min_group_rows": cfg.min_group_rows, "groups": {},
                           "excluded_groups": {str(g): int(n) for g, n in counts.items() if n < cfg.min_group_rows}}
    if len(kept) < 2:
        return {**out, "status": f"{len(kept)} {cfg.attribute} group(s) with >= {cfg.min_group_rows} rows, need 2"}
    sensitive, truth, score = labels[mask].to_numpy(), y_true[mask], scores[mask]
    regression = spec.task_type == TaskType.REGRESSION
    decided = score if regression else (score >= cfg.threshold).astype(int)
    by_group: dict[str, Any] = {"rows": fm.count}
    if regression:
        by_group["mean_prediction"] = fm.mean_prediction
    else:
        truth = truth.astype(int)
        by_group.update(selection_rate=fm.selection_rate, true_positive_rate=fm.true_positive_rate,
                        false_positive_rate=fm.false_positive_rate)
    frame = fm.MetricFrame(metrics=by_group, y_true=truth, y_pred=decided, sensitive_features=sensitive)
    out["groups"] = {str(g): {k: (int(v) if k == "rows" else float(v)) for k, v in row.items()}
                     for g, row in frame.by_group.to_dict(orient="index").items()}
    if regression:
        value = float(frame.difference()["mean_prediction"])
    else:
        metric = getattr(fm, cfg.metric)
        value = float(metric(truth, decided, sensitive_features=sensitive))
    if not math.isfinite(value):
        return {**out, "status": f"{cfg.metric} is undefined on this holdout (a group lacks a class)"}
    passed = value <= cfg.max if cfg.max is not None else value >= cfg.min
    return {**out, "value": value, "passed": bool(passed), "status": "ok"}


NOT_EVALUATED = "not_evaluated"


@dataclass
class GateResult:
    """One gate's outcome; ``value``/``threshold`` are None when not applicable (e.g. skipped).

    ``status`` is ``passed``, ``failed``, ``skipped`` (does not apply, e.g. no champion yet) or
    ``not_evaluated`` (applies but the holdout cannot decide it): that one never counts as a pass."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = ""
    status: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "passed" if self.passed else "failed"
        if self.status == NOT_EVALUATED:
            self.passed = False


@dataclass
class GateReport:
    """All gates; ``beats_champion`` is None when there is no champion to beat."""

    passed: bool
    gates: list[GateResult]
    primary_metric: str
    beats_champion: bool | None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None
    slice_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    candidate: str = XGBOOST  # which model of the training the gates judged
    fairness: dict[str, Any] | None = None  # fairness_metrics of the candidate, with gates.fairness

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed"] = [g.name for g in self.failed]
        out["not_evaluated"] = [g.name for g in self.gates if g.status == NOT_EVALUATED]
        return json_safe(out)


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def _at_least(metric: str, value: float, threshold: float) -> bool:
    return value >= threshold if higher_is_better(metric) else value <= threshold


def evaluate_gates(
    spec: PipelineSpec,
    challenger_metrics: Mapping[str, float],
    baseline_metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    slice_metrics: Mapping[str, Mapping[str, float]],
    holdout_classes: int | None = None,
    candidate: str = XGBOOST,
    fairness: Mapping[str, Any] | None = None,
) -> GateReport:
    """Apply ``spec.gates`` to already-computed metrics (pure: no I/O, no MLflow). ``challenger_metrics``
    are the candidate's: XGBoost's, or the baseline's when ``candidate`` is ``baseline``.
    ``holdout_classes``: the classes present in a binary holdout, to say why a primary metric is undefined.
    ``fairness``: the candidate's :func:`fairness_metrics` (required with ``gates.fairness``)."""
    gates_spec = spec.gates
    primary = spec.primary_metric
    higher_is_better(primary)  # fail loudly on a typo in the spec's primary metric
    gates: list[GateResult] = []
    value = challenger_metrics.get(primary)

    if _finite(value):
        gates.append(GateResult(f"primary_metric:{primary}", value, None, True, "challenger primary metric is finite"))
    else:
        why = (f"not evaluable: {primary} is undefined on a holdout holding a single class (the window had no "
               f"day with the other class to extend it with)" if holdout_classes is not None and holdout_classes < 2
               else "not evaluable: primary metric missing or not finite")
        gates.append(GateResult(f"primary_metric:{primary}", None, None, False, why, status=NOT_EVALUATED))

    for metric, threshold in sorted(gates_spec.absolute.items()):
        got = challenger_metrics.get(metric)
        op = ">=" if higher_is_better(metric) else "<="
        ok = _finite(got) and _at_least(metric, float(got), threshold)
        gates.append(GateResult(f"absolute:{metric}", got, threshold, ok, f"{metric} {op} {threshold}"))

    base = baseline_metrics.get(primary)
    if candidate == BASELINE:
        gates.append(GateResult("lift_over_baseline", None, gates_spec.min_lift_over_baseline, True,
                                "the baseline is the candidate: it beat XGBoost on the holdout", status="skipped"))
    elif _finite(value) and _finite(base):
        lift = relative_improvement(primary, float(value), float(base))
        ok = lift >= gates_spec.min_lift_over_baseline
        detail = f"relative lift of {primary} over baseline ({base:.6g}) >= {gates_spec.min_lift_over_baseline}"
        gates.append(GateResult("lift_over_baseline", lift, gates_spec.min_lift_over_baseline, ok, detail))
    else:
        gates.append(GateResult("lift_over_baseline", None, gates_spec.min_lift_over_baseline, False,
                                f"baseline or challenger {primary} missing"))

    beats: bool | None = None
    champ = champion_metrics.get(primary) if champion_metrics is not None else None
    if champion_metrics is None:
        gates.append(GateResult("no_regression_vs_champion", None, gates_spec.max_regression_vs_champion,
                                True, "no champion: skipped"))
    elif not (_finite(value) and _finite(champ)):
        beats = False
        gates.append(GateResult("no_regression_vs_champion", None, gates_spec.max_regression_vs_champion,
                                False, f"champion or challenger {primary} missing"))
    else:
        regression = -relative_improvement(primary, float(value), float(champ))
        ok = regression <= gates_spec.max_regression_vs_champion
        # Strictly better to move the champion: an equal model is not worth the churn.
        beats = improvement(primary, float(value), float(champ)) > 0
        detail = (f"relative regression of {primary} vs champion ({champ:.6g}) "
                  f"<= {gates_spec.max_regression_vs_champion}")
        gates.append(GateResult("no_regression_vs_champion", regression,
                                gates_spec.max_regression_vs_champion, ok, detail))

    if gates_spec.slice_feature and (gates_spec.min_slice_metric is not None or gates_spec.max_slice_gap is not None):
        # Slices below min_slice_rows are too noisy to gate on (compute_slice_metrics drops them already).
        scored = {k: float(m[primary]) for k, m in slice_metrics.items()
                  if _finite(m.get(primary)) and m.get("rows", gates_spec.min_slice_rows) >= gates_spec.min_slice_rows}
        if len(scored) < 2:
            # One slice has no gap to measure and no other slice to be worse than: never a pass.
            for name, threshold in (("min_slice_metric", gates_spec.min_slice_metric),
                                    ("max_slice_gap", gates_spec.max_slice_gap)):
                if threshold is not None:
                    gates.append(GateResult(
                        name, None, threshold, False,
                        f"not evaluated: {len(scored)} {gates_spec.slice_feature} slice(s) with "
                        f">= {gates_spec.min_slice_rows} rows and a finite {primary}, need 2",
                        status=NOT_EVALUATED))
        else:
            pick = min if higher_is_better(primary) else max
            worst_key = pick(scored, key=lambda k: scored[k])
            worst = scored[worst_key]
            if gates_spec.min_slice_metric is not None:
                ok = _at_least(primary, worst, gates_spec.min_slice_metric)
                gates.append(GateResult("min_slice_metric", worst, gates_spec.min_slice_metric, ok,
                                        f"worst {gates_spec.slice_feature} slice {worst_key!r} {primary}"))
            if gates_spec.max_slice_gap is not None:
                gap = max(scored.values()) - min(scored.values())
                ok = gap <= gates_spec.max_slice_gap
                gates.append(GateResult("max_slice_gap", gap, gates_spec.max_slice_gap, ok,
                                        f"best-worst {primary} spread across {len(scored)} "
                                        f"{gates_spec.slice_feature} slices"))

    if gates_spec.fairness is not None:
        cfg = gates_spec.fairness
        name, limit = f"fairness:{cfg.metric}", cfg.max if cfg.max is not None else cfg.min
        op = "<=" if cfg.max is not None else ">="
        if fairness is None or fairness.get("value") is None:
            why = (fairness or {}).get("status") or "no fairness metrics computed"
            gates.append(GateResult(name, None, limit, False, f"not evaluated: {why}", status=NOT_EVALUATED))
        else:
            value = float(fairness["value"])
            ok = value <= cfg.max if cfg.max is not None else value >= cfg.min
            gates.append(GateResult(name, value, limit, ok, f"{cfg.metric} across {len(fairness['groups'])} "
                                                            f"{cfg.attribute} groups {op} {limit}"))

    return GateReport(
        candidate=candidate,
        fairness=dict(fairness) if fairness is not None else None,
        passed=all(g.passed for g in gates),
        gates=gates,
        primary_metric=primary,
        beats_champion=beats,
        challenger_metrics=dict(challenger_metrics),
        baseline_metrics=dict(baseline_metrics),
        champion_metrics=dict(champion_metrics) if champion_metrics is not None else None,
        slice_metrics={k: dict(v) for k, v in slice_metrics.items()},
    )


def choose_candidate(spec: PipelineSpec, metrics: Mapping[str, float], baseline_metrics: Mapping[str, float]) -> str:
    """``baseline`` when the baseline is strictly better than XGBoost on the holdout's primary metric (and
    ``gates.baseline_candidate``), else ``xgboost``: the better model of a training is the one judged, so
    "XGBoost lost to the baseline" never means "keep a stale champion"."""
    primary = spec.primary_metric
    xgb, base = metrics.get(primary), baseline_metrics.get(primary)
    if spec.gates.baseline_candidate and _finite(base) and (
            not _finite(xgb) or improvement(primary, float(base), float(xgb)) > 0):
        return BASELINE
    return XGBOOST


# Gates a challenger may fail and still replace a champion it beats on the same holdout rows: serving the
# better model beats keeping a worse one because neither clears the bar (the decision says so, loudly).
# They are the absolute bars (overall and the worst slice's) and the lift over the baseline; a regression
# against the champion, the slice gap and an undecidable gate always reject.
BAR_GATES_PREFIXES = ("absolute:", "lift_over_baseline", "min_slice_metric")
PROMOTING = frozenset({"promote", "promote_below_bar"})


def promotion_outcome(gate_report: Mapping[str, Any], *, bar_blocks: bool = False) -> tuple[str, list[str]]:
    """What a gate report decides: ``promote``, ``promote_below_bar``, ``register`` (passed, does not beat
    the champion) or ``reject``; and the reasons. One rule for the registry and the backtest.

    A challenger that beats the champion on the challenger's holdout is promoted even when only absolute
    thresholds or the lift over the baseline fail (``promote_below_bar``), unless ``bar_blocks``
    (``gates.bar_blocks`` in the spec): otherwise a stale champion that fails the same bar would stay.
    """
    failed = list(gate_report.get("failed") or [])
    beats = gate_report.get("beats_champion")
    has_champion = gate_report.get("champion_version") is not None
    if not failed:
        if not has_champion or beats:
            return "promote", []
        return "register", [f"does not beat champion {gate_report.get('champion_version')} on the same holdout"]
    reasons = [f"gate {g['name']} failed: {g.get('detail', '')}".rstrip(": ")
               for g in gate_report.get("gates") or [] if g.get("name") in failed]
    below_bar_only = all(name.startswith(BAR_GATES_PREFIXES) for name in failed)
    if has_champion and beats and below_bar_only and not bar_blocks:
        return "promote_below_bar", [f"below the bar ({', '.join(failed)}) but better than champion "
                                     f"{gate_report.get('champion_version')} on the same holdout", *reasons]
    return "reject", reasons or [f"gates failed: {', '.join(failed)}"]


def approval_request(gate_report: Mapping[str, Any], *, bar_blocks: bool = False) -> str:
    """The Markdown a person reads to approve a promotion (``promotion.mode: approval``), or "" when the
    gates would not promote (nothing to approve)."""
    outcome, reasons = promotion_outcome(gate_report, bar_blocks=bar_blocks)
    if outcome not in PROMOTING:
        return ""
    primary = gate_report.get("primary_metric")
    challenger = (gate_report.get("challenger_metrics") or {}).get(primary)
    champion = (gate_report.get("champion_metrics") or {}).get(primary)
    lines = [f"**{gate_report.get('model_name')}**: the {gate_report.get('candidate', XGBOOST)} candidate of run "
             f"`{gate_report.get('run_id')}` (as of {gate_report.get('as_of')}, data `{gate_report.get('data_digest')}`) "
             f"would replace champion {gate_report.get('champion_version') or '(none)'}.", "",
             f"{primary}: candidate **{_fmt(challenger)}**, champion {_fmt(champion)}, holdout of "
             f"{gate_report.get('holdout_rows')} rows.", "", "| gate | value | threshold | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {g['name']} | {_fmt(g.get('value'))} | {_fmt(g.get('threshold'))} | {g.get('status')} |"
              for g in gate_report.get("gates") or []]
    if reasons:
        lines += ["", *[f"- {r}" for r in reasons]]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def json_safe(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _known_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k in METRIC_DIRECTIONS}


SCORE_CHUNK_ROWS = 500_000  # the model's working copies of its input stay bounded on multi-million-row holdouts


def score_frame(model: Any, holdout: pd.DataFrame) -> np.ndarray:
    """Predict with a loaded pyfunc on the columns its signature asks for, in bounded chunks of rows."""
    schema = model.metadata.get_input_schema()
    frame = holdout[schema.input_names()] if schema is not None else holdout
    parts = [np.asarray(model.predict(frame.iloc[start:start + SCORE_CHUNK_ROWS]), dtype=float).reshape(-1)
             for start in range(0, len(frame), SCORE_CHUNK_ROWS)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=float)


def evaluate_challenger(spec: PipelineSpec, run_id: str) -> dict[str, Any]:
    """Score challenger and current champion on the challenger's holdout, apply the gates, record them.

    The champion is loaded by version number (read once from the alias) so the report names exactly
    the model it was compared against; the registry's compare-and-set relies on that.
    """
    from mlflow import MlflowClient

    from evergreen import layout, registry, storage, tracking
    from evergreen.errors import DataQualityError
    from evergreen.tracking import Tag

    client = MlflowClient()
    tags = client.get_run(run_id).data.tags
    holdout = tracking.download_holdout(run_id)
    y_true = holdout[spec.target.name].to_numpy(dtype=float)

    challenger = tracking.load_verified_model(tracking.model_uri_of(run_id, tags),
                                              tracking.model_manifest(tags, f"challenger run {run_id}"))
    challenger_pred = score_frame(challenger, holdout)
    challenger_metrics = compute_metrics(spec.task_type, y_true, challenger_pred)

    baseline_run_id = tags.get(Tag.BASELINE_RUN_ID)
    baseline_run = client.get_run(baseline_run_id) if baseline_run_id else None
    baseline_metrics = _known_metrics(baseline_run.data.metrics) if baseline_run is not None else {}
    xgboost_metrics = challenger_metrics
    candidate, candidate_run_id = XGBOOST, run_id
    # A baseline run logged before baselines were registered models has no model to promote.
    if (baseline_run is not None and Tag.MODEL_SHA256 in baseline_run.data.tags
            and choose_candidate(spec, challenger_metrics, baseline_metrics) == BASELINE):
        # Judged and compared as what would serve: the registered baseline model itself, re-scored.
        baseline_model = tracking.load_verified_model(
            tracking.model_uri_of(baseline_run_id, baseline_run.data.tags),
            tracking.model_manifest(baseline_run.data.tags, f"baseline run {baseline_run_id}"))
        challenger_pred = score_frame(baseline_model, holdout)
        challenger_metrics = baseline_metrics = compute_metrics(spec.task_type, y_true, challenger_pred)
        candidate, candidate_run_id = BASELINE, baseline_run_id

    champion = registry.champion(spec, client)
    champion_metrics: dict[str, float] | None = None
    if champion is not None:
        # A champion that cannot score this holdout (e.g. the feature list changed) raises: an operator
        # must decide, silently treating it as "no champion" would auto-promote anything.
        champion_model = tracking.load_verified_model(
            registry.version_uri(spec, champion.version),
            tracking.model_manifest(champion.tags, f"{spec.registered_model_name} version {champion.version}"))
        champion_pred = score_frame(champion_model, holdout)
        champion_metrics = compute_metrics(spec.task_type, y_true, champion_pred)

    slice_metrics: dict[str, dict[str, float]] = {}
    slice_feature = spec.gates.slice_feature
    if slice_feature:
        slice_metrics = compute_slice_metrics(spec.task_type, holdout[slice_feature], y_true, challenger_pred,
                                              min_rows=spec.gates.min_slice_rows)
    fairness = champion_fairness = None
    if spec.gates.fairness is not None:
        attribute = spec.gates.fairness.attribute
        if attribute not in holdout.columns:
            raise DataQualityError(f"the holdout of run {run_id} lacks the fairness attribute {attribute!r}: "
                                   f"retrain on partitions that carry it")
        fairness = fairness_metrics(spec, holdout[attribute], y_true, challenger_pred)
        if champion is not None:  # reported beside the candidate's, not gated: the card compares them
            champion_fairness = fairness_metrics(spec, holdout[attribute], y_true, champion_pred)

    classes = len(np.unique(y_true)) if spec.task_type == TaskType.BINARY_CLASSIFICATION else None
    report = evaluate_gates(spec, challenger_metrics, baseline_metrics, champion_metrics, slice_metrics, classes,
                            candidate=candidate, fairness=fairness)
    result: dict[str, Any] = {
        **report.to_dict(),
        "spec": spec.name,
        "run_id": run_id,
        "baseline_run_id": baseline_run_id,
        "candidate_run_id": candidate_run_id,
        "xgboost_metrics": xgboost_metrics,
        "model_name": spec.registered_model_name,
        "champion_version": str(champion.version) if champion is not None else None,
        "champion_run_id": champion.run_id if champion is not None else None,
        "champion_fairness": champion_fairness,
        "holdout_rows": len(holdout),
        "data_digest": tags.get(Tag.DATA_DIGEST),
        "as_of": tags.get(Tag.AS_OF),
    }
    result = json_safe(result)
    client.log_dict(run_id, result, tracking.GATES_ARTIFACT)
    client.set_tag(run_id, Tag.GATES_PASSED, str(report.passed).lower())
    storage.write_json_atomic(storage.at(layout.gate_report(spec.name, run_id)), result)
    return result
