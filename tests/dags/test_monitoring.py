"""Drift-triggered retraining decisions (dedup, hysteresis, cooldown, ledger) and the monitor/sensor
DAGs through ``dag.test()`` on simulated data with and without injected drift."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from evergreen import monitoring, storage
from evergreen.monitoring import read_drift_report
from evergreen.spec import get_spec
from helpers import land_and_etl, run_dag, task_states, xcom_value

FRAUD = get_spec("fraud")
T0 = dt.datetime(2026, 11, 20, 6, 0, tzinfo=dt.UTC)


def _fake_report(spec, ds: str, drift: bool) -> None:
    directory = storage.storage_root() / "reports" / "drift" / spec.name / f"ds={ds}"
    storage.write_json_atomic(directory / "report.json", {"spec": spec.name, "ds": ds, "drift_detected": drift,
                                                          "reasons": ["test"] if drift else []})


def _with_drift(**changes):
    return FRAUD.model_copy(update={"drift": FRAUD.drift.model_copy(update=changes)})


def test_one_report_triggers_once_even_when_seen_twice(storage_root: Path) -> None:
    _fake_report(FRAUD, "2026-11-10", True)
    first = monitoring.decide_retrain(FRAUD, now=T0)
    assert first["trigger"]["run_id"].startswith("drift__2026-11-10__")
    assert first["trigger"]["conf"] == {"as_of": "2026-11-10", "reason": "drift",
                                        "drift_report": "reports/drift/fraud/ds=2026-11-10/report.json"}
    again = monitoring.decide_retrain(FRAUD, now=T0 + dt.timedelta(days=3))
    assert again == {"decisions": [], "trigger": None}
    assert monitoring.unacted_reports(FRAUD) == []
    assert [e["decision"] for e in monitoring.trigger_ledger(FRAUD)] == ["triggered"]


def test_trigger_run_id_is_derived_from_the_report(storage_root: Path) -> None:
    _fake_report(FRAUD, "2026-11-10", True)
    report = monitoring.all_reports(FRAUD)[0]
    sha = hashlib.sha256((storage_root / report["key"]).read_bytes()).hexdigest()
    assert report["sha256"] == sha
    assert monitoring.trigger_run_id(report) == f"drift__2026-11-10__{sha[:12]}"
    _fake_report(FRAUD, "2026-11-10", False)  # new content for the day: a different report
    assert monitoring.trigger_run_id(monitoring.all_reports(FRAUD)[0]) != monitoring.trigger_run_id(report)


def test_cooldown_suppresses_then_expires(storage_root: Path) -> None:
    spec = _with_drift(cooldown_hours=24)
    _fake_report(spec, "2026-11-10", True)
    assert monitoring.decide_retrain(spec, now=T0)["trigger"] is not None
    _fake_report(spec, "2026-11-11", True)
    suppressed = monitoring.decide_retrain(spec, now=T0 + dt.timedelta(hours=23))
    assert suppressed["trigger"] is None
    assert suppressed["decisions"][0]["decision"] == "cooldown"
    assert "cooldown 24 h" in suppressed["decisions"][0]["detail"]
    _fake_report(spec, "2026-11-12", True)
    later = monitoring.decide_retrain(spec, now=T0 + dt.timedelta(hours=25))
    assert later["trigger"]["conf"]["as_of"] == "2026-11-12"
    kinds = [e["decision"] for e in monitoring.trigger_ledger(spec)]
    assert kinds == ["triggered", "cooldown", "triggered"]


@pytest.mark.parametrize(("pattern", "expected"), [
    ([True], ["below_hysteresis"]),
    ([True, True], ["below_hysteresis", "triggered"]),
    ([True, True, True], ["below_hysteresis", "superseded", "triggered"]),
    ([True, False, True], ["below_hysteresis", "no_drift", "below_hysteresis"]),
    ([False, False], ["no_drift", "no_drift"]),
])
def test_hysteresis_needs_consecutive_drifted_reports(storage_root: Path, pattern: list[bool],
                                                      expected: list[str]) -> None:
    spec = _with_drift(consecutive_reports=2)
    for i, drift in enumerate(pattern):
        _fake_report(spec, f"2026-11-{10 + i:02d}", drift)
    decided = monitoring.decide_retrain(spec, now=T0)
    assert [d["decision"] for d in decided["decisions"]] == expected
    assert (decided["trigger"] is not None) == ("triggered" in expected)


def _training_runs():
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == "fraud_training").all()
        return {r.run_id: dict(r.conf or {}) for r in runs}


@pytest.mark.slow
def test_monitor_and_sensor_dags_on_drift_and_no_drift(airflow_db: Path, storage_root: Path, mlflow_uri: str) -> None:
    start, as_of = dt.date(2026, 10, 1), dt.date(2026, 10, 21)
    land_and_etl(FRAUD, start, as_of)
    train = run_dag("fraud_training", as_of, conf={"window_days": 21})
    assert str(train.state) == "success", task_states(train)
    before = set(_training_runs())

    # Nine normal days after the champion's window: reports, no drift, no retrain.
    land_and_etl(FRAUD, as_of + dt.timedelta(days=1), as_of + dt.timedelta(days=9))
    # A stretch of history in one run (Params start/end): those days only.
    ranged = run_dag("fraud_drift_monitor", conf={"start": (as_of - dt.timedelta(days=1)).isoformat(),
                                                  "end": (as_of + dt.timedelta(days=2)).isoformat()})
    assert str(ranged.state) == "success", task_states(ranged)
    assert xcom_value(ranged, "find_unreported_partitions") == [
        (as_of + dt.timedelta(days=i)).isoformat() for i in range(-1, 3)]
    assert read_drift_report(FRAUD, as_of + dt.timedelta(days=3)) is None
    # Days of the champion's own window are reported, not judged.
    inside = read_drift_report(FRAUD, as_of)
    assert inside["judged"] is False and inside["drift_detected"] is False
    assert read_drift_report(FRAUD, as_of + dt.timedelta(days=1))["judged"] is True
    monitor = run_dag("fraud_drift_monitor")
    assert str(monitor.state) == "success", task_states(monitor)
    for i in range(1, 10):
        report = read_drift_report(FRAUD, as_of + dt.timedelta(days=i))
        assert report is not None and report["drift_detected"] is False, report and report["reasons"]
        assert report["champion_version"] == "1"
    html = (storage.storage_root() / "reports/drift/fraud/ds=2026-10-25/report.html").read_text()
    assert "amount" in html
    sensor = run_dag("fraud_drift_sensor")
    assert str(sensor.state) == "success", task_states(sensor)
    assert task_states(sensor)["trigger_retrain"] == "skipped"
    assert set(_training_runs()) == before
    predictions = storage.read_partition(storage.partition_dir("predictions", "fraud", as_of + dt.timedelta(days=1)))
    assert set(predictions["model_version"]) == {"1"} and predictions["prediction"].between(0, 1).all()
    # Reason codes (scoring.explain_top_k: 3): the row's three largest |SHAP|, in order, all model features.
    assert {"reason_1", "reason_2", "reason_3", "reason_3_shap"} <= set(predictions.columns) and \
        set(predictions[["reason_1", "reason_2", "reason_3"]].stack()) <= set(FRAUD.model_features)
    shap = predictions[["reason_1_shap", "reason_2_shap", "reason_3_shap"]].abs()
    assert (shap["reason_1_shap"] >= shap["reason_2_shap"]).all() and (shap["reason_2_shap"] >= shap["reason_3_shap"]).all()
    assert (predictions["reason_1"] != predictions["reason_2"]).all()
    # Attribution drift on normal days: the champion leans on its features as it did on the holdout.
    normal = read_drift_report(FRAUD, as_of + dt.timedelta(days=5))["attribution"]
    assert normal["status"] == "ok" and normal["shift"] < normal["threshold"] and not normal["drifted"]
    assert abs(sum(f["current"] for f in normal["features"].values()) - 1) < 1e-6
    assert "Attributions" in html

    # Covariate drift from day 10 on: the report says so, the sensor triggers exactly one training run.
    drift_day = as_of + dt.timedelta(days=10)
    land_and_etl(FRAUD, drift_day, drift_day, drift="covariate", drift_start=drift_day)
    assert str(run_dag("fraud_drift_monitor").state) == "success"
    report = read_drift_report(FRAUD, drift_day)
    assert report["drift_detected"] is True and report["reasons"]
    assert report["attribution"]["shift"] > normal["shift"]  # the shifted inputs move the attributions too
    sensor = run_dag("fraud_drift_sensor")
    decided = xcom_value(sensor, "decide_retrain")
    run_id = decided["trigger"]["run_id"]
    assert task_states(sensor)["trigger_retrain"] == "success"
    new_runs = {k: v for k, v in _training_runs().items() if k not in before}
    assert list(new_runs) == [run_id]
    assert new_runs[run_id] == {"as_of": drift_day.isoformat(), "reason": "drift",
                                "drift_report": f"reports/drift/fraud/ds={drift_day}/report.json"}

    # The monitor rerun is idempotent; the next drifted day falls in the cooldown.
    report_bytes = (storage.storage_root() / f"reports/drift/fraud/ds={drift_day}/report.json").read_bytes()
    assert str(run_dag("fraud_drift_monitor").state) == "success"
    assert (storage.storage_root() / f"reports/drift/fraud/ds={drift_day}/report.json").read_bytes() == report_bytes
    next_day = drift_day + dt.timedelta(days=1)
    land_and_etl(FRAUD, next_day, next_day, drift="covariate", drift_start=drift_day)
    assert str(run_dag("fraud_drift_monitor").state) == "success"
    sensor = run_dag("fraud_drift_sensor")
    assert task_states(sensor)["trigger_retrain"] == "skipped"
    assert {k for k in _training_runs() if k not in before} == {run_id}
    ledger = monitoring.trigger_ledger(FRAUD)
    assert [e["decision"] for e in ledger if e["drift_detected"]] == ["triggered", "cooldown"]
