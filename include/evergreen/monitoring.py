"""Drift monitoring and drift-triggered retraining decisions.

The monitor gives every published feature partition exactly one drift report against the champion's
reference profile (catching up on days it missed). The sensor side reads reports it has not acted on,
decides (dedup, hysteresis, cooldown) and appends every decision to a trigger ledger in storage:
``models/<spec>/drift_triggers/<ds>-<report sha>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from evergreen import storage
from evergreen.spec import PipelineSpec

log = logging.getLogger(__name__)

MAX_PARTITIONS_PER_RUN = 62
LEDGER = "drift_triggers"
TRIGGERED = "triggered"


# ------------------------------------------------------------------------------------------ monitor
def pending_partitions(spec: PipelineSpec, limit: int = MAX_PARTITIONS_PER_RUN) -> list[str]:
    """Published feature days without a current drift report (none yet, or made from other data).

    Empty while there is no champion: there is nothing to compare with yet.
    """
    from evergreen.drift import NoChampionError, read_drift_report
    from evergreen.scoring import scoring_models

    try:
        scoring_models(spec)
    except NoChampionError as exc:
        log.info("no drift monitoring for %s yet: %s", spec.name, exc)
        return []
    pending = []
    for ds, directory in storage.list_partitions("features", spec.name).items():
        report = read_drift_report(spec, ds)
        manifest = storage.read_manifest(directory) or {}
        if report is None or report.get("features_content_sha256") != manifest.get("content_sha256"):
            pending.append(ds.isoformat())
    if len(pending) > limit:
        log.info("%d partitions need a drift report; doing the oldest %d this run", len(pending), limit)
    return pending[:limit]


def monitor_partition(spec: PipelineSpec, ds: dt.date) -> dict[str, Any]:
    """Score the day (champion + shadow challenger), compare with the champion's reference, write the report."""
    from evergreen.drift import drift_report, load_champion_reference, read_drift_report, write_drift_report
    from evergreen.scoring import CHAMPION, champion_scores, score_partition

    reference = load_champion_reference(spec)
    feature_dir = storage.partition_dir("features", spec.name, ds)
    manifest = storage.read_manifest(feature_dir) or {}
    existing = read_drift_report(spec, ds)
    if existing and existing.get("features_content_sha256") == manifest.get("content_sha256"):
        log.info("drift report for %s ds=%s already exists (champion %s)", spec.name, ds,
                 existing.get("champion_version"))
        return {**_summary(existing), "key": report_key(spec, ds), "written": False}

    scored = score_partition(spec, ds)
    frame = storage.read_partition_frame(feature_dir)
    labels = frame[spec.target.name] if spec.target.name in frame.columns else None
    report = drift_report(
        spec,
        reference.profile,
        frame,
        champion_version=scored["models"][CHAMPION],
        scores=champion_scores(spec, ds),
        labels=labels,
        champion_metric=reference.metrics,
        ds=ds,
    )
    report["features_content_sha256"] = manifest.get("content_sha256")
    report["predictions_content_sha256"] = scored["content_sha256"]
    written = write_drift_report(spec, ds, report)
    log.info("drift report %s ds=%s: drift_detected=%s %s", spec.name, ds, written["drift_detected"],
             "; ".join(written["reasons"]))
    return {**written, "written": True}


def report_key(spec: PipelineSpec, ds: dt.date | str) -> str:
    day = ds if isinstance(ds, str) else ds.isoformat()
    return f"reports/drift/{spec.name}/ds={day}/report.json"


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
    return storage.storage_root() / "models" / spec.name / LEDGER


def trigger_ledger(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Every recorded trigger decision, oldest report first."""
    directory = ledger_dir(spec)
    if not directory.exists():
        return []
    entries = [storage.read_json(p) for p in directory.iterdir() if p.name.endswith(".json")]
    return sorted(entries, key=lambda e: (e["ds"], e["decided_at"], e["report_sha256"]))


def all_reports(spec: PipelineSpec) -> list[dict[str, Any]]:
    """``{ds, key, sha256, drift_detected, reasons}`` of every drift report, by day."""
    from evergreen.drift import REPORTS_ZONE

    base = storage.storage_root().joinpath(*REPORTS_ZONE, spec.name)
    if not base.exists():
        return []
    reports = []
    for child in sorted(base.iterdir(), key=lambda p: p.name):
        path = child / "report.json"
        if not child.name.startswith("ds=") or not path.exists():
            continue
        data = path.read_bytes()
        report = json.loads(data)
        reports.append({
            "ds": child.name[3:],
            "key": report_key(spec, child.name[3:]),
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
    return f"drift__{report['ds']}__{report['sha256'][:12]}"


def decide_retrain(spec: PipelineSpec, *, now: dt.datetime) -> dict[str, Any]:
    """Decide on every unacted report and record each decision in the ledger.

    Per report, in day order: ``no_drift``; ``duplicate`` (a retrain for this report was already
    triggered); ``below_hysteresis`` (fewer than N consecutive drifted reports); ``cooldown`` (a drift
    retrain was triggered less than ``cooldown_hours`` ago); ``superseded`` (a later report in the same
    batch triggers instead); ``triggered`` (at most one per call: the latest eligible report).
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
        elif (streak := consecutive_drifted(report["ds"])) < cfg.consecutive_reports:
            entry["decision"] = "below_hysteresis"
            entry["detail"] = f"{streak} of {cfg.consecutive_reports} consecutive drifted reports"
        elif last_trigger is not None and now - last_trigger < cooldown:
            entry["decision"] = "cooldown"
            entry["detail"] = (f"last drift retrain triggered at {last_trigger.isoformat()}, cooldown "
                               f"{cfg.cooldown_hours:g} h until {(last_trigger + cooldown).isoformat()}")
        else:
            entry["decision"] = "eligible"
            eligible.append(entry)
        decisions.append(entry)

    trigger = None
    if eligible:
        chosen = eligible[-1]
        chosen["decision"] = TRIGGERED
        chosen["trigger_run_id"] = trigger_run_id({"ds": chosen["ds"], "sha256": chosen["report_sha256"]})
        trigger = {
            "run_id": chosen["trigger_run_id"],
            "dag_id": spec.dag_id("training"),
            "conf": {"as_of": chosen["ds"], "reason": "drift", "drift_report": chosen["report"]},
        }
        for entry in eligible[:-1]:
            entry["decision"] = "superseded"
            entry["detail"] = f"the later report of {chosen['ds']} triggers the retrain"

    directory = ledger_dir(spec)
    for entry in decisions:
        storage.write_json_atomic(directory / f"{entry['ds']}-{entry['report_sha256'][:12]}.json", entry)
        log.info("drift trigger decision for %s ds=%s: %s %s", spec.name, entry["ds"], entry["decision"],
                 entry.get("detail") or entry.get("trigger_run_id") or "")
    return {"decisions": decisions, "trigger": trigger}
