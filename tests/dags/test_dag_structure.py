"""The exact shape of every DAG the factory builds: task ids, edges, schedules, run limits, retries, assets.

The graphs are hard-coded on purpose: a task that is renamed, added, dropped or rewired must fail here.
"""

from __future__ import annotations

import datetime as dt

import pytest
from airflow.sdk import Asset, AssetAll, AssetOrTimeSchedule, CronDataIntervalTimetable, CronTriggerTimetable
from airflow.sdk.definitions.timetables.simple import NullTimetable
from evergreen.factory import BUILDERS, REGISTRY_POOL, build_dags
from evergreen.spec import get_spec
from helpers import DAG_KINDS, spec_dag_ids

SPECS = ("fraud", "delivery_eta")
KINDS = DAG_KINDS

TASKS = {
    "feature_etl": {"wait_for_raw_partition", "validate_raw_partition", "build_feature_partition",
                    "publish_feature_partition"},
    "training": {"assemble_training_set", "train_challenger", "evaluate_gates", "promote_if_better",
                 "branch_on_decision", "promoted", "registered_challenger", "rejected", "dry_run"},
    "rollback": {"rollback_champion"},
    "drift_monitor": {"find_unreported_partitions", "monitor_partitions", "announce_drift_reports"},
    "drift_sensor": {"wait_for_unacted_drift_reports", "decide_retrain", "retrain_needed", "trigger_retrain"},
    "backtest": {"run_backtest"},
}

EDGES = {
    "feature_etl": {
        ("wait_for_raw_partition", "validate_raw_partition"),
        ("validate_raw_partition", "build_feature_partition"),
        ("build_feature_partition", "publish_feature_partition"),
    },
    "training": {
        ("assemble_training_set", "train_challenger"),
        ("train_challenger", "evaluate_gates"),
        ("evaluate_gates", "promote_if_better"),
        ("train_challenger", "promote_if_better"),
        ("promote_if_better", "branch_on_decision"),
        *(("branch_on_decision", outcome) for outcome in ("promoted", "registered_challenger", "rejected", "dry_run")),
    },
    "rollback": set(),
    "drift_monitor": {
        ("find_unreported_partitions", "monitor_partitions"),
        ("monitor_partitions", "announce_drift_reports"),
    },
    "drift_sensor": {
        ("wait_for_unacted_drift_reports", "decide_retrain"),
        ("decide_retrain", "retrain_needed"),
        ("retrain_needed", "trigger_retrain"),
    },
    "backtest": set(),
}

# Every task's retries as the factory sets them: sensors and decisions never retry (a retry cannot fix a
# missing day, a rejected gate or a half-done alias move); I/O steps retry twice (the DAG default).
RETRIES = {
    "feature_etl": {"wait_for_raw_partition": 0, "validate_raw_partition": 2, "build_feature_partition": 2,
                    "publish_feature_partition": 2},
    "training": {"assemble_training_set": 1, "train_challenger": 2, "evaluate_gates": 2, "promote_if_better": 0,
                 "branch_on_decision": 0, "promoted": 0, "registered_challenger": 0, "rejected": 0, "dry_run": 0},
    "rollback": {"rollback_champion": 0},
    "drift_monitor": {"find_unreported_partitions": 2, "monitor_partitions": 2, "announce_drift_reports": 2},
    "drift_sensor": {"wait_for_unacted_drift_reports": 0, "decide_retrain": 0, "retrain_needed": 0,
                     "trigger_retrain": 2},
    "backtest": {"run_backtest": 1},
}

MAX_ACTIVE_RUNS = {"feature_etl": 4, "training": 1, "rollback": 1, "drift_monitor": 1, "drift_sensor": 1,
                   "backtest": 1}
TIMEOUT_MINUTES = {"feature_etl": 30, "training": 120, "rollback": 10, "drift_monitor": 30, "drift_sensor": 15,
                   "backtest": 240}

# (ETL cron, training cron, drift sensor cron) of the shipped specs; "@daily" is normalised by Airflow.
CRONS = {
    "fraud": ("0 0 * * *", "0 3 * * *", "*/15 * * * *"),
    "delivery_eta": ("0 0 * * *", "30 3 * * *", "*/30 * * * *"),
}
MONITOR_CRON = "0 6 * * *"


@pytest.fixture(scope="module", params=SPECS)
def spec_dags(request: pytest.FixtureRequest) -> tuple[str, dict]:
    name = request.param
    return name, build_dags({name: get_spec(name)})


def edges(dag) -> set[tuple[str, str]]:
    return {(upstream, t.task_id) for t in dag.tasks for upstream in t.upstream_task_ids}


def features(name: str) -> Asset:
    return Asset(name=f"features/{name}", uri=f"evergreen://{name}/features", group="evergreen")


def drift_reports(name: str) -> Asset:
    return Asset(name=f"drift_reports/{name}", uri=f"evergreen://{name}/drift_reports", group="evergreen")


def test_build_dags_for_the_shipped_specs_gives_thirteen_dags() -> None:
    dags = build_dags()
    # fraud's labels come from the chargeback feed: it has an outcomes DAG, delivery_eta does not
    assert sorted(dags) == sorted([*spec_dag_ids("fraud"), *spec_dag_ids("delivery_eta")])
    assert len(dags) == 13
    assert all(dag.dag_id == dag_id for dag_id, dag in dags.items())
    assert tuple(BUILDERS) == (*KINDS, "outcomes")  # outcomes: only for specs with a separate label source


def test_a_spec_with_late_labels_gets_an_outcomes_dag() -> None:
    from evergreen.factory import build_outcomes_dag, drift_reports_asset
    from evergreen.spec import LabelsSpec, SourceSpec, get_spec

    spec = get_spec("delivery_eta")
    assert build_outcomes_dag(spec) is None  # its labels come with the features
    late = get_spec("fraud").model_copy(update={"labels": LabelsSpec(
        source=SourceSpec(kind="daily_files", path="raw/fraud_labels/ds={ds}/*.parquet"), max_delay_days=5)})
    dags = build_dags({"fraud": late})
    dag = dags["fraud_outcomes"]
    assert set(dag.task_ids) == {"ingest_labels", "join_outcomes"}
    assert edges(dag) == {("ingest_labels", "join_outcomes")}
    assert list(dag.timetable.asset_condition.objects) == [drift_reports_asset(late)]  # after each monitor run
    outlets = dag.get_task("join_outcomes").outlets
    assert [o.name for o in outlets] == ["outcomes/fraud"]
    assert "up to 5" in dag.doc_md and "first label to arrive for a key wins" in dag.doc_md


@pytest.mark.parametrize("kind", KINDS)
def test_tasks_and_edges(spec_dags: tuple[str, dict], kind: str) -> None:
    name, dags = spec_dags
    assert sorted(dags) == spec_dag_ids(name)
    dag = dags[f"{name}_{kind}"]
    assert set(dag.task_ids) == TASKS[kind]
    assert len(dag.task_ids) == len(TASKS[kind])
    assert edges(dag) == EDGES[kind]
    # downstream_task_ids agree with upstream_task_ids (the graph is consistent both ways)
    assert {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids} == EDGES[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_run_limits_retries_and_timeouts(spec_dags: tuple[str, dict], kind: str) -> None:
    name, dags = spec_dags
    dag = dags[f"{name}_{kind}"]
    assert dag.max_active_runs == MAX_ACTIVE_RUNS[kind]
    assert dag.catchup is False
    assert dag.start_date == dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    assert {t.task_id: t.retries for t in dag.tasks} == RETRIES[kind]
    assert {t.execution_timeout for t in dag.tasks} == {dt.timedelta(minutes=TIMEOUT_MINUTES[kind])}
    assert {t.owner for t in dag.tasks} == {get_spec(name).owner}
    # Only the tasks that move aliases queue in the one-slot registry pool.
    registry_tasks = {"promote_if_better", "rollback_champion"} & set(dag.task_ids)
    assert {t.task_id for t in dag.tasks if t.pool == REGISTRY_POOL} == registry_tasks
    assert {t.pool for t in dag.tasks if t.task_id not in registry_tasks} <= {"default_pool"}


def test_schedules(spec_dags: tuple[str, dict]) -> None:
    name, dags = spec_dags
    etl_cron, training_cron, sensor_cron = CRONS[name]

    etl = dags[f"{name}_feature_etl"].timetable
    assert type(etl) is CronDataIntervalTimetable
    assert etl == CronDataIntervalTimetable(etl_cron, timezone="UTC")

    training = dags[f"{name}_training"].timetable
    assert type(training) is CronDataIntervalTimetable
    assert training == CronDataIntervalTimetable(training_cron, timezone="UTC")

    for manual in ("rollback", "backtest"):
        assert type(dags[f"{name}_{manual}"].timetable) is NullTimetable
        assert dags[f"{name}_{manual}"].schedule is None

    monitor = dags[f"{name}_drift_monitor"].timetable
    assert type(monitor) is AssetOrTimeSchedule
    assert monitor.timetable == CronTriggerTimetable(MONITOR_CRON, timezone="UTC")
    assert type(monitor.asset_condition) is AssetAll
    assert list(monitor.asset_condition.objects) == [features(name)]

    sensor = dags[f"{name}_drift_sensor"].timetable  # consumes the monitor's reports: an edge in the asset graph
    assert type(sensor) is AssetOrTimeSchedule
    assert sensor.timetable == CronTriggerTimetable(sensor_cron, timezone="UTC")
    assert list(sensor.asset_condition.objects) == [drift_reports(name)]


def test_asset_outlets(spec_dags: tuple[str, dict]) -> None:
    name, dags = spec_dags
    outlets = {(kind, t.task_id): list(t.outlets) for kind in KINDS for t in dags[f"{name}_{kind}"].tasks
               if t.outlets}
    assert outlets == {
        ("feature_etl", "publish_feature_partition"): [features(name)],
        ("drift_monitor", "announce_drift_reports"): [drift_reports(name)],
    }
    etl_publish = dags[f"{name}_feature_etl"].get_task("publish_feature_partition")
    assert etl_publish.outlets[0].name == f"features/{name}"
    monitor = dags[f"{name}_drift_monitor"]
    last = [t for t in monitor.tasks if not t.downstream_task_ids]
    assert [t.task_id for t in last] == ["announce_drift_reports"]
    assert last[0].outlets[0].name == f"drift_reports/{name}"


def test_sensors_and_trigger(spec_dags: tuple[str, dict]) -> None:
    name, dags = spec_dags
    spec = get_spec(name)

    raw = dags[f"{name}_feature_etl"].get_task("wait_for_raw_partition")
    assert (raw.mode, raw.soft_fail) == ("reschedule", False)  # on_missing_day: fail in both shipped specs
    assert raw.poke_interval == spec.etl.sensor_poke_seconds
    assert raw.timeout == spec.etl.sensor_timeout_minutes * 60 == 7200.0

    drift = dags[f"{name}_drift_sensor"].get_task("wait_for_unacted_drift_reports")
    assert (drift.mode, drift.soft_fail) == ("reschedule", True)
    assert drift.timeout == spec.drift.sensor_timeout_minutes * 60

    trigger = dags[f"{name}_drift_sensor"].get_task("trigger_retrain")
    assert type(trigger).__name__ == "TriggerDagRunOperator"
    assert trigger.trigger_dag_id == f"{name}_training"
    assert trigger.skip_when_already_exists is True
    assert trigger.wait_for_completion is False
    # drift or performance: the decision's own reason (rendered from decide_retrain's result)
    assert trigger.conf["reason"] == "{{ ti.xcom_pull(task_ids='decide_retrain')['trigger']['conf']['reason'] }}"
    assert sorted(trigger.conf) == ["as_of", "drift_report", "reason"]

    # One task monitors every pending day, so the champion is loaded once per run (not once per day).
    batch = dags[f"{name}_drift_monitor"].get_task("monitor_partitions")
    assert type(batch).__name__ == "_PythonDecoratedOperator"


def test_approval_mode_asks_a_person_between_the_gates_and_the_promotion() -> None:
    from evergreen.factory import build_training_dag
    from evergreen.spec import get_spec

    spec = get_spec("fraud")
    spec = spec.model_copy(update={"promotion": spec.promotion.model_copy(
        update={"mode": "approval", "approval_timeout_hours": 6})})
    dag = build_training_dag(spec)
    assert set(dag.task_ids) == TASKS["training"] | {"approval_needed", "request_approval"}
    assert edges(dag) == EDGES["training"] | {("evaluate_gates", "approval_needed"),
                                              ("approval_needed", "request_approval"),
                                              ("request_approval", "promote_if_better")}
    ask = dag.get_task("request_approval")
    assert type(ask).__name__ == "HITLOperator"
    assert (ask.options, ask.defaults, ask.response_timeout) == (["Approve", "Reject"], ["Reject"],
                                                                 dt.timedelta(hours=6))
    # Still promotes (or rejects) when nothing needed approving and the question was skipped.
    assert dag.get_task("promote_if_better").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("approval_needed").ignore_downstream_trigger_rules is False
