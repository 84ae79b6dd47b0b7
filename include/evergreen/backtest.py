"""Continuous-training backtest: replay a spec's published history day by day on a data-time clock.

For each published day D from ``start`` to ``end`` and each policy: score D with the model that policy
would be serving on D (trained on days before D only), take the day's metric from its labels and the
drift verdict against that model's reference, then let the policy decide whether to retrain on the
window ending D (the new model serves from D+1). The pieces are the library's own: ``select_window``,
``fit_challenger`` (the XGBoost fit, baseline and holdout of the training DAG), ``evaluate_gates``,
``promotion_outcome``, ``drift_report`` and ``retrain_verdict`` (hysteresis and a cooldown, here in data
time). Nothing is registered and nothing is written under the storage root: the champion of each policy
is an in-memory scratch registry, and the report goes to the output folder. A fit is done once per
window end and shared by the policies that ask for it.

A training's candidate is its better model on the holdout, XGBoost or the linear baseline, as in the
training DAG (``choose_candidate``). Policies: ``static`` (the initial model forever), ``every:N`` (retrain every N days, the candidate always
replaces the champion), ``gated:N`` (every N days, through the spec's gates) and ``triggered`` (when the
drift verdict says so, with the spec's hysteresis and cooldown, through the gates) and ``performance``
(when the serving model's realized primary metric over its last ``drift.performance_window_days`` days,
on the labels known each day, is worse than its holdout metric by more than ``max_performance_drop``:
the sensor's performance trigger, with the same hysteresis and cooldown, through the gates).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evergreen import explain, layout, storage
from evergreen.drift.statistics import drift_report
from evergreen.errors import DataQualityError, EvergreenError
from evergreen.etl.features import add_time_features
from evergreen.evaluation import (
    BASELINE,
    PROMOTING,
    choose_candidate,
    compute_metrics,
    compute_slice_metrics,
    evaluate_gates,
    fairness_metrics,
    higher_is_better,
    json_safe,
    promotion_outcome,
    relative_improvement,
)
from evergreen.monitoring import retrain_verdict
from evergreen.spec import PipelineSpec, TaskType
from evergreen.training.train import Candidate, Challenger, fit_challenger
from evergreen.training.window import read_features, select_window

REPORT_JSON = "backtest.json"
REPORT_HTML = "backtest.html"


class BacktestError(EvergreenError):
    """The backtest cannot run as asked (bad policy, no published days, no history to start from)."""


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str  # static | every | gated | triggered | performance
    every: int = 0

    @property
    def gated(self) -> bool:
        return self.kind in ("gated", "triggered", "performance")


def parse_policies(text: str | Sequence[str]) -> list[Policy]:
    """``static,every:1,every:7,gated:1,triggered`` -> policies (a clear error for anything else)."""
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    policies = []
    for name in names:
        kind, _, arg = name.partition(":")
        if kind in ("static", "triggered", "performance") and not arg:
            policies.append(Policy(name, kind))
        elif kind in ("every", "gated") and arg.isdigit() and int(arg) >= 1:
            policies.append(Policy(name, kind, int(arg)))
        else:
            raise BacktestError(f"unknown policy {name!r}: use static, every:N, gated:N, triggered or performance")
    if not policies or len({p.name for p in policies}) != len(policies):
        raise BacktestError(f"give each policy once: {names}")
    return policies


def daily_metric(spec: PipelineSpec) -> tuple[str, str]:
    """The metric every day is scored with, and its direction: RMSE (min) or accuracy (max)."""
    return ("rmse", "min") if spec.task_type == TaskType.REGRESSION else ("accuracy", "max")


@dataclass
class _Day:
    frame: pd.DataFrame  # every row (drift), time features added, labels as they eventually arrived
    labelled: np.ndarray  # mask of rows with a label
    decision_labels: pd.Series  # the labels known on the day itself (what the drift verdict may use)


@dataclass
class _PolicyState:
    model: Candidate
    last_retrain: dt.date
    streak: int = 0
    daily: list[dict[str, Any]] = field(default_factory=list)
    retrains: int = 0
    promotions: int = 0
    baseline_promotions: int = 0
    alarms: int = 0
    seconds: float = 0.0
    served: list[tuple[dt.date, np.ndarray]] = field(default_factory=list)  # days the model served, its scores
    performance_streak: int = 0


class _Replay:
    """Caches shared by the policies: one fit per window end, one scoring and drift verdict per (model, day)."""

    def __init__(self, spec: PipelineSpec, window_days: int | None) -> None:
        self.spec = spec
        self.window_days = window_days
        self.fits: dict[dt.date, Challenger | None] = {}
        self.fit_seconds: dict[dt.date, float] = {}
        self.fit_errors: dict[dt.date, str] = {}
        self.days: dict[dt.date, _Day] = {}
        self.scores: dict[tuple[dt.date, str, dt.date], np.ndarray] = {}
        self.verdicts: dict[tuple[dt.date, str, dt.date], dict[str, Any]] = {}
        # Attribution drift is judged as the monitor judges it (the serving model's SHAP summary of the day
        # against its holdout's) when it can change a verdict; otherwise neither side is computed.
        self.attributions = spec.drift.attribution_drift_in_verdict

    def fit(self, as_of: dt.date) -> Challenger | None:
        """The challenger trained on the window ending ``as_of`` (None when that window is not trainable)."""
        if as_of not in self.fits:
            began = time.perf_counter()
            try:
                window = select_window(self.spec, as_of, self.window_days)
                self.fits[as_of] = fit_challenger(self.spec, window, explain_holdout=self.attributions)
            except DataQualityError as exc:  # too few days or rows, a single class: keep serving
                self.fits[as_of] = None
                self.fit_errors[as_of] = str(exc)
            self.fit_seconds[as_of] = time.perf_counter() - began
        return self.fits[as_of]

    def day(self, ds: dt.date) -> _Day:
        if ds not in self.days:
            spec = self.spec
            frame = add_time_features(read_features(spec, ds), spec, overwrite=False)
            known = None
            if spec.labels is not None:
                # Late labels: the day is scored on its labels as they eventually arrived (within the delay),
                # but the drift verdict on day D sees only those that had arrived by D.
                from evergreen.outcomes import label_book

                realized = label_book(spec, ds + dt.timedelta(days=spec.labels.max_delay_days), since=ds)
                known = label_book(spec, ds, since=ds).attach(frame, ds)[0][spec.target.name]
                frame = realized.attach(frame, ds)[0]
            target = pd.to_numeric(frame[spec.target.name], errors="coerce")
            self.days[ds] = _Day(frame=frame, labelled=target.notna().to_numpy(),
                                 decision_labels=frame[spec.target.name] if known is None else known)
        return self.days[ds]

    def predictions(self, model: Candidate, ds: dt.date) -> tuple[np.ndarray, float]:
        """The model's scores on every row of ``ds``, and the seconds it took (0 when cached)."""
        key = (model.window.as_of, model.kind, ds)
        if key in self.scores:
            return self.scores[key], 0.0
        began = time.perf_counter()
        self.scores[key] = model.predict(self.day(ds).frame)
        return self.scores[key], time.perf_counter() - began

    def known_labels(self, ds: dt.date, as_of: dt.date) -> np.ndarray:
        """Day ``ds``'s labels as known on day ``as_of`` (float, NaN where none had arrived)."""
        spec = self.spec
        if spec.labels is None or ds == as_of:
            labels = self.day(ds).decision_labels
        else:
            from evergreen.outcomes import label_book

            labels = label_book(spec, as_of, since=ds).attach(self.day(ds).frame, ds)[0][spec.target.name]
        return pd.to_numeric(labels, errors="coerce").to_numpy(dtype="float64")

    def realized(self, served: list[tuple[dt.date, np.ndarray]], as_of: dt.date, days: int) -> float | None:
        """The primary metric pooled over the last ``days`` served days, on the labels known at ``as_of``."""
        ys, preds = [], []
        for ds, scores in served[-days:]:
            y = self.known_labels(ds, as_of)
            mask = ~np.isnan(y)
            ys.append(y[mask])
            preds.append(scores[mask])
        y = np.concatenate(ys) if ys else np.empty(0)
        if not y.size:
            return None
        return compute_metrics(self.spec.task_type, y, np.concatenate(preds)).get(self.spec.primary_metric)

    def verdict(self, model: Candidate, ds: dt.date, scores: np.ndarray) -> dict[str, Any]:
        key = (model.window.as_of, model.kind, ds)
        if key not in self.verdicts:
            day = self.day(ds)
            attributions = None
            if self.attributions and len(day.frame):
                rows = day.frame.iloc[explain.summary_positions(len(day.frame))]
                attributions = explain.attribution_summary(model.contributions(rows))
            report = drift_report(self.spec, model.profile, day.frame, champion_version=model.window.as_of.isoformat(),
                                  scores=scores, labels=day.decision_labels,
                                  champion_metric=model.metrics, ds=ds, attributions=attributions)
            self.verdicts[key] = {"drift_detected": report["drift_detected"], "reasons": report["reasons"]}
        return self.verdicts[key]


def best_candidate(spec: PipelineSpec, trained: Challenger) -> Candidate:
    """The model of a training that the gates judge (:func:`evergreen.evaluation.choose_candidate`)."""
    return trained.candidate(choose_candidate(spec, trained.metrics, trained.baseline_metrics))


def _gate(spec: PipelineSpec, candidate: Candidate, champion: Candidate) -> dict[str, Any]:
    """The training DAG's gates for ``candidate``: the champion re-scored on the candidate's holdout."""
    holdout = candidate.challenger.holdout
    champion_metrics = compute_metrics(spec.task_type, holdout.y, champion.predict(holdout.frame))
    slices: dict[str, dict[str, float]] = {}
    if spec.gates.slice_feature:
        slices = compute_slice_metrics(spec.task_type, holdout.frame[spec.gates.slice_feature], holdout.y,
                                       candidate.holdout_scores, min_rows=spec.gates.min_slice_rows)
    fairness = None
    if spec.gates.fairness is not None:
        fairness = fairness_metrics(spec, holdout.frame[spec.gates.fairness.attribute], holdout.y,
                                    candidate.holdout_scores)
    classes = len(np.unique(holdout.y)) if spec.task_type == TaskType.BINARY_CLASSIFICATION else None
    report = evaluate_gates(spec, candidate.metrics, candidate.challenger.baseline_metrics, champion_metrics, slices,
                            classes, candidate=candidate.kind, fairness=fairness)
    return {**report.to_dict(), "champion_version": "scratch"}


def _day_metrics(spec: PipelineSpec, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if y.size == 0:
        return {}
    return compute_metrics(spec.task_type, y, pred)


def run_backtest(spec: PipelineSpec, start: dt.date, end: dt.date, policies: Sequence[Policy], *,
                 window_days: int | None = None) -> dict[str, Any]:
    """Replay ``start..end`` (published days only) under each policy; the report (see the module docstring)."""
    if end < start:
        raise BacktestError(f"end {end} is before start {start}")
    days = sorted(d for d in storage.list_partitions(layout.FEATURES, spec.name) if start <= d <= end)
    if not days:
        raise BacktestError(f"no published {spec.name} feature partitions between {start} and {end}")
    replay = _Replay(spec, window_days)
    began = time.perf_counter()
    initial_as_of = days[0] - dt.timedelta(days=1)
    initial = replay.fit(initial_as_of)
    if initial is None:
        raise BacktestError(f"cannot train the initial model on the window ending {initial_as_of}: "
                            f"{replay.fit_errors[initial_as_of]}")
    metric, direction = daily_metric(spec)
    primary = spec.primary_metric
    states = {p.name: _PolicyState(model=best_candidate(spec, initial), last_retrain=initial_as_of,
                                   seconds=replay.fit_seconds[initial_as_of])
              for p in policies}
    cooldown_days = spec.drift.cooldown_hours / 24.0

    for index, ds in enumerate(days):
        day = replay.day(ds)
        y_all = pd.to_numeric(day.frame[spec.target.name], errors="coerce").to_numpy(dtype="float64")
        for policy in policies:
            state = states[policy.name]
            model = state.model
            scores, seconds = replay.predictions(model, ds)
            state.seconds += seconds
            mask = day.labelled
            metrics = _day_metrics(spec, y_all[mask], scores[mask])
            verdict = replay.verdict(model, ds, scores)  # days the model was trained on are not judged
            alarm = verdict["drift_detected"]
            state.alarms += int(alarm)
            state.streak = state.streak + 1 if alarm else 0
            record: dict[str, Any] = {
                "ds": ds.isoformat(), "rows": int(mask.sum()), "score": metrics.get(metric),
                "primary": metrics.get(primary), "model": model.window.as_of.isoformat(), "candidate": model.kind,
                "alarm": alarm,
                "retrained": False, "promoted": False, "reason": None,
                "drift_reasons": verdict["reasons"] if alarm else [],
            }

            due = policy.kind in ("every", "gated") and (index + 1) % policy.every == 0
            if policy.kind == "performance" and ds > model.window.as_of:
                # The champion's realized metric over its last days, as the sensor judges it with outcomes.
                state.served.append((ds, scores))
                realized = replay.realized(state.served, ds, spec.drift.performance_window_days)
                holdout = model.metrics.get(primary)
                drop = (-relative_improvement(primary, float(realized), float(holdout))
                        if realized is not None and holdout is not None else 0.0)
                state.performance_streak = state.performance_streak + 1 if drop > spec.drift.max_performance_drop else 0
                if state.performance_streak:
                    decision, detail = retrain_verdict(
                        streak=state.performance_streak, required=spec.drift.consecutive_reports,
                        last_trigger=dt.datetime.combine(state.last_retrain, dt.time(), tzinfo=dt.UTC),
                        now=dt.datetime.combine(ds, dt.time(), tzinfo=dt.UTC), cooldown=dt.timedelta(days=cooldown_days))
                    due = decision == "eligible"
                    record["reason"] = detail or (f"performance: realized {primary} {realized:.4f} is {drop:.1%} worse "
                                                  f"than the holdout {holdout:.4f}")
            if policy.kind == "triggered" and alarm:
                decision, detail = retrain_verdict(
                    streak=state.streak, required=spec.drift.consecutive_reports,
                    last_trigger=dt.datetime.combine(state.last_retrain, dt.time(), tzinfo=dt.UTC),
                    now=dt.datetime.combine(ds, dt.time(), tzinfo=dt.UTC),
                    cooldown=dt.timedelta(days=cooldown_days))
                due = decision == "eligible"
                record["reason"] = detail or f"drift: {'; '.join(verdict['reasons'][:2])}"
            if due:
                trained = replay.fit(ds)
                state.seconds += replay.fit_seconds[ds]  # a fit shared with another policy counts for both
                if trained is None:
                    record["reason"] = f"not trainable: {replay.fit_errors[ds][:200]}"
                else:
                    candidate = best_candidate(spec, trained)
                    state.retrains += 1
                    state.last_retrain = ds
                    record["retrained"] = True
                    if policy.gated:
                        gates = _gate(spec, candidate, model)
                        outcome, reasons = promotion_outcome(gates, bar_blocks=spec.gates.bar_blocks)
                        promote = outcome in PROMOTING
                        # Why it retrained (trigger policies), then what the gates decided.
                        record["reason"] = "; ".join(r for r in (record["reason"], *(reasons or ["gates passed"])) if r)
                    else:
                        promote = True
                        record["reason"] = record["reason"] or "scheduled"
                    if promote:
                        state.model = candidate
                        state.served, state.performance_streak = [], 0
                        state.promotions += 1
                        state.baseline_promotions += int(candidate.kind == BASELINE)
                        record["promoted"] = True
                        state.streak = 0
            state.daily.append(record)

    out_policies = {p.name: _summary(states[p.name], metric, primary) for p in policies}
    fits = sum(1 for f in replay.fits.values() if f is not None)
    return json_safe({
        "spec": spec.name,
        "start": days[0].isoformat(),
        "end": days[-1].isoformat(),
        "days": len(days),
        "metric": metric,
        "direction": direction,
        "primary_metric": primary,
        "primary_direction": "max" if higher_is_better(primary) else "min",
        "window_days": window_days or spec.window.days,
        "initial_model": initial_as_of.isoformat(),
        "fits": fits,
        "fit_seconds": round(sum(replay.fit_seconds.values()), 3),
        "wall_seconds": round(time.perf_counter() - began, 3),
        "policies": out_policies,
    })


def _weighted(daily: list[dict[str, Any]], key: str) -> float | None:
    pairs = [(d[key], d["rows"]) for d in daily if d.get(key) is not None and d["rows"]]
    total = sum(rows for _, rows in pairs)
    return sum(v * rows for v, rows in pairs) / total if total else None


def _summary(state: _PolicyState, metric: str, primary: str) -> dict[str, Any]:
    return {
        "score": _weighted(state.daily, "score"),
        "primary_score": _weighted(state.daily, "primary"),
        "retrains": state.retrains,
        "promotions": state.promotions,
        "baseline_promotions": state.baseline_promotions,
        "alarms": state.alarms,
        "alarm_share": state.alarms / len(state.daily) if state.daily else 0.0,
        "compute_seconds": round(state.seconds, 3),
        "daily": state.daily,
    }


# ------------------------------------------------------------------------------------------ output


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, str]:
    """``backtest.json`` and ``backtest.html`` in ``out_dir`` (a local folder); their paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / REPORT_JSON, folder / REPORT_HTML
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    html_path.write_text(render_html(report))
    return {"json": str(json_path), "html": str(html_path)}


def publish_report(spec: PipelineSpec, report: Mapping[str, Any], *, log_to_mlflow: bool = True) -> dict[str, Any]:
    """Write the report under the storage root (``layout.backtest_dir``) and log it to MLflow (an
    ``<spec>-backtests`` experiment: one run, a score metric per policy, both files as artifacts)."""
    start, end = dt.date.fromisoformat(report["start"]), dt.date.fromisoformat(report["end"])
    key = layout.backtest_dir(spec.name, start, end)
    folder = storage.at(key)
    storage.write_json_atomic(folder / REPORT_JSON, report)
    storage.write_bytes_atomic(folder / REPORT_HTML, render_html(report).encode())
    out: dict[str, Any] = {"key": f"{key}/{REPORT_JSON}", "html": f"{key}/{REPORT_HTML}", "run_id": None}
    if log_to_mlflow:
        import mlflow

        from evergreen import tracking

        experiment = tracking.ensure_experiment(f"{spec.name}-backtests")
        with mlflow.start_run(experiment_id=experiment, run_name=f"{spec.name}-backtest-{start}-{end}") as run:
            mlflow.set_tags({"evergreen.spec": spec.name, "evergreen.kind": "backtest",
                             "evergreen.backtest.start": report["start"], "evergreen.backtest.end": report["end"]})
            for name, policy in report["policies"].items():
                label = name.replace(":", "_")
                for field_name in ("score", "primary_score", "retrains", "alarms", "compute_seconds"):
                    if policy.get(field_name) is not None:
                        mlflow.log_metric(f"{label}.{field_name}", float(policy[field_name]))
            mlflow.log_dict(dict(report), REPORT_JSON)
            mlflow.log_text(render_html(report), REPORT_HTML)
            out["run_id"] = run.info.run_id
    return out


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: the daily metric of every policy on one chart (retrains marked) and the
    summary table. Plain SVG, no script."""
    from evergreen.charts import line_chart

    policies = report["policies"]
    days = [d["ds"] for d in next(iter(policies.values()))["daily"]]
    chart = line_chart(
        days, {name: [d["score"] for d in p["daily"]] for name, p in policies.items()},
        title=f"{report['metric']} per day ({'lower' if report['direction'] == 'min' else 'higher'} is better)",
        markers={name: [d["promoted"] for d in p["daily"]] for name, p in policies.items()},
        marker_text="new model after")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_fmt(p['score'])}</td><td>{_fmt(p['primary_score'])}</td>"
        f"<td>{p['retrains']}</td><td>{p['promotions']}</td><td>{p['alarms']} ({p['alarm_share']:.0%})</td>"
        f"<td>{p['compute_seconds']:.1f}</td></tr>"
        for name, p in policies.items())
    title = f"Backtest of {report['spec']}: {report['start']} .. {report['end']}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{report['days']} days, {report['fits']} fits "
            f"({report['fit_seconds']:.1f} s), window {report['window_days']} days. Dots: a new model serves "
            f"from the next day.</p>{chart}"
            f"<table><tr><th>policy</th><th>{html.escape(report['metric'])}</th>"
            f"<th>{html.escape(report['primary_metric'])}</th><th>retrains</th><th>promotions</th>"
            f"<th>alarm days</th><th>compute s</th></tr>{rows}</table></body></html>\n")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
