"""Monitoring: batch scoring, drift reports in storage, and drift-triggered retraining decisions.

* **Scoring**: each published feature partition scored by the champion (and a shadow challenger) into
  ``predictions/<spec>/ds=.../``, the model version in every row, and a manifest naming the feature
  partition and model versions it came from: same features and versions, same bytes.
* **Monitor**: every published feature partition gets exactly one drift report against the champion's
  reference profile (catching up on days it missed), as ``report.json`` + ``report.html``.
* **Sensor side**: reads reports it has not acted on, decides (dedup, hysteresis, cooldown) and records
  every decision in the trigger ledger (``models/<spec>/drift_triggers/``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from evergreen import explain, layout, registry, storage, tracking
from evergreen.errors import DataQualityError, MissingDataError, NoChampionError
from evergreen.spec import PipelineSpec

log = logging.getLogger(__name__)

MAX_PARTITIONS_PER_RUN = 62
TRIGGERED = "triggered"


# ------------------------------------------------------------------------------------------ scoring
def scoring_models(spec: PipelineSpec) -> dict[str, str]:
    """``{"champion": version[, "challenger": version]}``; the challenger only when it is not the champion."""
    models = registry.serving_versions(spec)
    if not models:
        raise NoChampionError(f"registered model {spec.registered_model_name!r} has no @champion to score with")
    return models


class ServingModels:
    """The serving versions (``{"champion": v[, "challenger": v]}``), each loaded (and verified) at most once
    however many partitions it scores."""

    def __init__(self, spec: PipelineSpec, versions: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.versions = dict(versions) if versions is not None else scoring_models(spec)
        self._loaded: dict[str, Any] = {}

    def model(self, version: str) -> Any:
        if version not in self._loaded:
            self._loaded[version] = registry.load_version(self.spec, version)
        return self._loaded[version]


def score_partition(spec: PipelineSpec, ds: dt.date, models: ServingModels | None = None) -> dict[str, Any]:
    """Score the day's feature partition; reuse the existing output when inputs and versions match."""
    import pandas as pd

    from evergreen.evaluation import score_frame

    feature_dir = storage.partition_dir(layout.FEATURES, spec.name, ds)
    features_manifest = storage.read_manifest(feature_dir)
    if features_manifest is None:
        raise MissingDataError(f"no published feature partition for {spec.name} ds={ds}")
    serving = models or ServingModels(spec)
    models_used = serving.versions
    out_dir = storage.partition_dir(layout.PREDICTIONS, spec.name, ds)
    existing = storage.read_manifest(out_dir)
    top_k = spec.scoring.explain_top_k
    if (existing and existing.get("features_content_sha256") == features_manifest["content_sha256"]
            and existing.get("models") == models_used and existing.get("explain_top_k", 0) == top_k
            and "attributions" in existing):
        log.info("predictions for %s ds=%s are current (models %s); nothing to do", spec.name, ds, models_used)
        return _prediction_reference(out_dir, existing)

    frame = storage.read_partition(feature_dir, expected_sha256=features_manifest["content_sha256"])
    name = spec.registered_model_name
    parts = []
    attributions: dict[str, Any] = {}
    for role, version in models_used.items():
        model = serving.model(version)
        scores = score_frame(model, frame) if len(frame) else []
        part = frame[[*spec.entity_keys, spec.timestamp_column]].copy()
        part["model_role"] = pd.Series([role] * len(frame), dtype="str", index=frame.index)
        part["model_version"] = pd.Series([version] * len(frame), dtype="str", index=frame.index)
        part["prediction"] = pd.Series(scores, dtype="float64", index=frame.index)
        # SHAP on every row when each row gets reason codes, else on a bounded subset for the day's summary.
        rows = frame if top_k else frame.iloc[explain.summary_positions(len(frame))]
        values = explain.contributions(model, rows) if len(rows) else None
        attributions[version] = explain.attribution_summary(values) if values is not None else None
        if top_k and values is not None:
            part = pd.concat([part, explain.reason_codes(values, top_k)], axis=1)
        parts.append(part)
    predictions = pd.concat(parts, ignore_index=True)
    data = storage.frame_to_parquet_bytes(predictions)
    file_name = storage.stage_data_file(out_dir, data)
    manifest = {
        "spec": spec.name,
        "ds": ds.isoformat(),
        "rows": len(predictions),
        "content_sha256": storage.sha256_bytes(data),
        "files": [{"name": file_name, "sha256": storage.sha256_bytes(data), "rows": len(predictions),
                   "bytes": len(data)}],
        "models": models_used,
        "model_name": name,
        "features_content_sha256": features_manifest["content_sha256"],
        "explain_top_k": top_k,
        "attributions": attributions,  # per model version: mean |SHAP| per feature on the day
    }
    storage.publish(out_dir, manifest)
    log.info("scored %s ds=%s: %d rows with %s", spec.name, ds, len(frame), models_used)
    return _prediction_reference(out_dir, manifest)


def _prediction_reference(directory: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(directory),
        "ds": manifest["ds"],
        "rows": manifest["rows"],
        "models": manifest["models"],
        "content_sha256": manifest["content_sha256"],
        "features_content_sha256": manifest["features_content_sha256"],
        "attributions": manifest.get("attributions") or {},
    }


def champion_scores(spec: PipelineSpec, ds: dt.date) -> Any:
    """The champion's predictions for the day, aligned with the feature partition's row order."""
    frame = storage.read_partition(storage.partition_dir(layout.PREDICTIONS, spec.name, ds))
    return frame.loc[frame["model_role"] == registry.CHAMPION, "prediction"].to_numpy()


# ------------------------------------------------------------------------------- reports in storage
class ChampionReference(NamedTuple):
    """What the monitor compares against; unpacks as ``version, profile, metrics, model_uri``."""

    version: str
    profile: dict[str, Any]
    metrics: dict[str, float]
    model_uri: str


def write_drift_report(spec: PipelineSpec, ds: dt.date, report: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``report.html`` then ``report.json`` (readers key on the JSON) atomically; return a reference.

    The reference: ``spec``, ``ds``, ``path`` (report.json URI), ``html_path``, ``key`` (path relative to
    the storage root), ``sha256`` of the JSON, ``drift_detected``, ``reasons``, ``drifted_share``,
    ``drifted_features``, ``champion_version`` and ``rows``.
    """
    from evergreen.drift.html import render_report_html
    from evergreen.evaluation import json_safe

    name, day = spec.name, ds
    if report.get("spec") not in (None, name) or report.get("ds") not in (None, day.isoformat()):
        raise ValueError(f"report is for {report.get('spec')} ds={report.get('ds')}, not {name} ds={day}")
    report = json_safe(dict(report))
    html_path, json_path = storage.at(layout.drift_report_html(name, day)), storage.at(layout.drift_report(name, day))
    storage.write_bytes_atomic(html_path, render_report_html(report).encode("utf-8"))
    digest = storage.write_json_atomic(json_path, report)
    return {
        "spec": name,
        "ds": day.isoformat(),
        "path": str(json_path),
        "html_path": str(html_path),
        "key": layout.drift_report(name, day),
        "sha256": digest,
        "drift_detected": bool(report.get("drift_detected")),
        "reasons": list(report.get("reasons") or []),
        "drifted_share": report.get("drifted_share"),
        "drifted_features": list(report.get("drifted_features") or []),
        "champion_version": report.get("champion_version"),
        "rows": report.get("rows"),
    }


def read_drift_report(spec: PipelineSpec, ds: dt.date) -> dict[str, Any] | None:
    """The stored ``report.json`` for the day, or None when none was written."""
    path = storage.at(layout.drift_report(spec.name, ds))
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
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from evergreen.evaluation import METRIC_DIRECTIONS

    name = spec.registered_model_name
    client = MlflowClient()
    version = registry.champion(spec, client)
    if version is None:
        raise NoChampionError(
            f"registered model {name!r} has no @{registry.CHAMPION} version: train and promote a model for spec "
            f"{spec.name!r} before monitoring drift"
        )
    if not version.run_id:
        raise NoChampionError(f"{name} version {version.version} (@{registry.CHAMPION}) has no MLflow run")
    run = client.get_run(version.run_id)
    try:
        profile = tracking.download_json(version.run_id, tracking.PROFILE_ARTIFACT)
    except (MlflowException, OSError) as exc:
        raise NoChampionError(
            f"{name} version {version.version} (@{registry.CHAMPION}, run {version.run_id}) has no readable "
            f"{tracking.PROFILE_ARTIFACT}: {exc}"
        ) from exc
    metrics = {k: float(v) for k, v in sorted(run.data.metrics.items()) if k in METRIC_DIRECTIONS}
    return ChampionReference(str(version.version), profile, metrics, registry.version_uri(spec, version.version))


# ------------------------------------------------------------------------------------------ monitor
def pending_partitions(spec: PipelineSpec, limit: int = MAX_PARTITIONS_PER_RUN, *, start: dt.date | None = None,
                       end: dt.date | None = None) -> list[str]:
    """Published feature days without a current drift report (none yet, or made from other data), oldest
    first: at most ``limit`` of them, or every one in ``start..end`` when a range is given (history).

    Empty while there is no champion: there is nothing to compare with yet.
    """
    if start is not None or end is not None:
        limit = 10**9
    try:
        scoring_models(spec)
    except NoChampionError as exc:
        log.info("no drift monitoring for %s yet: %s", spec.name, exc)
        return []
    pending = []
    for ds, directory in storage.list_partitions(layout.FEATURES, spec.name).items():
        if (start is not None and ds < start) or (end is not None and ds > end):
            continue
        report = read_drift_report(spec, ds)
        manifest = storage.read_manifest(directory) or {}
        if report is None or report.get("features_content_sha256") != manifest.get("content_sha256"):
            pending.append(ds.isoformat())
    if len(pending) > limit:
        log.info("%d partitions need a drift report; doing the oldest %d this run", len(pending), limit)
    return pending[:limit]


def monitor_partition(spec: PipelineSpec, ds: dt.date, *, reference: ChampionReference | None = None,
                      models: ServingModels | None = None) -> dict[str, Any]:
    """Score the day (champion + shadow challenger), compare with the champion's reference, write the report.

    ``reference`` and ``models`` let a caller monitoring many days load the champion once.
    """
    from evergreen.drift.statistics import drift_report

    reference = reference or load_champion_reference(spec)
    feature_dir = storage.partition_dir(layout.FEATURES, spec.name, ds)
    manifest = storage.read_manifest(feature_dir) or {}
    existing = read_drift_report(spec, ds)
    if existing and existing.get("features_content_sha256") == manifest.get("content_sha256"):
        log.info("drift report for %s ds=%s already exists (champion %s)", spec.name, ds,
                 existing.get("champion_version"))
        return {**_summary(existing), "key": layout.drift_report(spec.name, ds), "written": False}

    scored = score_partition(spec, ds, models)
    frame = storage.read_partition(feature_dir, expected_sha256=manifest.get("content_sha256"))
    labels = frame[spec.target.name] if spec.target.name in frame.columns else None
    report = drift_report(
        spec,
        reference.profile,
        frame,
        champion_version=scored["models"][registry.CHAMPION],
        scores=champion_scores(spec, ds),
        labels=labels,
        champion_metric=reference.metrics,
        ds=ds,
        attributions=scored["attributions"].get(scored["models"][registry.CHAMPION]),
    )
    report["features_content_sha256"] = manifest.get("content_sha256")
    report["predictions_content_sha256"] = scored["content_sha256"]
    written = write_drift_report(spec, ds, report)
    log.info("drift report %s ds=%s: drift_detected=%s %s", spec.name, ds, written["drift_detected"],
             "; ".join(written["reasons"]))
    return {**written, "written": True}


def monitor_partitions(spec: PipelineSpec, days: list[dt.date]) -> list[dict[str, Any]]:
    """:func:`monitor_partition` for each day, the champion's reference and models loaded once for all.

    A day that fails on its data is reported after every other day was monitored (DataQualityError).
    """
    if not days:
        return []
    reference = load_champion_reference(spec)
    models = ServingModels(spec)
    if models.versions[registry.CHAMPION] != reference.version:
        # The alias moved between the two reads: monitor against one champion, the one the models load.
        reference = load_champion_reference(spec)
    results, failures = [], []
    for i, ds in enumerate(days, start=1):
        try:
            results.append(monitor_partition(spec, ds, reference=reference, models=models))
        except DataQualityError as exc:  # one bad day must not hold back the reports of the others
            failures.append(f"ds={ds}: {exc}")
            log.error("could not monitor %s ds=%s: %s", spec.name, ds, exc)
            continue
        log.info("monitored %s ds=%s (%d of %d)", spec.name, ds, i, len(days))
    if failures:
        raise DataQualityError(f"{len(failures)} of {len(days)} days of {spec.name} could not be monitored "
                               f"(the other reports are written):\n" + "\n".join(failures))
    return results


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": report.get("spec"),
        "ds": report.get("ds"),
        "drift_detected": bool(report.get("drift_detected")),
        "reasons": list(report.get("reasons") or []),
        "drifted_features": list(report.get("drifted_features") or []),
        "champion_version": report.get("champion_version"),
    }


# ------------------------------------------------------------------------------------------ sensor
def ledger_dir(spec: PipelineSpec) -> Any:
    return storage.at(layout.trigger_ledger(spec.name))


def trigger_ledger(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Every recorded trigger decision, oldest report first."""
    directory = ledger_dir(spec)
    if not directory.exists():
        return []
    entries = [storage.read_json(p) for p in directory.iterdir() if p.name.endswith(".json")]
    return sorted(entries, key=lambda e: (e["ds"], e["decided_at"], e["report_sha256"]))


def all_reports(spec: PipelineSpec) -> list[dict[str, Any]]:
    """``{ds, key, sha256, drift_detected, reasons}`` of every drift report, by day."""
    base = storage.at(layout.zone(layout.DRIFT_REPORTS, spec.name))
    if not base.exists():
        return []
    reports = []
    for child in sorted(base.iterdir(), key=lambda p: p.name):
        ds = layout.parse_partition_key(child.name)
        path = child / layout.REPORT_JSON
        if ds is None or not path.exists():
            continue
        data = path.read_bytes()
        report = json.loads(data)
        reports.append({
            "ds": ds.isoformat(),
            "key": layout.drift_report(spec.name, ds),
            "sha256": storage.sha256_bytes(data),
            "drift_detected": bool(report.get("drift_detected")),
            "reasons": list(report.get("reasons") or []),
            "champion_version": report.get("champion_version"),
        })
    return reports


def unacted_reports(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Reports (by day and content) with no ledger entry yet: what the sensor waits for."""
    acted = {(e["ds"], e["report_sha256"]) for e in trigger_ledger(spec)}
    return [r for r in all_reports(spec) if (r["ds"], r["sha256"]) not in acted]


def trigger_run_id(report: dict[str, Any]) -> str:
    """Deterministic training run id for a report: the same report can never start two retrains."""
    return f"{report.get('reason', 'drift')}__{report['ds']}__{report['sha256'][:12]}"


PERFORMANCE = "performance"


def performance_verdict(spec: PipelineSpec) -> dict[str, Any] | None:
    """The champion's realized performance (specs with late labels): its primary metric pooled over its
    last ``drift.performance_window_days`` outcome days against its holdout metric, as a report the
    sensor decides on like a drift report (``ds`` the newest outcome day, ``sha256`` of the content);
    None without labels, a champion, or labelled outcomes."""
    from evergreen import outcomes
    from evergreen.evaluation import relative_improvement

    if spec.labels is None:
        return None
    # The sensor pokes this every minute: the champion's run metrics only (not its reference profile).
    from mlflow import MlflowClient

    client = MlflowClient()
    champion = registry.champion(spec, client)
    if champion is None or not champion.run_id:
        return None
    realized = outcomes.realized_metric(spec, str(champion.version), spec.drift.performance_window_days)
    holdout = client.get_run(champion.run_id).data.metrics.get(spec.primary_metric)
    if realized is None or realized["value"] is None or holdout is None:
        return None
    drop = -relative_improvement(spec.primary_metric, float(realized["value"]), float(holdout))
    degraded = drop > spec.drift.max_performance_drop
    body = {"spec": spec.name, "champion_version": str(champion.version), "metric": spec.primary_metric,
            "realized": realized["value"], "holdout": holdout, "relative_drop": drop, "rows": realized["rows"],
            "days": realized["days"], "degraded": degraded}
    reasons = [f"realized {spec.primary_metric} {realized['value']:.4f} over {len(realized['days'])} outcome days "
               f"is {drop:.1%} worse than the champion's holdout {holdout:.4f} (max_performance_drop "
               f"{spec.drift.max_performance_drop:.1%})"] if degraded else []
    return {"ds": realized["days"][-1], "key": layout.performance_report(spec.name), "reason": PERFORMANCE,
            "sha256": storage.sha256_bytes(storage.canonical_json(body)), "drift_detected": degraded,
            "reasons": reasons, "champion_version": str(champion.version), "performance": body}


def unacted_performance(spec: PipelineSpec) -> dict[str, Any] | None:
    """The performance verdict when the ledger has no decision on it yet."""
    verdict = performance_verdict(spec)
    if verdict is None:
        return None
    acted = {(e["ds"], e["report_sha256"]) for e in trigger_ledger(spec)}
    return None if (verdict["ds"], verdict["sha256"]) in acted else verdict


def retrain_verdict(*, streak: int, required: int, last_trigger: dt.datetime | None, now: dt.datetime,
                    cooldown: dt.timedelta) -> tuple[str, str]:
    """Whether a drifted report may trigger a retrain: ``(decision, detail)`` with decision
    ``below_hysteresis`` (fewer than ``required`` consecutive drifted reports), ``cooldown`` (the last
    trigger is less than ``cooldown`` before ``now``) or ``eligible``. The sensor passes wall-clock times,
    the backtest data times."""
    if streak < required:
        return "below_hysteresis", f"{streak} of {required} consecutive drifted reports"
    if last_trigger is not None and now - last_trigger < cooldown:
        return "cooldown", (f"last retrain triggered at {last_trigger.isoformat()}, cooldown "
                            f"{cooldown.total_seconds() / 3600:g} h until {(last_trigger + cooldown).isoformat()}")
    return "eligible", ""


def decide_retrain(spec: PipelineSpec, *, now: dt.datetime) -> dict[str, Any]:
    """Decide on every unacted report and record each decision in the ledger.

    Per report, in day order: ``no_drift``; ``duplicate`` (a retrain for this report was already
    triggered); ``below_hysteresis`` (fewer than N consecutive drifted reports); ``cooldown`` (a drift
    retrain was triggered less than ``cooldown_hours`` ago); ``superseded`` (a later report in the same
    batch triggers instead); ``triggered`` (at most one per call: the latest eligible report). With late
    labels, the champion's realized performance (:func:`performance_verdict`) is decided the same way,
    with ``reason: performance``, and wins over a drift report when both are eligible.
    Returns ``{"decisions": [...], "trigger": {run_id, conf} | None}``.
    """
    cfg = spec.drift
    now = now.astimezone(dt.UTC)
    ledger = trigger_ledger(spec)
    reports = all_reports(spec)
    pending = unacted_reports(spec)
    triggered_runs = {e.get("trigger_run_id") for e in ledger if e["decision"] == TRIGGERED}
    last_trigger = max((dt.datetime.fromisoformat(e["decided_at"]) for e in ledger if e["decision"] == TRIGGERED),
                       default=None)
    cooldown = dt.timedelta(hours=cfg.cooldown_hours)
    order = [r["ds"] for r in reports]

    def consecutive_drifted(ds: str) -> int:
        count = 0
        for report in reversed(reports[: order.index(ds) + 1]):
            if not report["drift_detected"]:
                break
            count += 1
        return count

    decisions: list[dict[str, Any]] = []
    eligible: list[dict[str, Any]] = []
    performance = unacted_performance(spec)

    def judge(entry: dict[str, Any], streak: int) -> None:
        """Hysteresis and cooldown for a degraded report (drift or realized performance)."""
        decision, detail = retrain_verdict(streak=streak, required=cfg.consecutive_reports,
                                           last_trigger=last_trigger, now=now, cooldown=cooldown)
        entry["decision"] = decision
        if detail:
            entry["detail"] = detail
        if decision == "eligible":
            eligible.append(entry)

    for report in pending:
        run_id = trigger_run_id(report)
        entry = {
            "spec": spec.name,
            "ds": report["ds"],
            "report": report["key"],
            "report_sha256": report["sha256"],
            "drift_detected": report["drift_detected"],
            "reasons": report["reasons"],
            "decided_at": now.isoformat(),
            "trigger_run_id": None,
        }
        if not report["drift_detected"]:
            entry["decision"] = "no_drift"
        elif run_id in triggered_runs:
            entry["decision"] = "duplicate"
        else:
            judge(entry, consecutive_drifted(report["ds"]))
        decisions.append(entry)

    if performance is not None:
        # Realized outcomes are the ground truth the drift checks stand in for: judged the same way, and
        # when both are eligible, the performance retrain is the one triggered.
        entry = {"spec": spec.name, "ds": performance["ds"], "report": performance["key"],
                 "report_sha256": performance["sha256"], "drift_detected": performance["drift_detected"],
                 "reasons": performance["reasons"], "decided_at": now.isoformat(), "trigger_run_id": None,
                 "reason": PERFORMANCE, "performance": performance["performance"]}
        earlier = [e for e in ledger if e.get("reason") == PERFORMANCE]
        streak = 1
        for previous in reversed(earlier):
            if not previous["drift_detected"]:
                break
            streak += 1
        if not performance["drift_detected"]:
            entry["decision"] = "no_drift"
        else:
            judge(entry, streak)
        decisions.append(entry)

    trigger = None
    if eligible:
        chosen = next((e for e in eligible if e.get("reason") == PERFORMANCE), eligible[-1])
        chosen["decision"] = TRIGGERED
        reason = chosen.get("reason", "drift")
        chosen["trigger_run_id"] = trigger_run_id({"ds": chosen["ds"], "sha256": chosen["report_sha256"],
                                                   "reason": reason})
        trigger = {
            "run_id": chosen["trigger_run_id"],
            "dag_id": spec.dag_id("training"),
            "conf": {"as_of": chosen["ds"], "reason": reason, "drift_report": chosen["report"]},
        }
        for entry in eligible:
            if entry is not chosen:
                entry["decision"] = "superseded"
                entry["detail"] = f"the {reason} report of {chosen['ds']} triggers the retrain"

    for entry in decisions:
        key = layout.trigger_entry(spec.name, dt.date.fromisoformat(entry["ds"]), entry["report_sha256"])
        storage.write_json_atomic(storage.at(key), entry)
        log.info("drift trigger decision for %s ds=%s: %s %s", spec.name, entry["ds"], entry["decision"],
                 entry.get("detail") or entry.get("trigger_run_id") or "")
    return {"decisions": decisions, "trigger": trigger}
