"""Alerts through the real DAGs (``dag.test()``): a webhook and an SMTP server on loopback receive one
message per event and partition, with the spec, the event, the reason and a link to the run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from evergreen import alerts, registry
from evergreen.spec import get_spec
from helpers import (
    land_csv,
    run_dag,
    sensor_readings,
    sensor_spec_yaml,
    smtp_receiver,
    task_states,
    webhook_receiver,
    xcom_value,
)
from mlflow import MlflowClient

FIRST = dt.date(2026, 3, 1)
TRAINED = FIRST + dt.timedelta(days=9)  # the first model's window: ten days
SHIFTED = TRAINED + dt.timedelta(days=1)  # a day whose level is far above anything seen
BAD = SHIFTED + dt.timedelta(days=1)  # a day whose level breaks the spec's range: quarantined

ALERTS = """alerts:
  data_late_minutes: 90
  routes:
    - {channel: webhook, conn_id: evergreen_hook}
    - {channel: email, conn_id: evergreen_smtp, to: [ops@example.com], events: [data_quality_failed, promoted, rolled_back]}"""


@pytest.fixture
def receivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "alerted.yaml").write_text(sensor_spec_yaml("alerted", "UTC", start_date="2026-01-01", alerts=ALERTS))
    monkeypatch.setenv("EVERGREEN_SPECS_DIR", str(folder))
    with webhook_receiver() as (hook_port, hooks), smtp_receiver() as (smtp_port, mails):
        monkeypatch.setenv("AIRFLOW_CONN_EVERGREEN_HOOK", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": hook_port, "password": "s3cret",
            "extra": {"endpoint": "/hooks/evergreen"}}))
        monkeypatch.setenv("AIRFLOW_CONN_EVERGREEN_SMTP", json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "evergreen@example.com"}}))
        yield hooks, mails


def _readings():
    raw = sensor_readings("UTC", FIRST, BAD, seed=4)
    day = raw["read_at"].str.slice(0, 10)
    raw.loc[day == SHIFTED.isoformat(), "level"] = raw.loc[day == SHIFTED.isoformat(), "level"] / 10 + 90
    raw.loc[day == BAD.isoformat(), "level"] = 150.0  # max is 100 in the spec
    return raw


@pytest.mark.slow
def test_alerts_from_the_dags(airflow_db: Path, storage_root: Path, mlflow_uri: str, receivers) -> None:
    from evergreen.etl.ingest import run_feature_etl

    hooks, mails = receivers
    spec = get_spec("alerted")
    land_csv(_readings(), spec.source.path)
    for i in range((SHIFTED - FIRST).days + 1):
        run_feature_etl(spec, FIRST + dt.timedelta(days=i))

    # Bad data: the ETL fails without retry and says so, once, however often the day is rerun.
    for _ in range(2):
        run = run_dag("alerted_feature_etl", BAD)
        assert str(run.state) == "failed", task_states(run)
    quality = [h for h in hooks if h["event"] == "data_quality_failed"]
    assert len(quality) == 1, hooks
    assert quality[0]["partition"] == f"alerted_feature_etl.validate_raw_partition.ds={BAD}"
    assert quality[0]["spec"] == "alerted" and "level" in quality[0]["reason"]
    assert "/dags/alerted_feature_etl/runs/" in quality[0]["link"] and quality[0]["link"].endswith(
        "/tasks/validate_raw_partition")
    assert quality[0]["path"] == "/hooks/evergreen" and quality[0]["authorization"] == "Bearer s3cret"

    # The first model is promoted; a second training of the same window does not beat it: registered.
    run = run_dag("alerted_training", TRAINED)
    assert str(run.state) == "success", task_states(run)
    assert xcom_value(run, "promote_if_better")["kind"] == "promoted"
    run = run_dag("alerted_training", TRAINED)
    assert xcom_value(run, "promote_if_better")["kind"] == "registered"
    run = run_dag("alerted_rollback", conf={"target_version": "2", "reason": "alert test"})
    assert str(run.state) == "success", task_states(run)

    # The shifted day drifts; the sensor triggers a retrain for it.
    run = run_dag("alerted_drift_monitor")
    assert str(run.state) == "success", task_states(run)
    run = run_dag("alerted_drift_sensor")
    assert xcom_value(run, "decide_retrain")["trigger"] is not None, task_states(run)

    events = [(h["event"], h["partition"]) for h in hooks]
    assert events == [
        ("data_quality_failed", f"alerted_feature_etl.validate_raw_partition.ds={BAD}"),
        ("promoted", "1"),
        ("registered", "2"),
        ("rolled_back", "2"),
        ("drift_detected", SHIFTED.isoformat()),
        ("retrain_triggered", xcom_value(run, "decide_retrain")["trigger"]["run_id"]),
    ]
    by_event = {h["event"]: h for h in hooks}
    assert by_event["promoted"]["details"]["champion_after"] == "1"
    assert "/dags/alerted_training/runs/" in by_event["promoted"]["link"]
    assert by_event["rolled_back"]["reason"] == "alert test"
    assert by_event["drift_detected"]["reason"] and by_event["drift_detected"]["details"]["champion_version"] == "2"
    assert registry.alias_version(MlflowClient(), "alerted", "champion") == "2"

    # Email: only the events its route asks for, one message each.
    assert [m["Subject"] for m in mails] == [
        f"[evergreen] alerted: data quality failed (alerted_feature_etl.validate_raw_partition.ds={BAD})",
        "[evergreen] alerted: promoted (1)",
        "[evergreen] alerted: rolled back (2)",
    ]
    assert all(m["To"] == "ops@example.com" and m["From"] == "evergreen@example.com" for m in mails)
    body = mails[1].get_body(preferencelist=("html",)).get_content()
    assert "/dags/alerted_training/runs/" in body and "champion_after" in body

    # Re-running the monitor and the rollback's alert do not repeat messages; the ledger holds each once.
    run_dag("alerted_drift_monitor")
    assert len(hooks) == len(events)
    assert len(alerts.sent_alerts(spec)) == len(events) + len(mails)


def test_data_late_is_a_deadline_on_the_etl(storage_root: Path, receivers) -> None:
    """The ETL DAG carries an Airflow deadline (queued + data_late_minutes) whose callback, run by the
    triggerer, sends ``data_late`` once per run."""
    import asyncio

    from evergreen import factory, notifiers

    hooks, _ = receivers
    spec = get_spec("alerted")
    etl = factory.build_feature_etl_dag(spec)
    deadlines = etl.deadline if isinstance(etl.deadline, list) else [etl.deadline]
    assert len(deadlines) == 1
    deadline = deadlines[0]
    assert deadline.interval == dt.timedelta(minutes=90)
    assert "DAGRUN_QUEUED_AT" in repr(deadline.reference) or "QueuedAt" in type(deadline.reference).__name__
    assert deadline.callback.path == "evergreen.notifiers.data_late"
    context = {"dag_run": {"dag_id": "alerted_feature_etl", "dag_run_id": "scheduled__2026-03-12T00:00:00+00:00"}}
    for _ in range(2):
        asyncio.run(notifiers.data_late(context, **deadline.callback.kwargs))
    assert [(h["event"], h["partition"]) for h in hooks] == [
        ("data_late", "alerted_feature_etl.scheduled__2026-03-12T00:00:00+00:00")]
    assert "queued + 90 min" in hooks[0]["reason"]
    assert hooks[0]["link"].endswith("/dags/alerted_feature_etl/runs/scheduled__2026-03-12T00:00:00+00:00")
    # A spec without routes gets no deadline and no failure callback.
    plain = factory.build_feature_etl_dag(get_spec("fraud"))
    assert not plain.deadline and "on_failure_callback" not in plain.default_args
