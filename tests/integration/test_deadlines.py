"""``data_late`` under a real scheduler: the ETL's Airflow deadline passes while its sensor still waits for
the day's raw file, the triggerer runs Evergreen's callback, and the webhook on loopback gets one
``data_late`` alert naming the run. Slow: ``pytest -m scheduler``."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from helpers import running_stack, sensor_spec_yaml, webhook_receiver

pytestmark = pytest.mark.scheduler

ALERTS = """alerts:
  data_late_minutes: 0.1
  routes:
    - {channel: webhook, conn_id: evergreen_hook, events: [data_late]}"""


def test_the_etl_deadline_sends_data_late(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "late.yaml").write_text(sensor_spec_yaml("late", "UTC", alerts=ALERTS))
    with webhook_receiver() as (port, hooks), pytest.MonkeyPatch.context() as mp:
        connection = json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port,
                                 "extra": {"endpoint": "/hooks/late"}})
        mp.setenv("EVERGREEN_SPECS_DIR", str(specs))
        with running_stack(tmp_path / "stack", ["late_feature_etl"], unpause=True, extra_env={
                "EVERGREEN_SPECS_DIR": str(specs), "AIRFLOW_CONN_EVERGREEN_HOOK": connection}) as stack:
            run = stack.trigger("late_feature_etl", {"ds": "2026-03-01"}, logical_date=dt.date(2026, 3, 1))
            deadline = time.monotonic() + 240
            while not hooks and time.monotonic() < deadline:
                time.sleep(2)
            states = {t["task_id"]: t["state"] for t in stack.task_instances("late_feature_etl", run["dag_run_id"])}
    assert [(h["event"], h["partition"]) for h in hooks] == [("data_late", f"late_feature_etl.{run['dag_run_id']}")], hooks
    assert states["wait_for_raw_partition"] in {"up_for_reschedule", "running", "queued", "scheduled"}  # still waiting
    assert hooks[0]["link"].endswith(f"/dags/late_feature_etl/runs/{run['dag_run_id']}")
    assert "queued + 0.1 min" in hooks[0]["reason"] and hooks[0]["path"] == "/hooks/late"
