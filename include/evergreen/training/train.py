"""Train the XGBoost challenger and its baseline on a window, score the holdout, log it all to MLflow.

XGBoost runs with a fixed seed and thread count, the data is streamed in a fixed order, so the same
window gives the same model and the same metrics.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evergreen import explain, settings, tracking
from evergreen.evaluation import BASELINE, XGBOOST, compute_metrics
from evergreen.spec import PipelineSpec, TaskType
from evergreen.training import model
from evergreen.training.baseline import fit_baseline, predict_baseline
from evergreen.training.model import (
    FeatureSchema,
    booster_scores,
    feature_contributions,
    predict_linear,
    prepare_features,
    xgboost_input,
)
from evergreen.training.streaming import (
    StepTimer,
    TrainingData,
    in_memory_training_data,
    release_memory,
    stream_training_data,
)
from evergreen.training.window import TrainingWindow, load_day, target_values

DEFAULT_NTHREAD = 4  # fixed, not cpu_count(): the thread count must not depend on the worker's size


def xgb_params(spec: PipelineSpec) -> dict[str, Any]:
    """XGBoost parameters: task defaults, then the spec's params, then the determinism settings."""
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        # logloss last: xgboost early-stops on the last eval metric, and a proper score beats AUC there.
        base: dict[str, Any] = {"objective": "binary:logistic", "eval_metric": ["auc", "logloss"]}
    else:
        base = {"objective": "reg:squarederror", "eval_metric": ["rmse"]}
    params = {**base, "tree_method": "hist", "nthread": DEFAULT_NTHREAD, **spec.model.params}
    params["seed"] = spec.model.seed
    params["tree_method"] = "hist"  # QuantileDMatrix needs hist
    return params


@dataclass
class FittedBooster:
    """The early-stopped booster and what fitting it learned about the data."""

    booster: Any
    best_iteration: int
    validation_metrics: dict[str, float]
    schema: FeatureSchema
    sample: pd.DataFrame  # bounded deterministic sample of the training days (baseline, profile)
    valid_glimpse: pd.DataFrame  # a few validation rows (dataset logging)
    rows_train: int
    rows_valid: int


@dataclass
class HoldoutScores:
    """The holdout days (in memory: a few days) and both models' scores on them."""

    frame: pd.DataFrame
    y: np.ndarray
    challenger: np.ndarray
    baseline: np.ndarray


def _best_round_predictions(dvalid: Any) -> Any:
    """An XGBoost callback keeping the predictions on the validation matrix at the rounds that can still
    be the best one; ``.at(best_iteration)`` returns them (None if not kept).

    Each round's evaluation updates XGBoost's prediction cache of that matrix, so reading it is a copy, not
    a pass over the trees (3M rows x 100 trees: ~10 s at L). Early stopping records the best round after
    this callback runs, so at round ``r`` the best is known up to ``r - 1``: the best so far and round ``r``
    are kept, two arrays at most."""
    import xgboost as xgb

    class BestRoundPredictions(xgb.callback.TrainingCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rounds: dict[int, np.ndarray] = {}

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            best = model.attr("best_iteration")
            self.rounds = {r: p for r, p in self.rounds.items() if best is not None and r == int(best)}
            self.rounds[epoch] = model.predict(dvalid)  # the whole model so far: served from the cache
            return False

        def at(self, best_iteration: int) -> np.ndarray | None:
            return self.rounds.get(best_iteration)

    return BestRoundPredictions()


def fit_booster(spec: PipelineSpec, window: TrainingWindow, params: Mapping[str, Any], *, streaming: bool,
                steps: StepTimer) -> FittedBooster:
    """Fit XGBoost on the training days with early stopping on the validation days."""
    import xgboost as xgb

    with contextlib.ExitStack() as stack:
        data: TrainingData | None
        if streaming:
            base = settings.current().training_spill_dir
            spill = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evergreen-train-", dir=base)))
            data = stream_training_data(spec, window, spill, steps)
        else:
            data = in_memory_training_data(spec, window)
            steps.mark("load_in_memory")
        validation = _best_round_predictions(data.dvalid)
        booster = xgb.train(
            dict(params), data.dtrain, num_boost_round=spec.model.num_boost_round,
            evals=[(data.dvalid, "validation")], early_stopping_rounds=spec.model.early_stopping_rounds,
            verbose_eval=False, callbacks=[validation],
        )
        best_iteration = int(booster.best_iteration)
        # The validation scores at the best round, as the fit's evaluation already computed them (on the
        # quantised matrix: splits fall on its bin edges, so they equal the scores on the raw values).
        valid_pred = validation.at(best_iteration)
        booster = booster[: best_iteration + 1]  # keep only the trees up to the early-stopping optimum
        if valid_pred is None:
            valid_pred = booster.predict(data.dvalid)
        steps.mark("fit", best_iteration=best_iteration)
        data.dtrain = data.dvalid = None  # the quantised matrices are the biggest thing alive: free them now
        release_memory()
    fitted = FittedBooster(
        booster=booster, best_iteration=best_iteration,
        validation_metrics=compute_metrics(spec.task_type, data.y_valid, valid_pred),
        schema=data.schema, sample=data.sample, valid_glimpse=data.valid_glimpse,
        rows_train=data.rows_train, rows_valid=data.rows_valid,
    )
    del valid_pred, data
    steps.mark("validation_scores")
    return fitted


def predict_booster(booster: Any, schema: FeatureSchema, frame: pd.DataFrame) -> np.ndarray:
    """The booster's scores on feature rows (what the served model computes, without MLflow around it)."""
    if frame.empty:
        return np.empty(0, dtype="float64")
    return booster_scores(booster, xgboost_input(prepare_features(frame, schema), schema))


def score_holdout(spec: PipelineSpec, window: TrainingWindow, booster: Any, baseline: dict[str, Any],
                  schema: FeatureSchema) -> HoldoutScores:
    """Both models' scores on the holdout days, one day at a time, from one model matrix per day."""
    days = [load_day(spec, ds, window) for ds in window.holdout_days]
    challenger, base = [], []
    for day in days:
        if day.empty:
            continue
        matrix = prepare_features(day, schema)
        challenger.append(booster_scores(booster, xgboost_input(matrix, schema)))
        base.append(predict_linear(baseline, matrix))
    frame = pd.concat(days, ignore_index=True)
    empty = np.empty(0, dtype="float64")
    return HoldoutScores(frame=frame, y=target_values(frame, spec),
                         challenger=np.concatenate(challenger) if challenger else empty,
                         baseline=np.concatenate(base) if base else empty)


def reference_profile(spec: PipelineSpec, window: TrainingWindow, fitted: FittedBooster) -> dict[str, Any]:
    """The drift monitor's reference for the features, from (a bounded sample of) the training days; each
    model adds its own scores part (:func:`with_scores`)."""
    from evergreen.drift.profile import build_reference_profile

    profile = build_reference_profile(fitted.sample, spec, scores=None, seed=spec.model.seed)
    profile["sampled_from_rows"] = fitted.rows_train
    profile["trained_through"] = window.as_of.isoformat()  # the monitor judges only later days
    return profile


def with_scores(spec: PipelineSpec, features_profile: Mapping[str, Any], holdout: HoldoutScores,
                scores: np.ndarray, attributions: Mapping[str, Any] | None) -> dict[str, Any]:
    """A model's reference profile: the features part plus its scores on the holdout, because live scores
    are out-of-sample too (in-sample scores are sharper and would fake drift), its daily holdout metric
    and its SHAP attributions on the holdout (the reference of attribution drift). The scores part depends
    on the scores only, so an empty frame stands in for the holdout."""
    from evergreen.drift.profile import build_reference_profile

    profile = dict(features_profile)
    profile["scores"] = build_reference_profile(holdout.frame.iloc[:0], spec, scores=scores,
                                                seed=spec.model.seed)["scores"]
    profile["scores_source"] = "holdout"
    profile["holdout_daily"] = holdout_daily_metric(spec, holdout, scores)
    profile["attributions"] = None if attributions is None else dict(attributions)
    return profile


def holdout_daily_metric(spec: PipelineSpec, holdout: HoldoutScores, scores: np.ndarray) -> dict[str, Any]:
    """The primary metric on each holdout day: the spread a live day's error is judged against."""
    from evergreen.drift.profile import local_day_codes

    metric = spec.primary_metric
    coded = local_day_codes(holdout.frame, spec)
    codes, days = coded if coded is not None else (np.empty(0, dtype=np.int64), [])  # None: no rows
    values = []
    for code in range(len(days)):
        mask = codes == code
        value = compute_metrics(spec.task_type, holdout.y[mask], scores[mask]).get(metric)
        values.append(value if value is not None and np.isfinite(value) else None)
    return {"metric": metric, "values": values}


@dataclass
class Challenger:
    """A fitted challenger before anything is logged: booster, baseline, holdout scores and metrics."""

    window: TrainingWindow
    params: dict[str, Any]
    fitted: FittedBooster
    baseline: dict[str, Any]  # the linear baseline's exported parameters
    holdout: HoldoutScores
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    profile: dict[str, Any]
    baseline_profile: dict[str, Any]
    steps: StepTimer

    @property
    def attributions(self) -> dict[str, Any]:
        """XGBoost's SHAP summary on the holdout (:func:`evergreen.explain.attribution_summary`)."""
        return self.profile["attributions"]

    @property
    def baseline_attributions(self) -> dict[str, Any]:
        return self.baseline_profile["attributions"]

    def candidate(self, kind: str) -> Candidate:
        """One of the two models of this training as a candidate for promotion."""
        if kind not in (XGBOOST, BASELINE):
            raise ValueError(f"unknown candidate {kind!r}")
        return Candidate(kind=kind, challenger=self)


@dataclass(frozen=True)
class Candidate:
    """The XGBoost model or the baseline of one training: what the gates judge and what would serve."""

    kind: str  # XGBOOST | BASELINE
    challenger: Challenger

    @property
    def window(self) -> TrainingWindow:
        return self.challenger.window

    @property
    def metrics(self) -> dict[str, float]:
        return self.challenger.baseline_metrics if self.kind == BASELINE else self.challenger.metrics

    @property
    def profile(self) -> dict[str, Any]:
        return self.challenger.baseline_profile if self.kind == BASELINE else self.challenger.profile

    @property
    def holdout_scores(self) -> np.ndarray:
        holdout = self.challenger.holdout
        return holdout.baseline if self.kind == BASELINE else holdout.challenger

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Scores on feature rows, as the registered model computes them."""
        fitted = self.challenger.fitted
        if self.kind == BASELINE:
            return predict_baseline(self.challenger.baseline, frame, fitted.schema)
        return predict_booster(fitted.booster, fitted.schema, frame)

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """SHAP values on feature rows, as the registered model computes them."""
        return candidate_contributions(self.kind, self.challenger.fitted, self.challenger.baseline, frame)


def candidate_contributions(kind: str, fitted: FittedBooster, baseline: Mapping[str, Any],
                            frame: pd.DataFrame) -> pd.DataFrame:
    """SHAP values of the XGBoost model or the baseline of one training on feature rows."""
    if kind == BASELINE:
        return feature_contributions(fitted.schema, frame, linear=baseline)
    return feature_contributions(fitted.schema, frame, booster=fitted.booster)


def fit_challenger(spec: PipelineSpec, window: TrainingWindow, *, streaming: bool = True,
                   explain_holdout: bool = True) -> Challenger:
    """The XGBoost fit (early-stopped on the validation days), the linear baseline, both scored on the
    holdout days, and each one's drift reference profile. No MLflow: the training DAG logs the result
    (:func:`train_challenger`), the backtest uses it as it is.

    ``explain_holdout=False`` skips the SHAP summaries of the holdout (the reference of attribution drift;
    the profiles then hold none): for a caller whose verdicts do not use attribution drift (a backtest
    without ``drift.attribution_drift_in_verdict``), they are the costliest step after the fit."""
    if window.spec != spec.name:
        raise ValueError(f"window is for spec {window.spec!r}, not {spec.name!r}")
    params = xgb_params(spec)
    steps = StepTimer()
    fitted = fit_booster(spec, window, params, streaming=streaming, steps=steps)

    baseline = fit_baseline(spec, fitted.schema, fitted.sample, target_values(fitted.sample, spec))
    steps.mark("baseline", rows=len(fitted.sample))

    holdout = score_holdout(spec, window, fitted.booster, baseline, fitted.schema)
    metrics = compute_metrics(spec.task_type, holdout.y, holdout.challenger)
    baseline_metrics = compute_metrics(spec.task_type, holdout.y, holdout.baseline)
    steps.mark("holdout", rows=len(holdout.frame))
    attributions: dict[str, dict[str, Any] | None] = {XGBOOST: None, BASELINE: None}
    if explain_holdout:
        explained = holdout.frame.iloc[explain.summary_positions(len(holdout.frame))]
        attributions = {kind: explain.attribution_summary(candidate_contributions(kind, fitted, baseline, explained))
                        for kind in (XGBOOST, BASELINE)}
        steps.mark("shap", rows=len(explained))
    features_profile = reference_profile(spec, window, fitted)
    return Challenger(window=window, params=params, fitted=fitted, baseline=baseline, holdout=holdout,
                      metrics=metrics, baseline_metrics=baseline_metrics,
                      profile=with_scores(spec, features_profile, holdout, holdout.challenger, attributions[XGBOOST]),
                      baseline_profile=with_scores(spec, features_profile, holdout, holdout.baseline,
                                                   attributions[BASELINE]),
                      steps=steps)


def train_challenger(spec: PipelineSpec, window: TrainingWindow, *, lineage: Mapping[str, Any],
                     streaming: bool = True) -> dict[str, Any]:
    """Train the XGBoost challenger and the linear baseline on ``window``; log both to MLflow.

    ``streaming`` (default) feeds XGBoost one partition at a time, so memory does not grow with the window;
    ``streaming=False`` concatenates the days in pandas first (the reference path: same model, more memory).
    The baseline and the reference profile use at most ``SAMPLE_MAX_ROWS`` training rows (a seeded sample per day).

    Returns ``{run_id, baseline_run_id, model_uri, metrics, baseline_metrics, validation_metrics,
    best_iteration, data_digest, as_of, experiment_id}`` (JSON-safe; metrics are on the holdout days).
    """
    from evergreen.model_card import data_facts

    trained = fit_challenger(spec, window, streaming=streaming)
    fitted = trained.fitted
    facts = data_facts(spec, window, fitted.schema.categories, trained.holdout.frame,
                       rows_used=fitted.rows_train + fitted.rows_valid + len(trained.holdout.frame))
    logged = tracking.log_challenger_run(
        spec, window, lineage=lineage, params=trained.params, streaming=streaming, fitted=fitted,
        holdout=trained.holdout, metrics=trained.metrics, baseline_metrics=trained.baseline_metrics,
        baseline=trained.baseline, profile=trained.profile, baseline_profile=trained.baseline_profile,
        steps=trained.steps, model_code=Path(model.__file__), data_facts=facts,
    )
    return {
        **logged,
        "metrics": trained.metrics,
        "baseline_metrics": trained.baseline_metrics,
        "validation_metrics": trained.fitted.validation_metrics,
        "best_iteration": trained.fitted.best_iteration,
        "data_digest": window.data_digest,
        "as_of": window.as_of.isoformat(),
    }
