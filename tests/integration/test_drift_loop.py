"""The continuous-training loop through a real Airflow scheduler (LocalExecutor): champion, drift
injected, reports, exactly one drift-triggered retrain with the expected run id and conf, dedup of a
report seen twice, and the cooldown. Slow: ``pytest -m scheduler``."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from evergreen import monitoring
from evergreen.spec import get_spec
from helpers import land_and_etl, running_stack

from devtools import demo
from devtools.localstack import LocalStack

pytestmark = pytest.mark.scheduler

FRAUD = get_spec("fraud")
START, AS_OF = dt.date(2026, 10, 1), dt.date(2026, 10, 21)
DRIFT_START = AS_OF + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("loop"),
                       [demo.ETL_DAG, demo.TRAINING_DAG, demo.MONITOR_DAG, demo.SENSOR_DAG, demo.OUTCOMES_DAG],
                       unpause=True) as local:
        yield local


def _training_runs(stack: LocalStack) -> dict[str, dict]:
    return {r["dag_run_id"]: r for r in stack.dag_runs(demo.TRAINING_DAG)}


def test_drift_triggers_exactly_one_retrain_then_cooldown(stack: LocalStack) -> None:
    storage = Path(os.environ["EVERGREEN_STORAGE_ROOT"])
    # Three weeks of normal history and its chargebacks (in-process: the scheduler's backfill has its own test).
    land_and_etl(FRAUD, START, AS_OF, seed=demo.SEED)

    champion = demo.run_and_wait(stack, demo.TRAINING_DAG, {"as_of": AS_OF.isoformat(), "window_days": 21})
    assert champion["state"] == "success"
    assert stack.xcom(demo.TRAINING_DAG, champion["dag_run_id"], "promote_if_better")["kind"] == "promoted"

    # No drift in the history: reports for all 21 days, no retrain.
    summary = demo.monitor_drift(stack)
    assert len(summary["reports"]) == 21 and summary["drifted"] == []
    decided, training = demo.sense_drift(stack)
    assert decided["trigger"] is None and training is None
    assert {d["decision"] for d in decided["decisions"]} == {"no_drift"}
    before = set(_training_runs(stack))

    # Covariate drift: both new days are flagged, the sensor starts exactly one training run.
    demo.play_days(stack, storage, DRIFT_START, DRIFT_START + dt.timedelta(days=1), drift="covariate",
                   drift_start=DRIFT_START)
    summary = demo.monitor_drift(stack)
    assert summary["drifted"] == [DRIFT_START.isoformat(), (DRIFT_START + dt.timedelta(days=1)).isoformat()]
    latest = [r for r in monitoring.all_reports(FRAUD) if r["ds"] == summary["drifted"][-1]][0]
    decided, training = demo.sense_drift(stack)
    expected_run_id = monitoring.trigger_run_id(latest)
    assert decided["trigger"]["run_id"] == expected_run_id
    new_runs = {k: v for k, v in _training_runs(stack).items() if k not in before}
    assert list(new_runs) == [expected_run_id]
    run = new_runs[expected_run_id]
    assert run["conf"] == {"as_of": latest["ds"], "reason": "drift", "drift_report": latest["key"]}
    assert training is not None and training["state"] == "success"
    gates = stack.xcom(demo.TRAINING_DAG, expected_run_id, "evaluate_gates")
    assert gates["gates"] and "passed" in gates
    decision = stack.xcom(demo.TRAINING_DAG, expected_run_id, "promote_if_better")
    assert decision["kind"] in {"promoted", "registered", "rejected"}
    assert decision["champion_evaluated_against"] == "1"

    # The same report seen again (its ledger entry lost): the deterministic run id dedups the trigger.
    ledger = storage / "models" / "fraud" / "drift_triggers" / f"{latest['ds']}-{latest['sha256'][:12]}.json"
    assert json.loads(ledger.read_text())["decision"] == "triggered"
    ledger.unlink()
    decided, _ = demo.sense_drift(stack)
    assert decided["trigger"]["run_id"] == expected_run_id
    sensor_run = stack.dag_runs(demo.SENSOR_DAG)[-1]
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(demo.SENSOR_DAG, sensor_run["dag_run_id"])}
    assert states["trigger_retrain"] == "skipped"
    assert [k for k in _training_runs(stack) if k not in before] == [expected_run_id]

    # One more drifted day inside the cooldown: recorded, not triggered.
    next_day = DRIFT_START + dt.timedelta(days=2)
    demo.play_days(stack, storage, next_day, next_day, drift="covariate", drift_start=DRIFT_START)
    assert demo.monitor_drift(stack)["drifted"] == [next_day.isoformat()]
    decided, training = demo.sense_drift(stack)
    assert training is None
    assert [d["decision"] for d in decided["decisions"]] == ["cooldown"]
    assert [k for k in _training_runs(stack) if k not in before] == [expected_run_id]
    kinds = [e["decision"] for e in monitoring.trigger_ledger(FRAUD) if e["drift_detected"]]
    assert kinds.count("triggered") == 1 and "cooldown" in kinds


def test_a_late_label_day_as_the_demo_plays_it(stack: LocalStack) -> None:
    """After the loop above: a played day is predicted first, waits for its chargebacks, then its outcome
    and realized performance appear once its 3-day window has closed (outcomes runs on the data clock)."""
    storage = Path(os.environ["EVERGREEN_STORAGE_ROOT"])

    def outcome(ds: dt.date) -> dict:
        return json.loads((storage / "outcomes" / "fraud" / f"ds={ds}" / "_manifest.json").read_text())

    joined = demo.take_outcomes(stack, DRIFT_START + dt.timedelta(days=1))
    assert joined["as_of"] == (DRIFT_START + dt.timedelta(days=1)).isoformat()
    waiting = outcome(DRIFT_START)
    assert waiting["labelled_rows"] == 0 and waiting["models"]["champion"]["rows"] > 0  # predicted, no label yet
    settled = outcome(AS_OF - dt.timedelta(days=2))  # its window closed: every row labelled, frauds or not
    assert settled["labelled_rows"] == settled["models"]["champion"]["rows"] > 0
    assert 0.5 < settled["models"]["champion"]["metrics"]["roc_auc"] <= 1.0

    closing = demo.take_outcomes(stack, DRIFT_START + dt.timedelta(days=3))
    matured = outcome(DRIFT_START)
    assert matured["labelled_rows"] == matured["models"]["champion"]["rows"]
    assert matured["labels_as_of"] == closing["as_of"] and matured["models"]["champion"]["metrics"]["roc_auc"] > 0.5
    report = json.loads((storage / closing["report"]).read_text())
    assert DRIFT_START.isoformat() in {day["ds"] for day in report["days"]}
    assert (storage / "reports" / "performance" / "fraud" / "report.html").is_file()
