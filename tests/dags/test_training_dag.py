"""The training DAG through ``dag.test()`` on simulated data: champion, determinism, rejection,
promotion with previous_champion, rollback from the CLI and from the rollback DAG; regression too."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import pytest
from evergreen import registry, storage
from evergreen.cli import main as cli_main
from evergreen.spec import get_spec
from helpers import land_and_etl, run_dag, task_states, xcom_value
from mlflow import MlflowClient

START = dt.date(2026, 10, 1)
AS_OF = dt.date(2026, 10, 21)  # three weeks of data
SETTLED = AS_OF - dt.timedelta(days=3)  # the newest day whose chargebacks are all in (labels.max_delay_days)
TRAIN_END = SETTLED - dt.timedelta(days=3)  # last day before the holdout


OUTCOME_TASKS = {"promoted": "promoted", "registered": "registered_challenger", "rejected": "rejected",
                 "dry_run": "dry_run"}


def _train(as_of: dt.date, **conf):
    run = run_dag("fraud_training", as_of, conf={"window_days": 21, **conf})
    states = task_states(run)
    assert str(run.state) == "success", states
    decision = xcom_value(run, "promote_if_better")
    # The grid shows the decision: its outcome task ran, the other outcomes were skipped.
    assert {task: states[task] for task in OUTCOME_TASKS.values()} == {
        task: "success" if task == OUTCOME_TASKS[decision["kind"]] else "skipped" for task in OUTCOME_TASKS.values()}
    return run, decision


@pytest.mark.slow
def test_fraud_training_lifecycle(airflow_db: Path, storage_root: Path, mlflow_uri: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = get_spec("fraud")
    client = MlflowClient()
    # v1 learns from noisy labels: good enough for the gates, beatable later on the same holdout.
    land_and_etl(spec, START, TRAIN_END, label_noise=0.2)
    land_and_etl(spec, TRAIN_END + dt.timedelta(days=1), AS_OF)

    run1, first = _train(AS_OF)
    assert first["kind"] == "promoted", first
    assert first["version"] == "1" and registry.alias_version(client, "fraud", "champion") == "1"
    version = client.get_model_version("fraud", "1")
    tags = version.tags
    window_days = sorted(ds for ds in storage.list_partitions("features", "fraud") if ds <= SETTLED)
    assert window_days[-1] == SETTLED  # the younger days wait for their chargebacks
    assert tags["evergreen.data_digest"] and tags["evergreen.as_of"] == AS_OF.isoformat()
    assert tags["evergreen.partitions"].startswith(f"{window_days[0]}..{window_days[-1]}")
    assert tags["evergreen.gates_passed"] == "true"
    assert any(k.startswith("evergreen.gate.") for k in tags)
    run_tags = client.get_run(version.run_id).data.tags
    assert run_tags["evergreen.airflow.dag_id"] == "fraud_training"
    assert run_tags["evergreen.reason"] == "manual"
    assert run_tags["evergreen.labels_as_of"] == AS_OF.isoformat()
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert "reference_profile.json" in artifacts
    profile = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="reference_profile.json")).read_text())
    assert "amount" in json.dumps(profile)
    gates_file = storage.storage_root() / "models" / "fraud" / "decisions" / version.run_id / "gates.json"
    assert json.loads(gates_file.read_bytes())["passed"] is True
    metrics1 = client.get_run(version.run_id).data.metrics

    # The same window again, as a dry run: identical metrics, registry untouched.
    _, again = _train(AS_OF, dry_run=True)
    assert again["kind"] == "dry_run"
    assert len(client.search_model_versions("name='fraud'")) == 1
    metrics_again = client.get_run(again["run_id"]).data.metrics
    for key in ("roc_auc", "pr_auc", "log_loss"):
        assert metrics_again[key] == pytest.approx(metrics1[key], abs=1e-12), key

    # A drift retrain with no new data (the drifted days' chargebacks have not come in) is skipped.
    runs_before = len(client.search_runs([client.get_experiment_by_name("fraud").experiment_id]))
    skipped = run_dag("fraud_training", AS_OF, conf={"window_days": 21, "reason": "drift"})
    states = task_states(skipped)
    assert str(skipped.state) == "success" and states["assemble_training_set"] == "skipped", states
    assert {states[t] for t in ("train_challenger", "promote_if_better", *OUTCOME_TASKS.values())} == {"skipped"}
    assert len(client.search_runs([client.get_experiment_by_name("fraud").experiment_id])) == runs_before
    assert registry.alias_version(client, "fraud", "champion") == "1"

    # Clean labels: a better model on the same holdout is promoted, v1 becomes previous_champion.
    land_and_etl(spec, START, TRAIN_END)
    _, better = _train(AS_OF, reason="drift", drift_report="reports/drift/fraud/ds=2026-10-21/report.json")
    assert better["kind"] == "promoted", better
    assert better["champion_before"] == "1" and better["version"] == "2"
    assert registry.alias_version(client, "fraud", "champion") == "2"
    assert registry.alias_version(client, "fraud", "previous_champion") == "1"
    assert client.get_run(better["run_id"]).data.tags["evergreen.reason"] == "drift"
    # Its model card compares it with the champion it replaced, on the same holdout rows.
    card = client.get_model_version("fraud", "2").description
    assert card.startswith("# Model card: fraud version 2") and "Compared with champion version 1: better" in card
    assert "| roc_auc |" in card and "## What drives it" in card and "fraud_training" in card
    assert "Labels as known on" in card  # the chargeback feed's book

    # Heavy label noise: a worse candidate is rejected, not registered, and the champion stays.
    land_and_etl(spec, START, TRAIN_END, label_noise=0.45)
    _, worse = _train(AS_OF)
    assert worse["kind"] == "rejected", worse
    assert worse["reasons"]
    assert registry.alias_version(client, "fraud", "champion") == "2"
    assert len(client.search_model_versions("name='fraud'")) == 2
    assert client.get_run(worse["run_id"]).data.tags["evergreen.decision"] == "rejected"

    # Rollback from the DAG restores v1; from the CLI back to v2; the history keeps everything.
    rollback_run = run_dag("fraud_rollback", None, conf={"reason": "bad release"})
    assert str(rollback_run.state) == "success", task_states(rollback_run)
    assert registry.alias_version(client, "fraud", "champion") == "1"
    assert registry.alias_version(client, "fraud", "previous_champion") == "2"
    # An unknown version is refused with one line naming it, exit 2, and nothing moves.
    capsys.readouterr()
    assert cli_main(["rollback", "--spec", "fraud", "--to-version", "999", "--reason", "typo"]) == 2
    refused = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evergreen ")]
    assert refused == ["evergreen rollback: refused: fraud has no version 999"]
    assert registry.alias_version(client, "fraud", "champion") == "1"
    assert cli_main(["rollback", "--spec", "fraud", "--to-version", "2", "--reason", "undo"]) == 0
    assert registry.alias_version(client, "fraud", "champion") == "2"
    kinds = [d["kind"] for d in registry.decision_history(spec)]
    assert kinds.count("promoted") == 2 and kinds.count("rejected") == 1 and kinds.count("rolled_back") == 2
    assert "dry_run" in kinds


@pytest.mark.slow
def test_regression_spec_end_to_end(airflow_db: Path, storage_root: Path, mlflow_uri: str) -> None:
    spec = get_spec("delivery_eta")
    land_and_etl(spec, START, AS_OF)
    run = run_dag("delivery_eta_training", AS_OF)
    assert str(run.state) == "success", task_states(run)
    decision = xcom_value(run, "promote_if_better")
    assert decision["kind"] == "promoted", decision
    client = MlflowClient()
    assert registry.alias_version(client, "delivery_eta", "champion") == "1"
    metrics = client.get_run(decision["run_id"]).data.metrics
    assert metrics["rmse"] < 15.0 and metrics["r2"] > 0.5


def test_too_little_data_fails_clearly(airflow_db: Path, storage_root: Path, mlflow_uri: str) -> None:
    spec = get_spec("fraud")
    land_and_etl(spec, AS_OF - dt.timedelta(days=4), AS_OF)
    run = run_dag("fraud_training", AS_OF)
    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["assemble_training_set"] == "failed"
    ti = next(t for t in run.get_task_instances() if t.task_id == "assemble_training_set")
    assert ti.try_number == 1


def test_backtest_dag_from_the_form(airflow_db: Path, storage_root: Path, mlflow_uri: str) -> None:
    """`<spec>_backtest`: typed Params, the report in storage and in MLflow, the registry untouched."""
    spec = get_spec("delivery_eta")
    land_and_etl(spec, START, START + dt.timedelta(days=24), rows=200)
    first = START + dt.timedelta(days=22)
    run = run_dag("delivery_eta_backtest", conf={"start": first.isoformat(),
                                                 "end": (first + dt.timedelta(days=2)).isoformat(),
                                                 "policies": "static,every:1", "window_days": 21})
    assert str(run.state) == "success", task_states(run)
    out = xcom_value(run, "run_backtest")
    report = json.loads(storage.at(out["key"]).read_text())
    assert report["days"] == 3 and set(report["policies"]) == {"static", "every:1"}
    assert report["policies"]["every:1"]["retrains"] == 3 and report["policies"]["static"]["retrains"] == 0
    assert out["scores"]["static"] == report["policies"]["static"]["score"]
    assert storage.at(out["html"]).exists()
    client = MlflowClient()
    logged = client.get_run(out["run_id"])
    assert logged.data.metrics["every_1.retrains"] == 3.0
    assert {a.path for a in client.list_artifacts(out["run_id"])} >= {"backtest.json", "backtest.html"}
    assert client.search_registered_models() == []  # nothing registered
    # A policy the form cannot take fails the run before anything runs.
    with pytest.raises(Exception, match="policies"):
        run_dag("delivery_eta_backtest", conf={"start": first.isoformat(), "end": first.isoformat(),
                                               "policies": "weekly"})
