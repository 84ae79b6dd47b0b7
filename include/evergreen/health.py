"""Model health: what the Evergreen page and the metrics endpoint show of a spec, read-only.

One function gathers it all from storage and the registry: the serving aliases (champion, challenger,
previous champion) with their lineage, the latest decision and its gate report, the drift trend (share of
drifted features and the key features' PSI per day), the realized-performance trend where outcomes
exist, the trigger ledger and the decision history. Nothing here writes: actions go through Airflow.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from evergreen import layout, storage
from evergreen.spec import PipelineSpec

ALIASES = ("champion", "challenger", "previous_champion")  # registry.CHAMPION, CHALLENGER, PREVIOUS_CHAMPION
TREND_DAYS = 90  # days of drift and performance the page charts
HISTORY_ROWS = 30  # newest ledger entries and decisions listed


def mlflow_ui_url() -> str | None:
    """Where users open MLflow: ``EVERGREEN_MLFLOW_UI_URL``, else an http(s) tracking server (its own UI)."""
    import mlflow

    from evergreen import settings

    explicit = settings.current().mlflow_ui_url
    if explicit:
        return explicit
    tracking = mlflow.get_tracking_uri()
    return tracking.rstrip("/") if tracking.startswith(("http://", "https://")) else None


def alias_summary(spec: PipelineSpec, client: Any) -> dict[str, dict[str, Any] | None]:
    """Per alias: version, run, candidate kind, ``as_of``, data digest, primary metric, MLflow link."""
    from evergreen import registry
    from evergreen.tracking import Tag

    ui = mlflow_ui_url()
    out: dict[str, dict[str, Any] | None] = {}
    for alias in ALIASES:
        version = registry.model_version(client, spec.registered_model_name, alias)
        if version is None:
            out[alias] = None
            continue
        tags = dict(version.tags or {})
        run = client.get_run(version.run_id)
        judged = tags.get(Tag.PRIMARY_METRIC_VALUE)  # the holdout metric the gates judged it on
        metric = float(judged) if judged not in (None, "", "None") else run.data.metrics.get(spec.primary_metric)
        out[alias] = {
            "version": str(version.version),
            "run_id": version.run_id,
            "candidate": tags.get(Tag.CANDIDATE, "xgboost"),
            "as_of": run.data.tags.get(Tag.AS_OF),
            "partitions": run.data.tags.get(Tag.PARTITIONS),
            "data_digest": run.data.tags.get(Tag.DATA_DIGEST),
            "primary_metric": spec.primary_metric,
            "holdout_metric": metric,
            "registered_at": dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.UTC).isoformat(),
            "mlflow_url": (f"{ui}/#/experiments/{run.info.experiment_id}/runs/{version.run_id}" if ui else None),
        }
    return out


def drift_trend(spec: PipelineSpec, days: int = TREND_DAYS) -> list[dict[str, Any]]:
    """Per reported day (the newest ``days``): drift verdict, share of drifted features, the key features'
    PSI, the champion version judged, and the HTML report's key."""
    base = storage.at(layout.zone(layout.DRIFT_REPORTS, spec.name))
    if not base.exists():
        return []
    found = sorted((ds, child) for child in base.iterdir() if (ds := layout.parse_partition_key(child.name)))
    trend = []
    for ds, child in found[-days:]:
        path = child / layout.REPORT_JSON
        if not path.exists():
            continue
        report = storage.read_json(path)
        features = report.get("features") or {}
        trend.append({
            "ds": ds.isoformat(),
            "drift_detected": bool(report.get("drift_detected")),
            "drifted_share": report.get("drifted_share"),
            "drifted_features": list(report.get("drifted_features") or []),
            "key_psi": {name: (features.get(name) or {}).get("psi") for name in spec.drift.key_features},
            "champion_version": report.get("champion_version"),
            "reasons": list(report.get("reasons") or [])[:3],
            "html": layout.drift_report_html(spec.name, ds),
        })
    return trend


def performance_trend(spec: PipelineSpec, days: int = TREND_DAYS) -> list[dict[str, Any]]:
    """Per outcome day: each model's realized primary metric and label coverage (late-label specs)."""
    if spec.labels is None:
        return []
    from evergreen.outcomes import performance_days

    trend = []
    for day in performance_days(spec)[-days:]:
        models = {role: {"version": m["version"], "coverage": m["coverage"], "labelled": m["labelled"],
                         "metric": (m.get("metrics") or {}).get(spec.primary_metric)}
                  for role, m in (day.get("models") or {}).items()}
        trend.append({"ds": day["ds"], "labels_as_of": day["labels_as_of"], "models": models})
    return trend


def latest_gate_report(spec: PipelineSpec, decisions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The gate report of the newest decision that has one (a training run's)."""
    for record in reversed(decisions):
        run_id = record.get("run_id")
        if not run_id:
            continue
        path = storage.at(layout.gate_report(spec.name, run_id))
        if path.exists():
            return {"decision": record, "report": storage.read_json(path)}
    return None


def newest_partition(spec: PipelineSpec) -> str | None:
    found = storage.list_partitions(layout.FEATURES, spec.name)
    return max(found).isoformat() if found else None


def last_promotion(spec: PipelineSpec) -> str | None:
    """When the champion last changed (a promotion or a rollback), per the decision log."""
    from evergreen import registry

    changes = [d for d in registry.decision_history(spec)
               if d["kind"] in registry.CHAMPION_CHANGING_KINDS and d.get("champion_after")]
    return changes[-1]["decided_at"] if changes else None


def retrains_triggered(ledger: list[dict[str, Any]]) -> int:
    return sum(1 for entry in ledger if entry.get("decision") == "triggered")


def spec_health(spec: PipelineSpec, *, client: Any | None = None) -> dict[str, Any]:
    """Everything the spec's page shows (see the module docstring)."""
    from evergreen import monitoring, registry

    client = client or registry._client()
    decisions = registry.decision_history(spec)
    ledger = monitoring.trigger_ledger(spec)
    return {
        "spec": spec.name,
        "description": spec.description,
        "owner": spec.owner,
        "primary_metric": spec.primary_metric,
        "key_features": list(spec.drift.key_features),
        "promotion_mode": spec.promotion.mode,
        "late_labels": spec.labels is not None,
        "aliases": alias_summary(spec, client),
        "latest_gates": latest_gate_report(spec, decisions),
        "drift": drift_trend(spec),
        "performance": performance_trend(spec),
        "ledger": ledger[-HISTORY_ROWS:],
        "decisions": decisions[-HISTORY_ROWS:],
        "last_promotion": last_promotion(spec),
        "retrains_triggered": retrains_triggered(ledger),
        "newest_partition": newest_partition(spec),
    }


def prometheus_text(specs: list[PipelineSpec], *, client: Any | None = None,
                    now: dt.datetime | None = None) -> bytes:
    """Per spec, in Prometheus' text format: champion version, its holdout and realized primary metric,
    the latest drift report's share and key-feature PSI, days since the last promotion, age of the newest
    published partition, retrains triggered (see docs/metrics.md for alert rules)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    from evergreen import monitoring, registry

    client = client or registry._client()
    now = now or dt.datetime.now(dt.UTC)
    metrics = CollectorRegistry()
    spec_label = ["spec"]
    champion = Gauge("evergreen_champion_version", "Version behind the champion alias", spec_label, registry=metrics)
    holdout = Gauge("evergreen_champion_holdout_metric", "The champion's holdout primary metric",
                    ["spec", "metric"], registry=metrics)
    realized = Gauge("evergreen_champion_realized_metric", "The champion's realized primary metric (late labels)",
                     ["spec", "metric"], registry=metrics)
    share = Gauge("evergreen_drift_share", "Share of drifted features in the latest drift report", spec_label,
                  registry=metrics)
    detected = Gauge("evergreen_drift_detected", "1 when the latest drift report found drift", spec_label,
                     registry=metrics)
    psi = Gauge("evergreen_key_feature_psi", "PSI of each key feature in the latest drift report",
                ["spec", "feature"], registry=metrics)
    since = Gauge("evergreen_days_since_promotion", "Days since the champion last changed", spec_label,
                  registry=metrics)
    age = Gauge("evergreen_newest_partition_age_days", "Days between today and the newest published partition",
                spec_label, registry=metrics)
    triggered = Gauge("evergreen_retrains_triggered", "Retrains the sensor has triggered (ledger)", spec_label,
                      registry=metrics)
    for spec in specs:
        version = registry.champion(spec, client)
        if version is not None:
            champion.labels(spec.name).set(float(version.version))
            info = alias_summary(spec, client)["champion"]
            if info and info["holdout_metric"] is not None:
                holdout.labels(spec.name, spec.primary_metric).set(info["holdout_metric"])
            if spec.labels is not None:
                from evergreen.outcomes import realized_metric

                found = realized_metric(spec, str(version.version), spec.drift.performance_window_days)
                if found is not None and found.get("value") is not None:
                    realized.labels(spec.name, spec.primary_metric).set(found["value"])
        latest = drift_trend(spec, days=1)
        if latest:
            detected.labels(spec.name).set(1.0 if latest[-1]["drift_detected"] else 0.0)
            if latest[-1]["drifted_share"] is not None:
                share.labels(spec.name).set(latest[-1]["drifted_share"])
            for feature, value in latest[-1]["key_psi"].items():
                if value is not None:
                    psi.labels(spec.name, feature).set(value)
        changed = last_promotion(spec)
        if changed:
            last = dt.datetime.fromisoformat(changed)
            last = last if last.tzinfo else last.replace(tzinfo=dt.UTC)
            since.labels(spec.name).set((now - last).total_seconds() / 86400)
        newest = newest_partition(spec)
        if newest is not None:
            age.labels(spec.name).set((now.date() - dt.date.fromisoformat(newest)).days)
        triggered.labels(spec.name).set(retrains_triggered(monitoring.trigger_ledger(spec)))
    return generate_latest(metrics)
